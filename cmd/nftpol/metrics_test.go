package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/audit"
	"github.com/nftpol/nftpol/offenders"
)

// TestMetricsExposition: the agent's counts and its process's figures in
// the text exposition format: a histogram's buckets cumulative and bounded
// by +Inf, labels sorted by name and quoted, every family typed once, in
// name order. (The integration tests check a live agent's /metrics with
// promtool.)
func TestMetricsExposition(t *testing.T) {
	m := newAgentMetrics()
	for _, d := range []time.Duration{3 * time.Millisecond, 30 * time.Millisecond, 30 * time.Millisecond, 4 * time.Second} {
		m.healTook(d)
	}
	m.event(offenders.Event{Kind: offenders.EpisodeStarted, Key: offenders.Key{Proto: "tcp"}})
	m.event(offenders.Event{Kind: offenders.EpisodeStarted, Key: offenders.Key{Proto: "tcp"}})
	m.event(offenders.Event{Kind: offenders.Terminated, DryRun: true, Termination: &audit.Termination{Outcome: "exited"}})
	var b strings.Builder
	if err := m.write(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"# TYPE nftpol_heal_duration_seconds histogram\n",
		`nftpol_heal_duration_seconds_bucket{le="0.005"} 1` + "\n",
		`nftpol_heal_duration_seconds_bucket{le="0.025"} 1` + "\n",
		`nftpol_heal_duration_seconds_bucket{le="0.05"} 3` + "\n",
		`nftpol_heal_duration_seconds_bucket{le="2.5"} 3` + "\n",
		`nftpol_heal_duration_seconds_bucket{le="+Inf"} 4` + "\n",
		"nftpol_heal_duration_seconds_sum 4.063\n",
		"nftpol_heal_duration_seconds_count 4\n",
		`nftpol_episodes_total{proto="tcp"} 2` + "\n",
		`nftpol_terminations_total{dry_run="true",outcome="exited"} 1` + "\n",
		"# TYPE process_cpu_seconds_total counter\n",
		"process_open_fds ",
		"go_goroutines ",
		"go_info{version=",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the exposition lacks %q:\n%s", want, out)
		}
	}
	// One HELP and TYPE per family, families in name order.
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if name, ok := strings.CutPrefix(l, "# TYPE "); ok {
			names = append(names, strings.Fields(name)[0])
		}
	}
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			t.Errorf("families out of order or repeated: %s before %s", names[i-1], names[i])
		}
	}
	// The process's resident memory is its own, as /proc/self/statm says
	// (within what the test allocates meanwhile).
	st, err := readProcStat()
	if err != nil {
		t.Fatal(err)
	}
	statm, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	pages, _ := strconv.ParseInt(strings.Fields(string(statm))[1], 10, 64)
	if rss := pages * int64(os.Getpagesize()); st.rss <= 0 || st.rss > 2*rss || 2*st.rss < rss {
		t.Errorf("rss %d bytes from /proc/self/stat, %d from statm", st.rss, rss)
	}
	if st.threads < 1 || st.cpu < 0 {
		t.Errorf("threads %d, cpu %v s", st.threads, st.cpu)
	}
}
