package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// outputFlag registers -o/--output.
func outputFlag(cmd *cobra.Command) *string {
	return cmd.Flags().StringP("output", "o", "text", "output format: text or json")
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return fmt.Errorf("unknown output format %q (want text or json)", o)
	}
	return nil
}

func (a *app) planCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what apply would change in the kernel, account by account",
		Args:  cobra.NoArgs,
	}
	out := outputFlag(cmd)
	detailed := cmd.Flags().Bool("detailed-exitcode", false, "exit 0 when nothing would change, 2 when something would, 1 on error")
	adopt := cmd.Flags().Bool("adopt", false, "show what apply --adopt would do with a same-named table nftpol did not create")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		a.prefetchState()
		_, desired, err := a.load()
		if err != nil {
			return err
		}
		k, end, err := a.session(cmd.Context(), "plan")
		if err != nil {
			return err
		}
		defer end()
		snap, err := a.readKernel(k, desired.Table, true)
		if err != nil {
			return err
		}
		plan, err := a.makePlan(k, snap.current, rules.Overlay(snap.current, desired), *adopt)
		if err != nil {
			return err
		}
		if err := a.printPlan(plan, *out, planExtras{KernelRead: snap.source()}); err != nil {
			return err
		}
		if *detailed && !plan.Empty() {
			return exitCodeError{exitChanges}
		}
		return nil
	}
	return cmd
}

// snapshot is what the kernel holds, as the start of a plan: the table's
// content, the identity (with the generation) it was read at, and whether it
// came from the state rather than from a full read.
type snapshot struct {
	current   *rules.Ruleset
	id        kernel.Identity
	fromState bool
}

// readKernel reads table from the kernel. When the state proves the kernel
// unchanged since the last apply (same boot, same namespace, same ruleset
// generation: no transaction by anybody since), the recorded ruleset is the
// kernel's and the full read is skipped; a read of 50,000 elements is the
// most expensive part of an apply. allowState false forces the full read.
func (a *app) readKernel(k *kernel.Kernel, table string, allowState bool) (snapshot, error) {
	var snap snapshot
	id, err := k.Identity()
	if err != nil {
		return snap, err
	}
	snap.id = id
	if allowState && !a.v.GetBool("full-read") {
		if st, err := a.recordedState(); err == nil && st.Kernel != nil && *st.Kernel == id && st.Table == table {
			snap.current, snap.fromState = st.ruleset, true
			return snap, nil
		}
	}
	snap.current, err = k.Read(table)
	return snap, err
}

// makePlan diffs the kernel's table against desired. A table of the same
// name that nftpol did not create is refused unless adopt is set; adopting
// replaces it whole, inside one transaction. When the policy renamed the
// table, the table applied before (named in the state) is deleted in the
// same transaction, if it is still there and nftpol's: a rename must not
// leave the old rules enforcing beside the new ones.
func (a *app) makePlan(k *kernel.Kernel, current, desired *rules.Ruleset, adopt bool) (*rules.Plan, error) {
	plan, err := ownedPlan(current, desired, adopt, "rename the table in the policy, or run apply --adopt to replace it")
	if err != nil {
		return nil, err
	}
	if prev := a.previousTable(); prev != "" && prev != desired.Table {
		old, err := k.Read(prev)
		if err != nil {
			return nil, err
		}
		if old != nil && old.Owned() {
			plan.Retire = prev
		}
	}
	return plan, nil
}

// ownedPlan diffs current against desired when current is nftpol's (or
// absent). A same-named table nftpol did not create is refused, saying what
// to do (hint), unless adopt is set: then it is replaced whole, in one
// transaction.
func ownedPlan(current, desired *rules.Ruleset, adopt bool, hint string) (*rules.Plan, error) {
	switch {
	case current == nil || current.Owned():
		return rules.Diff(current, desired), nil
	case !adopt:
		return nil, fmt.Errorf("table inet %s exists but was not created by nftpol; refusing to take it over (%s)", desired.Table, hint)
	}
	plan := rules.Diff(nil, desired)
	plan.TableAction = rules.TableReplace
	plan.Accounts = rules.Diff(current, desired).Accounts
	return plan, nil
}

// session takes the state directory's lock for command and opens the
// kernel; end releases both.
func (a *app) session(ctx context.Context, command string) (k *kernel.Kernel, end func(), err error) {
	lock, err := a.lock(ctx, command)
	if err != nil {
		return nil, nil, err
	}
	k, err = a.openKernel()
	if err != nil {
		lock.release()
		return nil, nil, err
	}
	return k, func() {
		k.Close()
		phase("kernel closed")
		lock.release()
	}, nil
}

// converge reads table from the kernel, plans with makePlan and commits the
// plan at the ruleset generation it read. The lock keeps other nftpol
// processes out; the generation catches everybody else (nft, other tools)
// who commits between our read and our write: the kernel then refuses the
// batch whole, and converge reads (fully) and plans again. It returns the
// plan, what the commit sent, where the kernel's content came from, and the
// kernel's identity right after the commit (one generation later, unless
// nothing was sent).
func (a *app) converge(k *kernel.Kernel, table string, allowState bool,
	makePlan func(current *rules.Ruleset) (*rules.Plan, error)) (*rules.Plan, kernel.Stats, string, kernel.Identity, error) {
	for attempt := 1; ; attempt++ {
		snap, err := a.readKernel(k, table, allowState && attempt == 1)
		if err != nil {
			return nil, kernel.Stats{}, "", kernel.Identity{}, err
		}
		phase("kernel read (" + snap.source() + ")")
		plan, err := makePlan(snap.current)
		if err != nil {
			return nil, kernel.Stats{}, "", kernel.Identity{}, err
		}
		phase("planned")
		st, after, err := a.commit(k, snap, plan)
		if errors.Is(err, kernel.ErrGenerationChanged) && attempt < maxAttempts {
			fmt.Fprintf(a.stderr, "nftpol: the ruleset changed while planning (attempt %d); planning again\n", attempt)
			continue
		}
		if err != nil {
			return nil, kernel.Stats{}, "", kernel.Identity{}, err
		}
		return plan, st, snap.source(), after, nil
	}
}

// commit sends plan to the kernel read in snap. A plan that moves accounts
// (rules.Overlay) goes in two transactions: first the moved accounts' new
// elements, which change no verdict yet (rules.PrepareMoves says why), then
// the rest, at the generation the first one made. If the second is refused
// the first has changed nothing that matters, and the next plan, from a full
// read, picks up from there. It returns what was sent and the kernel's
// identity after it.
func (a *app) commit(k *kernel.Kernel, snap snapshot, plan *rules.Plan) (kernel.Stats, kernel.Identity, error) {
	after := snap.id
	var st kernel.Stats
	pre, rest := rules.PrepareMoves(snap.current, plan)
	if pre != nil {
		var err error
		if st, err = k.Apply(pre, after.Generation); err != nil {
			return kernel.Stats{}, kernel.Identity{}, err
		}
		after.Generation = kernel.NextGeneration(after.Generation)
	}
	if rest.Operations() > 0 || rest.TableAction != rules.TableUpdate {
		if pre != nil && os.Getenv(injectFailureEnv) == "last" {
			k.InjectFailure(true)
		}
		more, err := k.Apply(rest, after.Generation)
		k.InjectFailure(os.Getenv(injectFailureEnv) == "1")
		if err != nil && pre != nil && !errors.Is(err, kernel.ErrGenerationChanged) {
			// Refused: take the first transaction back too, so the
			// kernel is as it was (the elements were inert anyway).
			if _, uerr := k.Apply(rules.Undo(pre), after.Generation); uerr != nil {
				err = fmt.Errorf("%w; and taking back the moved ports sent before it failed too (they change no verdict; the next apply removes them): %v", err, uerr)
			}
		}
		if err != nil {
			return kernel.Stats{}, kernel.Identity{}, err
		}
		if !rest.Empty() {
			after.Generation = kernel.NextGeneration(after.Generation)
		}
		st.Messages += more.Messages
		st.Elements += more.Elements
	}
	return st, after, nil
}

// previousTable returns the table name of the last apply recorded in the
// state directory, or "" when there is none or it cannot be read (then
// there is nothing to retire that nftpol knows of; say so on stderr).
func (a *app) previousTable() string {
	st, err := a.recordedState()
	if errors.Is(err, errNoState) {
		return ""
	}
	if err != nil {
		fmt.Fprintf(a.stderr, "nftpol: warning: %v; a table renamed since the last apply will not be removed\n", err)
		return ""
	}
	return st.Table
}

// planExtras are fields added to a plan's JSON next to its own.
type planExtras struct {
	// Applied: what the commit sent (apply, restore).
	Applied *kernel.Stats
	// KernelRead says where the kernel's content came from: "full" (read
	// from the kernel) or "state" (the kernel provably unchanged since the
	// last apply). Empty: not reported.
	KernelRead string
}

func (a *app) printPlan(plan *rules.Plan, format string, x planExtras) error {
	if format != "json" {
		return plan.WriteText(a.stdout)
	}
	b, err := json.Marshal(plan)
	if err != nil {
		return err
	}
	// Splice the extras into the object: a plan of 50,000 accounts is not
	// worth decoding and encoding again.
	var extra []byte
	if x.Applied != nil {
		ab, err := json.Marshal(appliedJSON{Messages: x.Applied.Messages, Elements: x.Applied.Elements})
		if err != nil {
			return err
		}
		extra = append(append(extra, `,"applied":`...), ab...)
	}
	if x.KernelRead != "" {
		extra = append(extra, fmt.Sprintf(`,"kernel_read":%q`, x.KernelRead)...)
	}
	b = append(append(b[:len(b)-1], extra...), '}', '\n')
	_, err = a.stdout.Write(b)
	return err
}

func (s snapshot) source() string {
	if s.fromState {
		return "state"
	}
	return "full"
}

type appliedJSON struct {
	Messages int `json:"netlink_messages"`
	Elements int `json:"elements"`
}
