package main

// The views section: what publishing the account views (for `nftpol
// ports`, --run-dir) costs an apply at the largest N. The same applies run
// with --run-dir (a tmpfs directory, as /run is) and without it (nothing
// published), alternately, each in a namespace and state of its own:
//  1. a full apply, the table and the views gone before each (no agent);
//  2. a one-account change and back (no agent): the views of the changed
//     account are written, the rest left alone;
//  3. the same change through an agent (`nftpol apply` forwarded to
//     `nftpol watch --follow-policy=false`), which publishes the views
//     after its reply;
//  4. a full apply through the agent, after an `nftpol remove`.

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

type viewsResult struct {
	n int
	// [0] without views, [1] with.
	full, change, agent, agentFull [2]cell
}

func (b *bench) measureViews(n int) (*viewsResult, error) {
	res := &viewsResult{n: n}
	dir := filepath.Join(b.work, fmt.Sprintf("views-%d", n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	p0, p1 := filepath.Join(dir, "p0.yaml"), filepath.Join(dir, "p1.yaml")
	if err := writePolicy(p0, 0, n, edit{}); err != nil {
		return res, err
	}
	if err := writePolicy(p1, 0, n, widenLast(n)); err != nil {
		return res, err
	}
	base, err := b.agentRunBase()
	if err != nil {
		return res, err
	}
	type side struct{ ns, st, rd string }
	var sides [2]side
	for i, role := range []string{"plain", "views"} {
		ns, err := b.newNetns(fmt.Sprintf("v%d-%s", n, role))
		if err != nil {
			return res, err
		}
		defer b.deleteNetns(ns)
		sides[i] = side{ns: ns, st: filepath.Join(dir, "state-"+role)}
		if i == 1 {
			sides[i].rd = filepath.Join(base, fmt.Sprintf("views-%d", n))
		}
	}
	args := func(s side, policy string) []string {
		a := []string{b.nftpol, "--config", policy, "--netns", s.ns, "--state-dir", s.st}
		if s.rd != "" {
			a = append(a, "--run-dir", s.rd)
		}
		return append(a, "apply")
	}
	reset := func(s side) error {
		if err := b.dropTable(s.ns, b.table); err != nil {
			return err
		}
		for _, d := range []string{s.st, s.rd} {
			if d == "" {
				continue
			}
			if err := os.RemoveAll(d); err != nil {
				return err
			}
		}
		if s.rd != "" {
			return os.MkdirAll(s.rd, 0o755)
		}
		return nil
	}

	// 1. Full applies.
	for run := 1; run <= b.opts.runs; run++ {
		for i, s := range sides {
			if err := reset(s); err != nil {
				return res, err
			}
			r, err := b.run(command{args: args(s, p0), timed: true})
			if err != nil {
				res.full[i].fail(err)
				return res, err
			}
			res.full[i].add(r.sample)
		}
		b.logf("N=%d views: full apply %d/%d: %s without, %s with", n, run, b.opts.runs, fmtDur(res.full[0].last()), fmtDur(res.full[1].last()))
	}
	// 2. One account changed and back, each side holding p0.
	for run := 1; run <= b.opts.runs; run++ {
		for _, policy := range []string{p1, p0} {
			for i, s := range sides {
				r, err := b.run(command{args: args(s, policy), timed: true})
				if err != nil {
					res.change[i].fail(err)
					return res, err
				}
				res.change[i].add(r.sample)
			}
		}
	}
	b.logf("N=%d views: one-account change %s without, %s with", n, fmtDur(res.change[0].median()), fmtDur(res.change[1].median()))
	// 3. Through agents following an include directory, as an agent's
	// policy is laid out: the change is one file renamed in.
	ap, err := b.writeAgentPolicy(filepath.Join(dir, "agent"), n, "tcp+udp")
	if err != nil {
		return res, err
	}
	var agents [2]*agentRun
	for i, s := range sides {
		if err := reset(s); err != nil {
			return res, err
		}
		ag, err := b.startAgent(ap.main, s.ns, s.st, s.rd, "--follow-policy=false")
		if err != nil {
			return res, err
		}
		defer ag.stop()
		agents[i] = ag
	}
	// The views agent publishes every view after its first apply, in
	// the background: measure once it is done.
	if _, err := agents[1].waitLog(0, 2*time.Minute, "published the account view files"); err != nil {
		return res, err
	}
	// served times one `nftpol apply` of side i, which its agent must
	// serve, into c.
	served := func(i int, c *cell) error {
		from := agents[i].count()
		r, err := b.run(command{args: args(sides[i], ap.main), timed: true})
		if err == nil {
			if _, werr := agents[i].waitLog(from, 5*time.Second, "served"); werr != nil {
				err = fmt.Errorf("the agent did not serve the apply: it ran in the CLI")
			}
		}
		if err != nil {
			c.fail(err)
			return err
		}
		c.add(r.sample)
		return nil
	}
	k, e := agentEdit(n, "last")
	for run := 1; run <= b.opts.runs; run++ {
		for _, content := range []string{"accounts:\n" + accountLine(k, e), "accounts:\n" + accountLine(k, edit{})} {
			if _, _, err := ap.put(k, content); err != nil {
				return res, err
			}
			for i := range sides {
				if err := served(i, &res.agent[i]); err != nil {
					return res, err
				}
			}
		}
	}
	b.logf("N=%d views: one-account change through the agent %s without, %s with", n, fmtDur(res.agent[0].median()), fmtDur(res.agent[1].median()))
	// 4. Full applies through the agents: nftpol remove (the agent
	// withdraws the views), then apply installs the whole table again.
	for run := 1; run <= b.opts.runs; run++ {
		for i, s := range sides {
			if _, err := b.run(command{args: append(args(s, ap.main)[:len(args(s, ap.main))-1], "remove")}); err != nil {
				res.agentFull[i].fail(err)
				return res, err
			}
			if err := served(i, &res.agentFull[i]); err != nil {
				return res, err
			}
		}
	}
	b.logf("N=%d views: full apply through the agent %s without, %s with", n, fmtDur(res.agentFull[0].median()), fmtDur(res.agentFull[1].median()))
	return res, nil
}

// targets: publishing adds at most 10% to a full apply, and nothing
// measurable to a one-account change: at most 5%, or less than the spread
// of the runs (the fastest with views no slower than the slowest without).
func (r *viewsResult) targets() []struct{ what, status string } {
	var out []struct{ what, status string }
	at := thousands(int64(r.n))
	for _, x := range []struct {
		what  string
		c     *[2]cell
		limit float64
	}{
		{"full apply, no agent", &r.full, 1.10},
		{"one-account change, no agent", &r.change, 1.05},
		{"full apply through the agent", &r.agentFull, 1.10},
		{"one-account change through the agent", &r.agent, 1.05},
	} {
		rt, ok := ratio(&x.c[1], &x.c[0])
		st := "no data"
		if ok {
			v := verdict(rt, ok, x.limit)
			if x.limit < 1.10 && rt > x.limit && slices.Min(x.c[1].walls()) <= slices.Max(x.c[0].walls()) {
				v = "met (not measurable: the runs with views overlap those without)"
			}
			st = fmt.Sprintf("%s (%s vs %s): %s", fmtRatio(rt), fmtDur(x.c[1].median()), fmtDur(x.c[0].median()), v)
		}
		what := fmt.Sprintf("account views at %s, %s: with views ≤ %.2f× without", at, x.what, x.limit)
		if x.limit < 1.10 {
			what = fmt.Sprintf("account views at %s, %s: nothing measurable added (≤ %.2f×, or within the runs' spread)", at, x.what, x.limit)
		}
		out = append(out, struct{ what, status string }{what, st})
	}
	return out
}

func writeViews(w io.Writer, r *viewsResult) {
	fmt.Fprintf(w, "## Account views (`nftpol ports`)\n\n")
	fmt.Fprintf(w, "What publishing the account views costs an apply at N = %s: the same applies with `--run-dir` (a tmpfs "+
		"directory, as /run is; one file per UID, written only for the accounts that changed) and without it (nothing published), "+
		"alternately, each in a namespace and state of its own. A full apply starts from no table and no views; the one-account "+
		"change is the change section's (the last account widened) and back; through the agent, `nftpol apply` is forwarded "+
		"to `nftpol watch --follow-policy=false` following an include directory (the change: one file renamed in), which "+
		"publishes the views after it has answered; its full apply follows an `nftpol remove` (which withdraws the views). The agent also answers "+
		"`nftpol ports` over its socket in the run directory.\n\n", thousands(int64(r.n)))
	fmt.Fprintf(w, "| operation | without views | with views | ratio |\n|---|---|---|---|\n")
	for _, x := range []struct {
		what string
		c    *[2]cell
	}{{"full apply, no agent", &r.full}, {"one-account change, no agent", &r.change},
		{"full apply through the agent", &r.agentFull}, {"one-account change through the agent", &r.agent}} {
		rt, ok := ratio(&x.c[1], &x.c[0])
		rs := "—"
		if ok {
			rs = fmtRatio(rt)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", x.what, x.c[0].time(), x.c[1].time(), rs)
	}
	fmt.Fprintln(w)
}
