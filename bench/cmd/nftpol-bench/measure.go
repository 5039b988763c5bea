package main

import (
	"encoding/json"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// cell is one measured operation: its samples, or why there are none.
type cell struct {
	samples []sample
	err     string // the operation failed
	skipped string // not run, and why
}

func (c *cell) add(s sample) { c.samples = append(c.samples, s) }

func (c *cell) fail(err error) {
	if c.err == "" {
		c.err = err.Error()
	}
}

// sizeResult holds everything measured at one number of accounts.
type sizeResult struct {
	n int

	apply, load, reload cell // full apply; nft -f export; nft -f atomic reload

	change, changeFull, changeHand cell // one-account change
	handCheck                      string
	loadCheck                      string      // nft's load of the export, read by nftpol
	handChange                     string      // the nft text of the change
	phases                         *phaseTimes // the one-account apply's NFTPOL_TIMINGS phases

	sets []setResult

	plan, planFull, list cell

	validate, validateInc cell
}

type setResult struct {
	k                       int
	changed, removed, added cell
}

// sizeRun measures nftpol and nft at n accounts.
type sizeRun struct {
	b   *bench
	n   int
	dir string
	res *sizeResult

	p0, p1 string // the policy, and the same with the last account widened
	inc    string // the policy as n include files
	export string // nftpol export of p0
	reload string // table + delete table + export: nft's atomic reload
	c01    string // p0 -> p1 by hand, for nft -f
	c10    string // p1 -> p0 by hand

	nsA    string // nftpol's namespace
	nsB    string // nft's namespace
	stateA string
}

func (b *bench) measureSize(n int) (*sizeResult, error) {
	r := &sizeRun{b: b, n: n, dir: filepath.Join(b.work, fmt.Sprint(n)), res: &sizeResult{n: n}}
	if err := r.prepare(); err != nil {
		return nil, err
	}
	var err error
	if r.nsA, err = b.newNetns(fmt.Sprintf("n%d-nftpol", n)); err != nil {
		return nil, err
	}
	defer b.deleteNetns(r.nsA)
	if r.nsB, err = b.newNetns(fmt.Sprintf("n%d-nft", n)); err != nil {
		return nil, err
	}
	defer b.deleteNetns(r.nsB)

	steps := []struct {
		section string
		fn      func() error
	}{
		{"full", r.fullApply},
		{"change", r.oneAccount},
		{"plan", r.planNoChange},
		{"sets", r.changeSets},
		{"load", r.loadCompile},
	}
	for _, s := range steps {
		if !b.section(s.section) {
			continue
		}
		if err := s.fn(); err != nil {
			return r.res, err
		}
		if err := b.ctx.Err(); err != nil {
			return r.res, err
		}
	}
	return r.res, nil
}

// prepare writes the policies and the nft files for n accounts.
func (r *sizeRun) prepare() error {
	b := r.b
	b.logf("N=%d: writing policies", r.n)
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return err
	}
	r.p0 = filepath.Join(r.dir, "p0.yaml")
	r.p1 = filepath.Join(r.dir, "p1.yaml")
	r.stateA = filepath.Join(r.dir, "state-nftpol")
	if err := writePolicy(r.p0, 0, r.n, edit{}); err != nil {
		return err
	}
	if err := writePolicy(r.p1, 0, r.n, widenLast(r.n)); err != nil {
		return err
	}
	if b.section("load") {
		incDir := filepath.Join(r.dir, "include")
		var err error
		if r.inc, err = writeIncludePolicy(incDir, r.n); err != nil {
			return err
		}
	}
	res, err := b.run(command{args: []string{b.nftpol, "--config", r.p0, "export"}, stdout: true})
	if err != nil {
		return err
	}
	r.export = filepath.Join(r.dir, "export.nft")
	r.reload = filepath.Join(r.dir, "reload.nft")
	if err := os.WriteFile(r.export, res.out, 0o644); err != nil {
		return err
	}
	reload := fmt.Sprintf("table inet %s\ndelete table inet %s\n%s", b.table, b.table, res.out)
	if err := os.WriteFile(r.reload, []byte(reload), 0o644); err != nil {
		return err
	}

	res1, err := b.run(command{args: []string{b.nftpol, "--config", r.p1, "export"}, stdout: true})
	if err != nil {
		return err
	}
	c01, err := handChange(b.table, string(res.out), string(res1.out))
	if err != nil {
		return err
	}
	c10, err := handChange(b.table, string(res1.out), string(res.out))
	if err != nil {
		return err
	}
	r.res.handChange = c01
	r.c01 = filepath.Join(r.dir, "change01.nft")
	r.c10 = filepath.Join(r.dir, "change10.nft")
	if err := os.WriteFile(r.c01, []byte(c01), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(r.c10, []byte(c10), 0o644); err != nil {
		return err
	}
	return nil
}

// nftpolArgs is an nftpol command line for nftpol's namespace.
func (r *sizeRun) nftpolArgs(config string, args ...string) []string {
	return append([]string{r.b.nftpol, "--config", config, "--netns", r.nsA, "--state-dir", r.stateA, "--run-dir", r.stateA + ".run"}, args...)
}

// applyJSON is the part of `apply -o json` the bench reads.
type applyJSON struct {
	Applied *struct {
		Messages int `json:"netlink_messages"`
	} `json:"applied"`
	KernelRead string `json:"kernel_read"`
}

// applyMeasured runs nftpol apply -o json with extra global flags and
// returns the sample with its message count.
func (r *sizeRun) applyMeasured(config string, global []string, args ...string) (sample, error) {
	a := append([]string{r.b.nftpol, "--config", config, "--netns", r.nsA, "--state-dir", r.stateA, "--run-dir", r.stateA + ".run"}, global...)
	a = append(a, "apply", "-o", "json")
	a = append(a, args...)
	res, err := r.b.run(command{args: a, stdout: true, timed: true})
	if err != nil {
		return res.sample, err
	}
	var j applyJSON
	if err := json.Unmarshal(res.out, &j); err != nil {
		return res.sample, fmt.Errorf("reading apply -o json: %w", err)
	}
	s := res.sample
	if j.Applied != nil {
		s.msgs = j.Applied.Messages
	}
	s.read = j.KernelRead
	return s, nil
}

// baseline puts nftpol's namespace at p0 from scratch: no table, no state,
// then one apply.
func (r *sizeRun) baseline() error {
	if err := r.b.dropTable(r.nsA, r.b.table); err != nil {
		return err
	}
	if err := os.RemoveAll(r.stateA); err != nil {
		return err
	}
	_, err := r.b.run(command{args: r.nftpolArgs(r.p0, "apply")})
	return err
}

// fullApply: nftpol apply into an empty namespace (fresh state) against
// nft -f of nftpol's own export, and nft's atomic reload of a loaded table.
// Runs alternate, so drift on the machine hits both alike.
func (r *sizeRun) fullApply() error {
	b, res := r.b, r.res
	for run := 1; run <= b.opts.runs; run++ {
		if err := b.dropTable(r.nsA, b.table); err != nil {
			return err
		}
		if err := os.RemoveAll(r.stateA); err != nil {
			return err
		}
		s, err := b.run(command{args: r.nftpolArgs(r.p0, "apply"), timed: true})
		if err != nil {
			res.apply.fail(err)
			return err
		}
		res.apply.add(s.sample)

		if err := b.dropTable(r.nsB, b.table); err != nil {
			return err
		}
		s, err = b.nftMeasured(r.nsB, "-f", r.export)
		if err != nil {
			res.load.fail(err)
			return err
		}
		res.load.add(s.sample)
		s, err = b.nftMeasured(r.nsB, "-f", r.reload)
		if err != nil {
			res.reload.fail(err)
			return err
		}
		res.reload.add(s.sample)
		b.logf("N=%d full apply %d/%d: nftpol %s, nft -f %s, nft reload %s", r.n, run, b.opts.runs,
			fmtDur(res.apply.last()), fmtDur(res.load.last()), fmtDur(res.reload.last()))
	}
	res.loadCheck = r.checkTable(r.nsB, r.p0)
	return nil
}

// ensureLoaded makes sure both namespaces hold p0 (when the full apply
// section did not run).
func (r *sizeRun) ensureLoaded() error {
	if r.b.section("full") {
		return nil
	}
	if err := r.baseline(); err != nil {
		return err
	}
	if err := r.b.dropTable(r.nsB, r.b.table); err != nil {
		return err
	}
	_, err := r.b.nftIn(r.nsB, nil, "-f", r.export)
	return err
}

// oneAccount: the last account widened and narrowed again, by nftpol apply
// (trusting its state, and with --full-read) and by nft -f of the same
// element operations written by hand, each in its own namespace so that
// nft's commits do not invalidate nftpol's state.
func (r *sizeRun) oneAccount() error {
	b, res := r.b, r.res
	if err := r.ensureLoaded(); err != nil {
		return err
	}
	// nft's own load of the export may differ from nftpol's table (see
	// loadCheck); the change by hand starts from nftpol's table.
	if err := b.dropTable(r.nsB, b.table); err != nil {
		return err
	}
	stateB := filepath.Join(r.dir, "state-nft-ns")
	if _, err := b.run(command{args: []string{b.nftpol, "--config", r.p0, "--netns", r.nsB, "--state-dir", stateB, "--run-dir", stateB + ".run", "apply"}}); err != nil {
		return err
	}
	for run := 1; run <= b.opts.runs; run++ {
		for _, step := range []struct {
			c      *cell
			global []string
			config string
		}{
			{&res.change, nil, r.p1}, {&res.change, nil, r.p0},
			{&res.changeFull, []string{"--full-read"}, r.p1}, {&res.changeFull, []string{"--full-read"}, r.p0},
		} {
			s, err := r.applyMeasured(step.config, step.global)
			if err != nil {
				step.c.fail(err)
				return err
			}
			step.c.add(s)
		}
		for i, f := range []string{r.c01, r.c10} {
			s, err := b.nftMeasured(r.nsB, "-f", f)
			if err != nil {
				res.changeHand.fail(err)
				return err
			}
			res.changeHand.add(s.sample)
			if run == 1 && i == 0 {
				res.handCheck = r.checkTable(r.nsB, r.p1)
			}
		}
		b.logf("N=%d one-account change %d/%d: nftpol %s (%d msgs, read %s), --full-read %s, nft by hand %s", r.n, run, b.opts.runs,
			fmtDur(res.change.last()), res.change.samples[len(res.change.samples)-1].msgs, res.change.samples[len(res.change.samples)-1].read,
			fmtDur(res.changeFull.last()), fmtDur(res.changeHand.last()))
	}
	// Not in the cells above: the same apply, with its phases printed.
	var err error
	res.phases, err = r.applyPhases()
	return err
}

// checkTable asks nftpol whether netns holds exactly the table nftpol makes
// of config, and describes the answer. It only reads.
func (r *sizeRun) checkTable(netns, config string) string {
	b := r.b
	st, err := os.MkdirTemp(r.dir, "state-check-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(st)
	res, err := b.run(command{
		args:  []string{b.nftpol, "--config", config, "--netns", netns, "--state-dir", st, "--full-read", "plan", "-o", "json", "--detailed-exitcode"},
		exits: []int{2}, stdout: true,
	})
	switch {
	case err != nil:
		return "check failed: " + firstLine(err.Error())
	case res.code == 0:
		return "the same table as nftpol's (`nftpol --full-read plan`: no changes)"
	}
	var j struct {
		Accounts []struct {
			UID    uint32 `json:"uid"`
			Name   string `json:"name"`
			Action string `json:"action"`
		} `json:"accounts"`
	}
	if err := json.Unmarshal(res.out, &j); err != nil {
		return "differs from nftpol's table (plan not empty)"
	}
	// Account i's uid is firstUID+i; name which of the kernel's UIDs are
	// the right one byte-swapped.
	var wrong []string
	swapped, removed := 0, 0
	for _, a := range j.Accounts {
		if a.Action != "remove" {
			continue
		}
		removed++
		var i int
		if _, err := fmt.Sscanf(a.Name, "acct-%d", &i); err == nil && bits.ReverseBytes32(uint32(accountUID(i))) == a.UID {
			swapped++
		}
		if len(wrong) < 3 {
			wrong = append(wrong, fmt.Sprintf("%s as uid %d", a.Name, a.UID))
		}
	}
	msg := fmt.Sprintf("differs from nftpol's table: `nftpol --full-read plan` wants to change %d accounts; the kernel holds %s",
		len(j.Accounts), strings.Join(wrong, ", "))
	if swapped > 0 {
		msg += fmt.Sprintf("; %d of the %d UIDs it holds wrong are the right UID byte-swapped (acct-NNNNNN has uid %d+N)", swapped, removed, firstUID)
	}
	return msg
}

// planNoChange: nftpol plan on a table in sync, against nft -j list table.
func (r *sizeRun) planNoChange() error {
	b, res := r.b, r.res
	if !b.section("change") {
		if err := r.ensureLoaded(); err != nil {
			return err
		}
	}
	for run := 1; run <= b.opts.runs; run++ {
		for _, step := range []struct {
			c    *cell
			args []string
		}{
			{&res.plan, r.nftpolArgs(r.p0, "plan", "--detailed-exitcode")},
			{&res.planFull, r.nftpolArgs(r.p0, "--full-read", "plan", "--detailed-exitcode")},
		} {
			s, err := b.run(command{args: step.args, timed: true})
			if err != nil {
				step.c.fail(err)
				return err
			}
			step.c.add(s.sample)
		}
		s, err := b.nftMeasured(r.nsA, "-j", "list", "table", "inet", b.table)
		if err != nil {
			res.list.fail(err)
			return err
		}
		res.list.add(s.sample)
		b.logf("N=%d plan %d/%d: nftpol plan %s, --full-read %s, nft -j list %s", r.n, run, b.opts.runs,
			fmtDur(res.plan.last()), fmtDur(res.planFull.last()), fmtDur(res.list.last()))
	}
	return nil
}

// changeSets: k accounts changed (and, separately, removed and added back)
// in one apply, for k in 100, 1,000, 10,000 up to n. A k whose run is
// estimated, from the previous k, to take longer than the op limit is
// skipped; a cell stops repeating once its runs took the cell budget.
func (r *sizeRun) changeSets() error {
	b, res := r.b, r.res
	if !b.section("change") && !b.section("plan") {
		if err := r.ensureLoaded(); err != nil {
			return err
		}
	}
	// skip says why a k is not run: the previous k failed, or its time
	// scaled to k exceeds the op limit.
	var prevK int
	skip := func(prev *cell, k int) string {
		switch {
		case prev == nil:
			return ""
		case prev.err != "" || prev.skipped != "":
			return fmt.Sprintf("skipped: the run with %s accounts did not complete", thousands(int64(prevK)))
		}
		if est := estimate(prev.median(), prevK, k); est > b.opts.opLimit {
			return fmt.Sprintf("skipped: ~%s estimated from %s accounts", fmtDur(est), thousands(int64(prevK)))
		}
		return ""
	}
	var prevChanged, prevRemoved *cell
	res.sets = make([]setResult, 0, 3) // pointers into it stay valid
	for _, k := range []int{100, 1000, 10000} {
		if k > r.n {
			break
		}
		res.sets = append(res.sets, setResult{k: k})
		sr := &res.sets[len(res.sets)-1]
		chg := filepath.Join(r.dir, fmt.Sprintf("changed-%d.yaml", k))
		rem := filepath.Join(r.dir, fmt.Sprintf("removed-%d.yaml", k))
		if err := writePolicy(chg, 0, r.n, swapEdit(r.n, k)); err != nil {
			return err
		}
		if err := writePolicy(rem, 0, r.n, dropEdit(r.n, k)); err != nil {
			return err
		}
		// Changed: p0 -> changed -> p0, both directions are k changes.
		if why := skip(prevChanged, k); why != "" {
			sr.changed.skipped = why
		} else if err := r.repeat(&sr.changed, &sr.changed, chg, nil, fmt.Sprintf("%d accounts changed", k)); err != nil {
			return err
		}
		// Removed: p0 -> removed (k removals), then removed -> p0 (k
		// accounts added back).
		if why := skip(prevRemoved, k); why != "" {
			sr.removed.skipped = why
			sr.added.skipped = "skipped with the removal"
		} else if err := r.repeat(&sr.removed, &sr.added, rem, []string{"--allow-removals"}, fmt.Sprintf("%d accounts removed", k)); err != nil {
			return err
		}
		prevK, prevChanged, prevRemoved = k, &sr.changed, &sr.removed
	}
	return nil
}

// estimate scales the time of prevK to k linearly: the kernel's price is
// per element deleted.
func estimate(prev time.Duration, prevK, k int) time.Duration {
	if prevK == 0 {
		return 0
	}
	return prev * time.Duration(k) / time.Duration(prevK)
}

// repeat applies config (from p0) and then p0 again, timing both, until the
// runs are done or the cell budget is spent. A failure leaves the
// namespace in an unknown state: it is rebuilt at p0.
func (r *sizeRun) repeat(fwd, back *cell, config string, args []string, what string) error {
	b := r.b
	var spent time.Duration
	for run := 1; run <= b.opts.runs; run++ {
		s, err := r.applyMeasured(config, nil, args...)
		if err != nil {
			fwd.fail(err)
			b.logf("N=%d %s: %v; rebuilding the namespace", r.n, what, err)
			return r.rebuild()
		}
		fwd.add(s)
		s2, err := r.applyMeasured(r.p0, nil)
		if err != nil {
			back.fail(err)
			b.logf("N=%d %s, back: %v; rebuilding the namespace", r.n, what, err)
			return r.rebuild()
		}
		back.add(s2)
		spent += s.wall + s2.wall
		b.logf("N=%d %s %d/%d: %s (%d msgs), back %s (%d msgs)", r.n, what, run, b.opts.runs, fmtDur(s.wall), s.msgs, fmtDur(s2.wall), s2.msgs)
		if spent >= b.opts.cellBudget && run < b.opts.runs {
			b.logf("N=%d %s: stopping after %d runs (%s spent, budget %s)", r.n, what, run, fmtDur(spent), fmtDur(b.opts.cellBudget))
			break
		}
		if err := b.ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

func (r *sizeRun) rebuild() error {
	if err := r.b.ctx.Err(); err != nil {
		return err
	}
	return r.baseline()
}

// loadCompile: load and compile without the kernel, from one file and from
// n include files.
func (r *sizeRun) loadCompile() error {
	b, res := r.b, r.res
	for run := 1; run <= b.opts.runs; run++ {
		s, err := b.run(command{args: []string{b.nftpol, "--config", r.p0, "validate"}, timed: true})
		if err != nil {
			res.validate.fail(err)
			return err
		}
		res.validate.add(s.sample)
		s, err = b.run(command{args: []string{b.nftpol, "--config", r.inc, "validate"}, timed: true})
		if err != nil {
			res.validateInc.fail(err)
			return err
		}
		res.validateInc.add(s.sample)
		b.logf("N=%d validate %d/%d: one file %s, %d include files %s", r.n, run, b.opts.runs,
			fmtDur(res.validate.last()), r.n, fmtDur(res.validateInc.last()))
	}
	return nil
}
