package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Statistics of a cell: the median wall time and the range over its runs,
// the peak RSS over its runs.

func (c *cell) walls() []time.Duration {
	ws := make([]time.Duration, 0, len(c.samples))
	for _, s := range c.samples {
		ws = append(ws, s.wall)
	}
	slices.Sort(ws)
	return ws
}

func (c *cell) median() time.Duration {
	return medianDur(c.walls())
}

// medianDur is the median of ds, 0 for none.
func medianDur(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	if len(ds)%2 == 1 {
		return ds[len(ds)/2]
	}
	return (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
}

// cpuMedian is the median CPU time (user + system) of the runs.
func (c *cell) cpuMedian() time.Duration {
	cs := make([]time.Duration, 0, len(c.samples))
	for _, s := range c.samples {
		cs = append(cs, s.cpu)
	}
	if len(cs) == 0 {
		return 0
	}
	slices.Sort(cs)
	if len(cs)%2 == 1 {
		return cs[len(cs)/2]
	}
	return (cs[len(cs)/2-1] + cs[len(cs)/2]) / 2
}

func (c *cell) last() time.Duration {
	if len(c.samples) == 0 {
		return 0
	}
	return c.samples[len(c.samples)-1].wall
}

func (c *cell) peakRSS() int64 {
	var m int64
	for _, s := range c.samples {
		m = max(m, s.rss)
	}
	return m
}

// time renders the median with the range: "1,234 ms (1,200–1,300)".
func (c *cell) time() string {
	switch {
	case c.skipped != "":
		return c.skipped
	case c.err != "" && len(c.samples) == 0:
		return "failed: " + firstLine(c.err)
	case len(c.samples) == 0:
		return "–"
	}
	ws := c.walls()
	med := c.median()
	s := fmtDur(med)
	if len(ws) > 1 {
		s += fmt.Sprintf(" (%s–%s, %d runs; cpu %s)", fmtDurBare(ws[0], med), fmtDurBare(ws[len(ws)-1], med), len(ws), fmtDurBare(c.cpuMedian(), med))
	} else {
		s += fmt.Sprintf(" (1 run; cpu %s)", fmtDurBare(c.cpuMedian(), med))
	}
	if c.err != "" {
		s += "; then failed: " + firstLine(c.err)
	}
	return s
}

func (c *cell) rss() string {
	if len(c.samples) == 0 {
		return "–"
	}
	return fmtRSS(c.peakRSS())
}

// msgs renders the netlink message counts of nftpol's applies ("4", or
// "4–6" when they vary) and where it read the kernel from.
func (c *cell) msgs() string {
	if len(c.samples) == 0 {
		return ""
	}
	lo, hi := math.MaxInt, 0
	reads := map[string]bool{}
	for _, s := range c.samples {
		lo, hi = min(lo, s.msgs), max(hi, s.msgs)
		if s.read != "" {
			reads[s.read] = true
		}
	}
	m := fmt.Sprintf("%d msgs", lo)
	if hi != lo {
		m = fmt.Sprintf("%d–%d msgs", lo, hi)
	}
	var rs []string
	for r := range reads {
		rs = append(rs, r)
	}
	slices.Sort(rs)
	if len(rs) > 0 {
		m += ", kernel read: " + strings.Join(rs, "/")
	}
	return m
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// fmtDur renders a duration in ms, or in s from 10 s on.
func fmtDur(d time.Duration) string {
	return fmtDurBare(d, d) + unit(d)
}

func unit(d time.Duration) string {
	if d >= 10*time.Second {
		return " s"
	}
	return " ms"
}

// fmtDurBare renders d without unit, in the unit fmtDur picks for ref.
func fmtDurBare(d, ref time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ref >= 10*time.Second:
		return fmt.Sprintf("%.1f", ms/1000)
	case ref >= 100*time.Millisecond:
		return thousands(int64(math.Round(ms)))
	case ref >= 10*time.Millisecond:
		return fmt.Sprintf("%.1f", ms)
	default:
		return fmt.Sprintf("%.2f", ms)
	}
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func fmtRSS(kib int64) string { return fmt.Sprintf("%.0f MiB", float64(kib)/1024) }

func ratio(a, b *cell) (float64, bool) {
	if b == nil || len(a.samples) == 0 || len(b.samples) == 0 || b.median() == 0 {
		return 0, false
	}
	return float64(a.median()) / float64(b.median()), true
}

func fmtRatio(r float64) string {
	switch {
	case r < 0.01:
		return fmt.Sprintf("%.4f×", r)
	case r < 0.1:
		return fmt.Sprintf("%.3f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// verdict compares a ratio with a ceiling.
func verdict(r float64, ok bool, limit float64) string {
	switch {
	case !ok:
		return "no data"
	case r <= limit:
		return "met"
	}
	return fmt.Sprintf("**missed** (%.1f× the target)", r/limit)
}

// mdTable writes a markdown table.
func mdTable(w io.Writer, head []string, rows [][]string) {
	fmt.Fprintf(w, "| %s |\n", strings.Join(head, " | "))
	seps := make([]string, len(head))
	for i := range seps {
		seps[i] = "---"
	}
	fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
	for _, r := range rows {
		for i := range r {
			r[i] = strings.ReplaceAll(r[i], "|", `\|`)
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
	fmt.Fprintln(w)
}

// writeSize writes the table of one number of accounts.
func writeSize(w io.Writer, r *sizeResult) {
	fmt.Fprintf(w, "### N = %s accounts\n\n", thousands(int64(r.n)))
	head := []string{"operation", "nftpol", "nftpol peak RSS", "reference", "reference time", "ref. peak RSS", "ratio", "target"}
	var rows [][]string
	row := func(op string, a *cell, ref string, b *cell, limit float64) {
		rt, ok := ratio(a, b)
		rs, tgt := "", ""
		if ok {
			rs = fmtRatio(rt)
		}
		if limit > 0 {
			tgt = fmt.Sprintf("≤ %g×: %s", limit, verdict(rt, ok, limit))
		}
		refTime, refRSS := "", ""
		if b != nil {
			refTime, refRSS = b.time(), b.rss()
		}
		rows = append(rows, []string{op, a.time(), a.rss(), ref, refTime, refRSS, rs, tgt})
	}
	if len(r.apply.samples)+len(r.load.samples) > 0 || r.apply.err != "" {
		row("1. full apply, empty namespace", &r.apply, "`nft -f` of `nftpol export`", &r.load, 0.5)
		row("   full atomic reload (reference only)", &cell{skipped: "–"}, "`nft -f` table + delete table + export", &r.reload, 0)
	}
	if len(r.change.samples) > 0 || r.change.err != "" {
		row(fmt.Sprintf("2. one-account change, `apply` (%s)", r.change.msgs()), &r.change, "`nft -f` of the change by hand", &r.changeHand, 1.0)
		row("   the same against a full reload", &r.change, "`nft -f` atomic reload", &r.reload, 0.05)
		row(fmt.Sprintf("   one-account change, `--full-read apply` (%s)", r.changeFull.msgs()), &r.changeFull, "`nft -f` of the change by hand", &r.changeHand, 0)
	}
	for i := range r.sets {
		s := &r.sets[i]
		k := thousands(int64(s.k))
		num := "  "
		if i == 0 {
			num = "3."
		}
		row(fmt.Sprintf("%s %s accounts changed (%s)", num, k, s.changed.msgs()), &s.changed, "`nft -f` full load", &r.load, 1.0)
		row(fmt.Sprintf("   %s accounts removed (%s)", k, s.removed.msgs()), &s.removed, "`nft -f` full load", &r.load, 1.0)
		row(fmt.Sprintf("   %s accounts added back (%s)", k, s.added.msgs()), &s.added, "`nft -f` full load", &r.load, 1.0)
	}
	if len(r.plan.samples) > 0 || r.plan.err != "" {
		row("4. `plan`, nothing to change", &r.plan, "`nft -j list table`", &r.list, 0.5)
		row("   `--full-read plan`", &r.planFull, "`nft -j list table`", &r.list, 0)
	}
	if len(r.validate.samples) > 0 || r.validate.err != "" {
		rows = append(rows,
			[]string{"5. `validate` (load + compile), one file", r.validate.time(), r.validate.rss(), "", "", "", "", ""},
			[]string{fmt.Sprintf("   `validate`, %s include files", thousands(int64(r.n))), r.validateInc.time(), r.validateInc.rss(),
				"", "", "", "", fmt.Sprintf("≤ 1 s: %s", secondVerdict(&r.validateInc))})
	}
	mdTable(w, head, rows)
	if r.handChange != "" {
		fmt.Fprintf(w, "The one-account change (the last account, one port widened to 11), as given to `nft -f`:\n\n```\n%s```\n\n", r.handChange)
		writeHandCommit(w, r)
	}
	if r.handCheck != "" {
		fmt.Fprintf(w, "nft's table after that change (applied to a table nftpol installed): %s.\n\n", r.handCheck)
	}
	writePhases(w, r.phases)
	if r.loadCheck != "" {
		fmt.Fprintf(w, "nft's table after `nft -f` of the export: %s.\n\n", r.loadCheck)
	}
}

func secondVerdict(c *cell) string {
	if len(c.samples) == 0 {
		return "no data"
	}
	if m := c.median(); m > time.Second {
		return fmt.Sprintf("**missed** (%s)", fmtDur(m))
	}
	return "met"
}

// cells lists nftpol's cells of a size, for the RSS target.
func (r *sizeResult) nftpolCells() map[string]*cell {
	m := map[string]*cell{
		"full apply": &r.apply, "one-account change": &r.change, "--full-read change": &r.changeFull,
		"plan": &r.plan, "--full-read plan": &r.planFull, "validate": &r.validate, "validate (include files)": &r.validateInc,
	}
	for i := range r.sets {
		s := &r.sets[i]
		m[fmt.Sprintf("%d changed", s.k)] = &s.changed
		m[fmt.Sprintf("%d removed", s.k)] = &s.removed
		m[fmt.Sprintf("%d added back", s.k)] = &s.added
	}
	return m
}

// packet statistics: the median over rounds of each round's mean and
// median per operation, in µs.
func roundStat(runs []opStats, f func(opStats) float64) (med, lo, hi float64, ok bool) {
	if len(runs) == 0 {
		return 0, 0, 0, false
	}
	vs := make([]float64, 0, len(runs))
	for _, r := range runs {
		vs = append(vs, f(r)/1e3)
	}
	slices.Sort(vs)
	med = vs[len(vs)/2]
	if len(vs)%2 == 0 {
		med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	return med, vs[0], vs[len(vs)-1], true
}

func meanOf(s opStats) float64   { return s.Mean }
func medianOf(s opStats) float64 { return s.Median }

func fmtUS(runs []opStats, f func(opStats) float64) string {
	med, lo, hi, ok := roundStat(runs, f)
	if !ok {
		return "–"
	}
	if len(runs) == 1 {
		return fmt.Sprintf("%.1f", med)
	}
	return fmt.Sprintf("%.1f (%.1f–%.1f)", med, lo, hi)
}

func writePacket(w io.Writer, p *packetResult) {
	fmt.Fprintf(w, "### Per packet: %s operations of each kind per listener and run, %d runs "+
		"(µs per operation: median over the runs, range in parentheses)\n\n", thousands(int64(p.iters)), p.rounds)
	if p.cpu >= 0 {
		fmt.Fprintf(w, "Client and listeners ran on CPU %d only, with the packets' softirq work: a round trip never waits for a "+
			"wake-up on the other CPU, which in a VM is slow and comes at random (unpinned, round trips here vary between "+
			"about 15 and 45 µs from run to run). The connect+close time includes the listener's accept and close.\n\n", p.cpu)
	}
	large := fmt.Sprintf("nftpol, %s accounts", thousands(int64(p.n)))
	name := func(cfg string) string {
		if cfg == cfgLarge {
			return large
		}
		return cfg
	}
	head := []string{"table in the server namespace", "listener", "connect+close mean", "connect+close median", "1-byte round trip mean", "round trip median"}
	var rows [][]string
	for _, k := range []packetConfig{
		{cfgNone, accFirst}, {cfgNone, accLast}, {cfgCt, accFirst}, {cfgCt, accLast},
		{cfgOne, accFirst}, {cfgLarge, accFirst}, {cfgOne, accLast}, {cfgLarge, accLast},
	} {
		if len(p.connect[k]) == 0 && len(p.rr[k]) == 0 {
			continue
		}
		acc := fmt.Sprintf("first account (uid %d, port %d)", accountUID(0), accountPort(0))
		if k.account == accLast {
			acc = fmt.Sprintf("last account (uid %d, port %d)", accountUID(p.n-1), accountPort(p.n-1))
		}
		rows = append(rows, []string{name(k.name), acc,
			fmtUS(p.connect[k], meanOf), fmtUS(p.connect[k], medianOf), fmtUS(p.rr[k], meanOf), fmtUS(p.rr[k], medianOf)})
	}
	mdTable(w, head, rows)

	fmt.Fprintf(w, "Ratios (target: %s within 10%% of 1 account, i.e. ≤ 1.10×, judged on the medians):\n\n", large)
	head = []string{"comparison", "connect+close (mean, median)", "round trip (mean, median)", "target"}
	rows = nil
	// The verdict goes by the medians: a mean carries the odd preempted
	// operation of a shared machine.
	cmp := func(label string, a, b packetConfig, target bool) {
		var cells []string
		worst, have := 0.0, true
		for _, m := range []map[packetConfig][]opStats{p.connect, p.rr} {
			var parts []string
			for _, st := range []struct {
				f      func(opStats) float64
				judged bool
			}{{meanOf, false}, {medianOf, true}} {
				x, _, _, ok1 := roundStat(m[a], st.f)
				y, _, _, ok2 := roundStat(m[b], st.f)
				if !ok1 || !ok2 || y == 0 {
					parts = append(parts, "–")
					have = false
					continue
				}
				parts = append(parts, fmtRatio(x/y))
				if st.judged {
					worst = max(worst, x/y)
				}
			}
			cells = append(cells, strings.Join(parts, ", "))
		}
		t := ""
		if target {
			switch {
			case !have:
				t = "no data"
			case worst <= 1.10:
				t = "met"
			default:
				t = fmt.Sprintf("**missed** (median ratio up to %s)", fmtRatio(worst))
			}
		}
		rows = append(rows, append(append([]string{label}, cells...), t))
	}
	cmp(large+" / 1 account, first account", packetConfig{cfgLarge, accFirst}, packetConfig{cfgOne, accFirst}, true)
	cmp(large+" / 1 account, last account", packetConfig{cfgLarge, accLast}, packetConfig{cfgOne, accLast}, true)
	cmp(large+" / no table, first account", packetConfig{cfgLarge, accFirst}, packetConfig{cfgNone, accFirst}, false)
	cmp(large+" / conntrack only, first account", packetConfig{cfgLarge, accFirst}, packetConfig{cfgCt, accFirst}, false)
	cmp("1 account / no table, first account", packetConfig{cfgOne, accFirst}, packetConfig{cfgNone, accFirst}, false)
	mdTable(w, head, rows)
	if p.err != "" {
		fmt.Fprintf(w, "The per-packet run stopped: %s\n\n", firstLine(p.err))
	}
}

// guardTarget is one of the bind guard's targets and how this run did.
type guardTarget struct{ what, status string }

// medianF is the median of xs; ok is false for none.
func medianF(xs []float64) (float64, bool) {
	if len(xs) == 0 {
		return 0, false
	}
	xs = slices.Clone(xs)
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2], true
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2, true
}

// bindMedian is the median over the runs of each run's median block.
func bindMedian(runs []bindStats, f func(bindStats) float64) (float64, bool) {
	xs := make([]float64, 0, len(runs))
	for _, r := range runs {
		xs = append(xs, f(r))
	}
	return medianF(xs)
}

// fillPhase is the median duration of the guarded applies' guard phase.
func (g *guardResult) fillPhase() (time.Duration, bool) {
	ds := g.fillPhases.durs[guardPhaseName]
	if len(ds) == 0 {
		return 0, false
	}
	return medianDur(ds), true
}

// targets judges the three targets for the guard.
func (g *guardResult) targets() []guardTarget {
	var ts []guardTarget
	n := thousands(int64(g.n))
	if p := g.packet; p != nil {
		for _, acc := range []string{accFirst, accLast} {
			var parts []string
			worst, have := 0.0, true
			for _, x := range []struct {
				what string
				m    map[packetConfig][]opStats
			}{{"connect+close", p.connect}, {"round trip", p.rr}} {
				y, _, _, ok1 := roundStat(x.m[packetConfig{guardOn, acc}], medianOf)
				z, _, _, ok2 := roundStat(x.m[packetConfig{guardOff, acc}], medianOf)
				if !ok1 || !ok2 || z == 0 {
					have = false
					continue
				}
				parts = append(parts, fmt.Sprintf("%s %s (%.1f vs %.1f µs)", x.what, fmtRatio(y/z), y, z))
				worst = max(worst, y/z)
			}
			st := verdict(worst, have, 1.05)
			if len(parts) > 0 {
				st = strings.Join(parts, ", ") + ": " + st
			}
			ts = append(ts, guardTarget{fmt.Sprintf("per packet at %s accounts with the bind guard ≤ 1.05× without, %s account (medians)", n, acc), st})
		}
	}
	if len(g.bindOn)+len(g.bindOff) > 0 {
		y, ok1 := bindMedian(g.bindOn, func(s bindStats) float64 { return s.Median })
		z, ok2 := bindMedian(g.bindOff, func(s bindStats) float64 { return s.Median })
		st := "no data"
		if ok1 && ok2 && z > 0 {
			st = fmt.Sprintf("%s (%.0f vs %.0f ns): %s", fmtRatio(y/z), y, z, verdict(y/z, true, 1.10))
		}
		ts = append(ts, guardTarget{fmt.Sprintf("bind+close of an enforced UID with the bind guard at %s accounts ≤ 1.10× without", n), st})
	}
	if len(g.fillGuard.samples)+len(g.fillPlain.samples) > 0 || g.fillGuard.err != "" || g.fillPlain.err != "" {
		ph, ok := g.fillPhase()
		st := "no data"
		switch {
		case len(g.fillGuard.samples) > 0 && !ok:
			st = fmt.Sprintf("no data: the guarded applies printed no `%s` phase (NFTPOL_TIMINGS)", guardPhaseName)
		case ok && len(g.fillPlain.samples) > 0:
			x := float64(ph) / float64(g.fillPlain.median())
			st = fmt.Sprintf("%s (%s ms vs %s): %s", fmtRatio(x), fmtMS(ph), fmtDur(g.fillPlain.median()), verdict(x, true, 0.25))
		}
		ts = append(ts, guardTarget{fmt.Sprintf("filling the bind guard's maps for %s accounts ≤ 0.25× the table's full apply", n), st})
	}
	return ts
}

// writeGuard writes the bind guard section.
func writeGuard(w io.Writer, g *guardResult) {
	n := thousands(int64(g.n))
	fmt.Fprintf(w, "## Bind guard\n\nThe guard as nftpol installs it: a policy of %s accounts with `bind_guard: {enabled: true, cgroup: ...}`, "+
		"applied with `--bpf-dir` on a bpffs the bench mounts for the run; the cgroup is a child of the cgroup v2 hierarchy (%s) "+
		"that the bench creates and removes, never the root or one that existed. Every process measured in a cgroup joined it "+
		"itself before making a socket, and proved where it was: as its account, a UDP bind of another account's port was refused "+
		"with EPERM in the guard's cgroup and allowed in the other. Without the guard means the same table, and processes in a "+
		"cgroup of the bench's with no programs attached.\n\n", n, g.cgroup)
	if p := g.packet; p != nil && (len(p.connect) > 0 || len(p.rr) > 0) {
		fmt.Fprintf(w, "### Receive path, per packet: %s operations of each kind per listener and run, %d runs "+
			"(µs per operation: median over the runs, range in parentheses)\n\n", thousands(int64(p.iters)), p.rounds)
		fmt.Fprintf(w, "Two server namespaces hold the same nftpol table of %s accounts; in the guard's, the listeners run in the guard's "+
			"cgroup, so every packet delivered to them passes the `cgroup_skb/ingress` program (the veth is not loopback: the full path) "+
			"and their sockets' binds the `bind4` program. One client cycles through the four listeners in blocks of %d operations, so "+
			"both configurations see the same machine.", n, packetBlock)
		if p.cpu >= 0 {
			fmt.Fprintf(w, " Client and listeners ran on CPU %d only.", p.cpu)
		}
		fmt.Fprintf(w, "\n\n")
		head := []string{"configuration", "listener", "connect+close mean", "connect+close median", "1-byte round trip mean", "round trip median"}
		var rows [][]string
		for _, cfg := range []string{guardOn, guardOff} {
			for _, acc := range []string{accFirst, accLast} {
				k := packetConfig{cfg, acc}
				if len(p.connect[k]) == 0 && len(p.rr[k]) == 0 {
					continue
				}
				a := fmt.Sprintf("first account (uid %d, port %d)", accountUID(0), accountPort(0))
				if acc == accLast {
					a = fmt.Sprintf("last account (uid %d, port %d)", accountUID(g.n-1), accountPort(g.n-1))
				}
				name := "nftpol, " + n + " accounts, bind guard"
				if cfg == guardOff {
					name = "nftpol, " + n + " accounts, no guard"
				}
				rows = append(rows, []string{name, a, fmtUS(p.connect[k], meanOf), fmtUS(p.connect[k], medianOf), fmtUS(p.rr[k], meanOf), fmtUS(p.rr[k], medianOf)})
			}
		}
		mdTable(w, head, rows)
		if p.err != "" {
			fmt.Fprintf(w, "The per-packet run stopped: %s\n\n", firstLine(p.err))
		}
	}
	if len(g.bindOn)+len(g.bindOff) > 0 {
		fmt.Fprintf(w, "### bind+close\n\nOne process per run (this program's `bindloop`) as uid %d, an enforced UID: socket + bind of "+
			"0.0.0.0 on its own zone port %d (TCP) + close, %s times after a warm-up, timed in blocks of %d; runs with and "+
			"without the guard alternate (%d each). ns per bind+close:\n\n", accountUID(g.n/2), accountPort(g.n/2), thousands(int64(g.binds)), bindBlock, g.bindRounds)
		fmtB := func(runs []bindStats, f func(bindStats) float64) string {
			m, ok := bindMedian(runs, f)
			if !ok {
				return "–"
			}
			lo, hi := f(runs[0]), f(runs[0])
			for _, r := range runs {
				lo, hi = min(lo, f(r)), max(hi, f(r))
			}
			return fmt.Sprintf("%.0f (%.0f–%.0f)", m, lo, hi)
		}
		mean := func(s bindStats) float64 { return s.Mean }
		med := func(s bindStats) float64 { return s.Median }
		mdTable(w, []string{"configuration", "runs", "mean per run", "median block per run"}, [][]string{
			{"bind guard, " + n + " accounts", fmt.Sprint(len(g.bindOn)), fmtB(g.bindOn, mean), fmtB(g.bindOn, med)},
			{"no guard", fmt.Sprint(len(g.bindOff)), fmtB(g.bindOff, mean), fmtB(g.bindOff, med)},
		})
		fmt.Fprintf(w, "Cells: the median over the runs, the range in parentheses. The target is judged on the median blocks: a run's mean "+
			"carries whatever preempted it on a shared machine.\n\n")
	}
	if len(g.fillGuard.samples)+len(g.fillPlain.samples) > 0 || g.fillGuard.err != "" || g.fillPlain.err != "" {
		fmt.Fprintf(w, "### Map fill\n\n`nftpol apply` of %s accounts into an empty namespace (no table, no state), without the guard "+
			"and with it (fresh maps each time: `nftpol remove --purge` detaches and unpins it after each run), alternating which goes "+
			"first, with NFTPOL_TIMINGS=1. The `%s` phase runs after the table's transaction: compiling the guard's data, creating and "+
			"filling its maps (%s port entries written), loading and attaching the programs.\n\n", n, guardPhaseName, thousands(int64(g.fillEntries)))
		ph := "–"
		if d, ok := g.fillPhase(); ok {
			ph = fmt.Sprintf("%s ms (median of %d)", fmtMS(d), len(g.fillPhases.durs[guardPhaseName]))
		}
		phOff := "–"
		if ds := g.plainPhases.durs[guardPhaseName]; len(ds) > 0 {
			phOff = fmt.Sprintf("%s ms (median of %d)", fmtMS(medianDur(ds)), len(ds))
		}
		extra := ""
		if len(g.fillGuard.samples) > 0 && len(g.fillPlain.samples) > 0 {
			extra = fmt.Sprintf("; the guarded apply took %s longer", fmtDur(g.fillGuard.median()-g.fillPlain.median()))
		}
		mdTable(w, []string{"full apply", "wall", "peak RSS", "`" + guardPhaseName + "` phase"}, [][]string{
			{"without the guard (the table's own)", g.fillPlain.time(), g.fillPlain.rss(), phOff},
			{"with the guard", g.fillGuard.time(), g.fillGuard.rss(), ph},
		})
		fmt.Fprintf(w, "The target compares the guarded apply's `%s` phase with the whole unguarded apply (wall, fork to exit)%s.\n\n", guardPhaseName, extra)
	}
}
