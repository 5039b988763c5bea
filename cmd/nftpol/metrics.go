package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/agent"
	"github.com/nftpol/nftpol/internal/promtext"
	"github.com/nftpol/nftpol/offenders"
)

// agentMetrics are the agent's Prometheus metrics: its state, read when
// scraped, and the counts and latencies it observes as they happen. Names
// that status --format prometheus (the textfile collector's) also has mean
// the same here.
//
// They are written in the text exposition format by hand, as status's are,
// not with client_golang: that library's packages (and protobuf, procfs
// and net/http's handlers under them) are initialised in every nftpol
// process, a forwarded apply included, whether it serves metrics or not.
// Without them `nftpol --version` took 3.3 ms instead of 4.3 ms (perf stat
// -r 60, task-clock 2.6 ms instead of 4.0) and the binary shrank from 23.9
// to 16.6 MB.
type agentMetrics struct {
	mu           sync.Mutex
	heal         histogram
	episodes     map[string]uint64    // by protocol
	terminations map[[2]string]uint64 // by outcome and dry_run

	agent *agent.Agent
	off   *offenders.Watcher
}

// histogram is a Prometheus histogram: counts per upper bound (each
// observation in the first bucket it fits), their sum and number.
type histogram struct {
	bounds []float64
	counts []uint64
	sum    float64
	count  uint64
}

func newAgentMetrics() *agentMetrics {
	bounds := []float64{.005, .01, .025, .05, .1, .2, .5, 1, 2.5}
	return &agentMetrics{
		heal:         histogram{bounds: bounds, counts: make([]uint64, len(bounds))},
		episodes:     map[string]uint64{},
		terminations: map[[2]string]uint64{},
	}
}

// healTook records how long a heal took.
func (m *agentMetrics) healTook(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := &m.heal
	v := d.Seconds()
	if i, _ := slices.BinarySearch(h.bounds, v); i < len(h.counts) {
		h.counts[i]++
	}
	h.sum += v
	h.count++
}

// event counts what the offender watcher reports.
func (m *agentMetrics) event(e offenders.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch e.Kind {
	case offenders.EpisodeStarted:
		m.episodes[e.Key.Proto]++
	case offenders.Terminated:
		m.terminations[[2]string{string(e.Termination.Outcome), strconv.FormatBool(e.DryRun)}]++
	}
}

// write writes every metric in the text exposition format, families in
// name order.
func (m *agentMetrics) write(w io.Writer) error {
	var x exposition
	m.writeAgent(&x)
	m.writeCounts(&x)
	writeProcess(&x)
	x.sort()
	_, err := w.Write(x.bytes())
	return err
}

func (m *agentMetrics) writeAgent(x *exposition) {
	if m.agent == nil {
		return
	}
	s := m.agent.Stats()
	r := s.Report
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	x.one("nftpol_table_installed", "gauge", "1 when the agent enforces a policy (0 before the first apply, or after nftpol remove).", b(s.Enforcing))
	x.one("nftpol_in_sync", "gauge", "1 when the table holds the policy the files say, with no foreign change waiting to be healed.", b(s.InSync))
	x.one("nftpol_table_owned", "gauge", "1 when the agent owns the table (no other process can change it).", b(s.Enforcing && r.Mode == string(agent.ModeOwner)))
	last := 0.0
	if r.LastApply != nil {
		last = float64(r.LastApply.Unix())
	}
	x.one("nftpol_last_apply_timestamp_seconds", "gauge", "When the agent last changed the table for a policy (Unix time; 0: not since it started).", last)
	x.one("nftpol_applies_total", "counter", "Applies that changed the table.", float64(r.Applies))
	x.one("nftpol_apply_failures_total", "counter", "Applies and heals the kernel refused (the table stayed as it was).", float64(r.Failures))
	x.one("nftpol_heals_total", "counter", "Foreign changes to the table put back.", float64(r.Heals))
	x.one("nftpol_policy_error", "gauge", "1 while the policy files are broken (the last good policy stays enforced).", b(r.PolicyError != ""))
	x.one("nftpol_policy_errors_total", "counter", "Times the policy files turned out broken.", float64(r.PolicyErrors))
	x.one("nftpol_episodes_open", "gauge", "Sockets being blocked now: an account serving where it may not.", float64(len(r.Episodes)))
	if m.off != nil {
		f := x.family("nftpol_violation_packets", "gauge", "Packets of blocked serving per uid, account, protocol and port, over the recording window (an entry expires an hour after its last packet), as in status --format prometheus.")
		for _, v := range m.off.Violations() {
			f.sample("", float64(v.Packets), "uid", strconv.FormatUint(uint64(v.UID), 10), "account", v.Account, "proto", v.Proto, "port", strconv.Itoa(int(v.Port)))
		}
	}
}

func (m *agentMetrics) writeCounts(x *exposition) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := x.family("nftpol_heal_duration_seconds", "histogram", "How long putting the table back after another process changed it took (monitor mode).")
	h := &m.heal
	var cum uint64
	for i, le := range h.bounds {
		cum += h.counts[i]
		f.sample("_bucket", float64(cum), "le", formatValue(le))
	}
	f.sample("_bucket", float64(h.count), "le", "+Inf")
	f.sample("_sum", h.sum)
	f.sample("_count", float64(h.count))
	f = x.family("nftpol_episodes_total", "counter", "Episodes of an account serving where the policy does not allow it, by protocol.")
	for proto, n := range m.episodes {
		f.sample("", float64(n), "proto", proto)
	}
	f = x.family("nftpol_terminations_total", "counter", "Processes the agent ended (or, with dry_run, would have ended), by outcome.")
	for k, n := range m.terminations {
		f.sample("", float64(n), "outcome", k[0], "dry_run", k[1])
	}
}

// goMetrics are the runtime/metrics samples behind the go_ metrics.
var goMetrics = []struct{ name, help, sample string }{
	{"go_memstats_heap_alloc_bytes", "Bytes of allocated heap objects (live and not yet collected).", "/memory/classes/heap/objects:bytes"},
	{"go_memstats_sys_bytes", "Bytes of memory the Go runtime has mapped from the system.", "/memory/classes/total:bytes"},
	{"go_gc_cycles_total", "Completed garbage collection cycles.", "/gc/cycles/total:gc-cycles"},
}

// writeProcess writes the process_ and go_ metrics: the agent's CPU time,
// memory, file descriptors and start (from /proc/self), its goroutines and
// threads, and its heap. A value that cannot be read is left out.
func writeProcess(x *exposition) {
	x.one("go_goroutines", "gauge", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	x.family("go_info", "gauge", "Information about the Go environment.").sample("", 1, "version", runtime.Version())
	samples := make([]metrics.Sample, len(goMetrics))
	for i, g := range goMetrics {
		samples[i].Name = g.sample
	}
	metrics.Read(samples)
	for i, g := range goMetrics {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			typ := "gauge"
			if strings.HasSuffix(g.name, "_total") {
				typ = "counter"
			}
			x.one(g.name, typ, g.help, float64(samples[i].Value.Uint64()))
		}
	}
	if st, err := readProcStat(); err == nil {
		x.one("go_threads", "gauge", "Number of OS threads created.", float64(st.threads))
		x.one("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", st.cpu)
		x.one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", float64(st.rss))
		x.one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", float64(st.vsize))
		if boot, err := bootTime(); err == nil {
			x.one("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", boot+st.start)
		}
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		x.one("process_open_fds", "gauge", "Number of open file descriptors.", float64(len(fds)))
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		x.one("process_max_fds", "gauge", "Maximum number of open file descriptors.", float64(lim.Cur))
	}
}

// userHZ is the unit of /proc's CPU times (USER_HZ, 100 on every Linux
// architecture nftpol builds for).
const userHZ = 100

type procStat struct {
	cpu, start float64 // seconds; start since boot
	threads    int64
	vsize, rss int64 // bytes
}

// readProcStat reads /proc/self/stat (proc(5)): after the command's closing
// parenthesis, utime and stime are fields 14 and 15, num_threads 20,
// starttime 22, vsize 23 and rss (pages) 24.
func readProcStat() (procStat, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("/proc/self/stat: no command")
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	field := func(n int) int64 {
		if n-3 >= len(f) {
			err = fmt.Errorf("/proc/self/stat: no field %d", n)
			return 0
		}
		v, e := strconv.ParseInt(f[n-3], 10, 64)
		if e != nil {
			err = e
		}
		return v
	}
	st := procStat{
		cpu:     float64(field(14)+field(15)) / userHZ,
		threads: field(20),
		start:   float64(field(22)) / userHZ,
		vsize:   field(23),
		rss:     field(24) * int64(os.Getpagesize()),
	}
	return st, err
}

// bootTime is when the machine booted (btime in /proc/stat), Unix seconds.
func bootTime() (float64, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "btime "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, errors.New("/proc/stat: no btime")
}

// exposition collects metric families for the text exposition format
// (version 0.0.4).
type exposition struct {
	families []*family
}

type family struct {
	name, typ, help string
	lines           []string
}

func (x *exposition) family(name, typ, help string) *family {
	f := &family{name: name, typ: typ, help: help}
	x.families = append(x.families, f)
	return f
}

// one writes a family of one sample without labels.
func (x *exposition) one(name, typ, help string, v float64) {
	x.family(name, typ, help).sample("", v)
}

// sample adds the sample name+suffix with the labels given as name, value
// pairs; they are written sorted by name, as Prometheus's own clients do.
func (f *family) sample(suffix string, v float64, labels ...string) {
	var b strings.Builder
	b.WriteString(f.name)
	b.WriteString(suffix)
	if len(labels) > 0 {
		pairs := make([][2]string, 0, len(labels)/2)
		for i := 0; i+1 < len(labels); i += 2 {
			pairs = append(pairs, [2]string{labels[i], labels[i+1]})
		}
		slices.SortFunc(pairs, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
		b.WriteByte('{')
		for i, p := range pairs {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(p[0])
			b.WriteByte('=')
			b.WriteString(promtext.Label(p[1]))
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(formatValue(v))
	f.lines = append(f.lines, b.String())
}

// sort puts the families in name order, and each one's samples in order
// but a histogram's (its buckets go by bound, then sum and count).
func (x *exposition) sort() {
	slices.SortStableFunc(x.families, func(a, b *family) int { return strings.Compare(a.name, b.name) })
	for _, f := range x.families {
		if f.typ != "histogram" {
			slices.Sort(f.lines)
		}
	}
}

func (x *exposition) bytes() []byte {
	var b bytes.Buffer
	for _, f := range x.families {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.name, promtext.Help(f.help), f.name, f.typ)
		for _, l := range f.lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// formatValue spells a sample value as Prometheus's clients do.
func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// serveMetrics serves /metrics on addr ("HOST:PORT", or "unix:PATH") until
// the returned function stops it.
func serveMetrics(addr string, m *agentMetrics, log *slog.Logger) (func(), error) {
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", path
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
		}
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if err := m.write(w); err != nil {
			log.Warn("writing metrics", "err", err.Error())
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serving metrics", "err", err.Error())
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
		if network == "unix" {
			_ = os.Remove(address)
		}
	}, nil
}
