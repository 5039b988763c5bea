package main

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// With NFTPOL_TIMINGS=1, nftpol prints on stderr, for each phase of its
// work, how long after its start the phase ended:
//
//	nftpol:     75.2 ms  compiled
//
// The bench runs a few one-account applies that way, outside the timed
// cells, to show where such an apply spends its time.

const (
	timingPairs     = 3           // widen + narrow pairs run with timings on
	commitPhaseName = "committed" // the phase that ends with the kernel's transaction
)

var timingLine = regexp.MustCompile(`^nftpol:\s+([0-9]+(?:\.[0-9]+)?) ms\s+(\S.*?)\s*$`)

// phaseEnd is one timings line: a phase and when it ended.
type phaseEnd struct {
	name string
	end  time.Duration // since the process started
}

// parseTimings reads the timings lines out of a command's stderr. A name
// seen twice in one run gets its occurrence appended ("x (2)").
func parseTimings(stderr []byte) []phaseEnd {
	var ps []phaseEnd
	seen := map[string]int{}
	for _, line := range strings.Split(string(stderr), "\n") {
		m := timingLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		name := m[2]
		seen[name]++
		if k := seen[name]; k > 1 {
			name = fmt.Sprintf("%s (%d)", name, k)
		}
		ps = append(ps, phaseEnd{name: name, end: time.Duration(ms * float64(time.Millisecond))})
	}
	return ps
}

// phaseTimes collects the phases of several runs of one command.
type phaseTimes struct {
	applies int      // runs
	timed   int      // runs that printed timings
	order   []string // phase names in the order first seen
	durs    map[string][]time.Duration
	totals  []time.Duration // the last phase's end, per timed run
	err     string          // a run failed
}

// add records one run's phases: each phase's duration is its end minus the
// previous phase's end (the first one's, from the process's start).
func (p *phaseTimes) add(ps []phaseEnd) {
	p.applies++
	if len(ps) == 0 {
		return
	}
	p.timed++
	if p.durs == nil {
		p.durs = map[string][]time.Duration{}
	}
	var prev time.Duration
	for _, e := range ps {
		if _, ok := p.durs[e.name]; !ok {
			p.order = append(p.order, e.name)
		}
		p.durs[e.name] = append(p.durs[e.name], e.end-prev)
		prev = e.end
	}
	p.totals = append(p.totals, prev)
}

// commit is the median duration of the commit phase, if there is one.
func (p *phaseTimes) commit() (time.Duration, bool) {
	ds := p.durs[commitPhaseName]
	if len(ds) == 0 {
		return 0, false
	}
	return medianDur(ds), true
}

// applyPhases runs timingPairs widen + narrow pairs of the measured
// one-account apply with NFTPOL_TIMINGS=1, outside the timed cells. It
// leaves nftpol's namespace at p0, as it found it.
func (r *sizeRun) applyPhases() (*phaseTimes, error) {
	b := r.b
	pt := &phaseTimes{}
	for range timingPairs {
		for _, config := range []string{r.p1, r.p0} {
			a := append(r.nftpolArgs(config), "apply", "-o", "json")
			res, err := b.run(command{args: a, stdout: true, timed: true, env: []string{"NFTPOL_TIMINGS=1"}})
			if err != nil {
				pt.err = err.Error()
				return pt, err
			}
			pt.add(parseTimings(res.stderr))
		}
	}
	if c, ok := pt.commit(); ok {
		b.logf("N=%d one-account apply phases (%d applies with NFTPOL_TIMINGS): total %s ms, commit %s ms", r.n, pt.timed,
			fmtMS(medianDur(pt.totals)), fmtMS(c))
	} else {
		b.logf("N=%d one-account apply phases: %d of %d applies printed NFTPOL_TIMINGS lines", r.n, pt.timed, pt.applies)
	}
	return pt, nil
}

// fmtMS renders a phase time as the timings print it: ms to 0.1 ms.
func fmtMS(d time.Duration) string {
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
}

// writeHandCommit writes, next to nft's time for the change by hand, the
// time of nftpol's commit phase for the same change.
func writeHandCommit(w io.Writer, r *sizeResult) {
	if len(r.changeHand.samples) == 0 {
		return
	}
	fmt.Fprintf(w, "`nft -f` of this change took %s (median, whole process).", fmtDur(r.changeHand.median()))
	if r.phases == nil {
		fmt.Fprint(w, "\n\n")
		return
	}
	if c, ok := r.phases.commit(); ok {
		from := "nftpol's start"
		if i := slices.Index(r.phases.order, commitPhaseName); i > 0 {
			from = "`" + r.phases.order[i-1] + "`"
		}
		fmt.Fprintf(w, " nftpol's `%s` phase for the same change (from %s to `%s`: sending the batch and "+
			"waiting for the kernel's transaction) took %s ms (median of %d applies), an estimate of the kernel's share of nft's %s.",
			commitPhaseName, from, commitPhaseName, fmtMS(c), len(r.phases.durs[commitPhaseName]), fmtDur(r.changeHand.median()))
	}
	fmt.Fprint(w, "\n\n")
}

// writePhases writes the table of where the one-account apply spends its
// time, or why there is none.
func writePhases(w io.Writer, p *phaseTimes) {
	if p == nil {
		return
	}
	fmt.Fprintf(w, "Where the one-account `apply` spends its time (NFTPOL_TIMINGS, median of %d widen/narrow pairs):\n\n", timingPairs)
	switch {
	case p.err != "":
		fmt.Fprintf(w, "Not measured: the apply with NFTPOL_TIMINGS=1 failed: %s\n\n", firstLine(p.err))
		return
	case p.timed == 0:
		fmt.Fprintf(w, "Not measured: this nftpol printed no NFTPOL_TIMINGS lines in %d applies (a build without timings?).\n\n", p.applies)
		return
	}
	var rows [][]string
	for _, name := range p.order {
		ds := p.durs[name]
		ms := fmtMS(medianDur(ds))
		if len(ds) < p.timed {
			ms += fmt.Sprintf(" (in %d of %d applies)", len(ds), p.timed)
		}
		rows = append(rows, []string{name, ms})
	}
	rows = append(rows, []string{"**total** (last phase's end)", "**" + fmtMS(medianDur(p.totals)) + "**"})
	mdTable(w, []string{"phase", "ms (median)"}, rows)
	fmt.Fprintf(w, "Each phase's time is its end minus the previous phase's end, from nftpol's start "+
		"(its main package's initialisation, so exec, the Go runtime's start-up and the exit are not in it); medians over %d applies (%d widen + %d narrow), run outside the timed cells. "+
		"The phase medians need not add up to the median total.\n\n", p.timed, timingPairs, timingPairs)
	if p.timed < p.applies {
		fmt.Fprintf(w, "%d of the %d applies printed no timings.\n\n", p.applies-p.timed, p.applies)
	}
}
