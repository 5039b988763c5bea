// Command nftpol-bench measures nftpol against nft on the real kernel and
// prints a table; `make bench` runs it. It needs root.
//
// For N = 1,000, 10,000 and 50,000 accounts (generated: acct-NNNNNN, uid
// 100000+i, port 10000+i, TCP and UDP, zone 10000-65000) it times whole
// processes, nftpol's and nft's alternately in the same run, and reads each
// one's peak RSS from wait4:
//
//  1. full apply into an empty namespace against `nft -f` of nftpol's own
//     export, and nft's atomic reload of the same table;
//  2. a one-account change: `nftpol apply` (trusting its state, and with
//     --full-read) against `nft -f` of the same element operations written
//     by hand, with nftpol's netlink message count;
//  3. 100, 1,000 and 10,000 accounts changed, removed and added back, against
//     a full load;
//  4. `nftpol plan` with nothing to change against `nft -j list table`;
//  5. `nftpol validate` of N accounts in one file and in N include files;
//  6. per packet: TCP connect+close and 1-byte round trips from a client
//     namespace to listeners of the first and the last account, with no
//     table, conntrack only, nftpol at 1 account and at N accounts;
//  7. the bind guard at the per-packet N (guard.go): per packet with and
//     without it, bind+close of an enforced UID, and its map fill against
//     the table's own full apply, in child cgroups of the cgroup v2
//     hierarchy and a bpffs the bench creates and removes;
//  8. the agent, `nftpol watch` (agent.go): an include file renamed in
//     until the kernel's commit, `nftpol apply` through the agent, the
//     heal of `nft flush ruleset` in monitor mode, the idle agent's RSS
//     and wake-ups.
//
// Everything happens in network namespaces the bench creates (`ip netns
// add`) and deletes at the end, also after a failure or SIGINT/SIGTERM;
// addresses come from 198.18.0.0/15. nft only ever runs inside those
// namespaces, nftpol only with --netns naming one of them, so the host's
// ruleset is never read or changed. Every process is bounded by -op-timeout.
//
// The machine may be shared: each measurement waits (a while) for the CPUs
// to be nearly idle, measured processes run at a raised priority, and the
// report says how often the machine was busy anyway. Next to each wall time
// it gives the process's CPU time, which other load disturbs much less.
//
// The table goes to standard output and, with -out, to a markdown file with
// the machine and the date; progress goes to standard error.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type options struct {
	sizes        []int
	runs         int
	quick        bool
	out          string
	sections     map[string]bool
	packetIters  int
	packetRounds int
	packetN      int
	packetCPU    int
	cellBudget   time.Duration
	opLimit      time.Duration
	opTimeout    time.Duration
	settle       time.Duration
	quietWait    time.Duration
	quietBudget  time.Duration
	nice         int
	keepWork     bool
	guardBinds   int
	guardRounds  int
	agentCombos  map[string]bool // protocols:position, nil for all
}

type bench struct {
	ctx   context.Context
	opts  options
	table string

	nftpol, nft, ip, self string
	work                  string
	bpfDir                string // every nftpol's --bpf-dir unless it names one: an empty directory of the bench's
	runBase               string // the agents' run directories: on tmpfs, as /run is (agent.go)
	namespaces            []string
	cgroups, mounts       []string      // the guard section's cgroups and bpffs
	quietWaited           time.Duration // spent waiting for a quiet machine
	notQuiet              int           // measurements made on a busy machine
	started               time.Time
	log                   io.Writer
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "[%s] %s\n", time.Since(b.started).Round(time.Second), fmt.Sprintf(format, args...))
}

func (b *bench) section(s string) bool { return b.opts.sections == nil || b.opts.sections[s] }

var allSections = []string{"full", "change", "plan", "sets", "load", "packet", "guard", "agent", "views"}

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "serve":
			err = serveMain(os.Args[2:])
		case "client":
			err = clientMain(os.Args[2:])
		case "exec":
			err = execMain(os.Args[2:])
		case "bindloop":
			err = bindLoopMain(os.Args[2:])
		default:
			os.Exit(benchMain(os.Args[1:]))
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "nftpol-bench %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	os.Exit(benchMain(nil))
}

func benchMain(args []string) int {
	fs := flag.NewFlagSet("nftpol-bench", flag.ContinueOnError)
	nftpol := fs.String("nftpol", "bin/nftpol", "the nftpol binary to measure")
	sizes := fs.String("sizes", "1000,10000,50000", "numbers of accounts, comma-separated")
	runs := fs.Int("runs", 5, "runs per measurement (medians and min–max over them)")
	quick := fs.Bool("quick", false, "N = 1,000 and 10,000 only, 3 runs, shorter per-packet runs")
	out := fs.String("out", "", "also write the report, with machine and date, to this markdown file")
	only := fs.String("only", "", "run only these sections, comma-separated: "+strings.Join(allSections, ","))
	packetIters := fs.Int("packet-iters", 20000, "per-packet: operations of each kind per listener and run")
	packetRounds := fs.Int("packet-rounds", 3, "per-packet: runs")
	packetN := fs.Int("packet-n", 0, "accounts of the large per-packet table (default: the largest -sizes)")
	packetCPU := fs.Int("packet-cpu", runtime.NumCPU()-1, "per-packet: pin client and listeners to this CPU (-1: do not pin)")
	cellBudget := fs.Duration("cell-budget", 100*time.Second, "stop repeating a change-set measurement once its runs took this long")
	opLimit := fs.Duration("op-limit", 150*time.Second, "skip a change set estimated to take longer than this in one apply")
	opTimeout := fs.Duration("op-timeout", 15*time.Minute, "kill any one process after this long")
	settle := fs.Duration("settle", 200*time.Millisecond, "pause after deleting a table, before the next measurement")
	quietWait := fs.Duration("quiet-wait", 20*time.Second, "before each measurement, wait up to this long for the CPUs to be at most 10% busy")
	quietBudget := fs.Duration("quiet-budget", 10*time.Minute, "stop waiting for a quiet machine once the waits add up to this")
	nice := fs.Int("nice", -10, "run measured processes at this niceness (ahead of other work on a shared machine)")
	gobench := fs.String("gobench", "", "output of `go test -bench` to include in the report")
	keep := fs.Bool("keep", false, "keep the work directory (policies, nft files)")
	guardBinds := fs.Int("guard-binds", 50000, "guard: bind+close per run of the bind loop")
	guardRounds := fs.Int("guard-rounds", 10, "guard: runs of the bind loop with the guard and without it each, alternating")
	agentCombos := fs.String("agent-combos", "", "agent: only these protocols:position, comma-separated (tcp+udp:last,tcp:first,...; default all)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o := options{runs: *runs, quick: *quick, out: *out, packetIters: *packetIters, packetRounds: *packetRounds,
		packetN: *packetN, packetCPU: *packetCPU, cellBudget: *cellBudget, opLimit: *opLimit, opTimeout: *opTimeout, settle: *settle, quietWait: *quietWait, quietBudget: *quietBudget, nice: *nice, keepWork: *keep,
		guardBinds: *guardBinds, guardRounds: *guardRounds}
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 2 || n > zoneHi-zoneLo-20 {
			fmt.Fprintf(os.Stderr, "nftpol-bench: -sizes: %q is not a number of accounts between 2 and %d\n", s, zoneHi-zoneLo-20)
			return 2
		}
		o.sizes = append(o.sizes, n)
	}
	if o.quick {
		o.sizes = slices.DeleteFunc(o.sizes, func(n int) bool { return n > 10000 })
		if !flagSet(fs, "runs") {
			o.runs = 3
		}
		if !flagSet(fs, "packet-iters") {
			o.packetIters = 5000
		}
		if !flagSet(fs, "packet-rounds") {
			o.packetRounds = 2
		}
		if !flagSet(fs, "guard-binds") {
			o.guardBinds = 20000
		}
		if !flagSet(fs, "guard-rounds") {
			o.guardRounds = 4
		}
	}
	if len(o.sizes) == 0 || o.runs < 1 || o.packetIters < 100 || o.packetRounds < 1 || o.guardBinds < bindBlock || o.guardRounds < 1 {
		fmt.Fprintln(os.Stderr, "nftpol-bench: nothing to measure (check -sizes, -runs, -packet-iters, -packet-rounds, -guard-binds, -guard-rounds)")
		return 2
	}
	if *agentCombos != "" {
		o.agentCombos = map[string]bool{}
		for _, c := range strings.Split(*agentCombos, ",") {
			proto, pos, _ := strings.Cut(c, ":")
			if !slices.Contains(agentProtocols, proto) || !slices.Contains(agentPositions, pos) {
				fmt.Fprintf(os.Stderr, "nftpol-bench: -agent-combos: %q is not protocols:position (%s : %s)\n", c,
					strings.Join(agentProtocols, "|"), strings.Join(agentPositions, "|"))
				return 2
			}
			o.agentCombos[c] = true
		}
	}
	if o.packetN == 0 {
		o.packetN = slices.Max(o.sizes)
	}
	if *only != "" {
		o.sections = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			if !slices.Contains(allSections, s) {
				fmt.Fprintf(os.Stderr, "nftpol-bench: -only: unknown section %q (want %s)\n", s, strings.Join(allSections, ","))
				return 2
			}
			o.sections[s] = true
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	b := &bench{ctx: ctx, opts: o, table: "nftpol", started: time.Now(), log: os.Stderr}
	if err := b.setup(*nftpol); err != nil {
		fmt.Fprintf(os.Stderr, "nftpol-bench: %v\n", err)
		return 1
	}
	defer b.cleanup()

	rep := &report{opts: o, machine: machineInfo(b), cmdline: strings.Join(os.Args, " ")}
	if *gobench != "" {
		data, err := os.ReadFile(*gobench)
		if err != nil {
			fmt.Fprintf(os.Stderr, "nftpol-bench: -gobench: %v\n", err)
			return 1
		}
		rep.gobench = string(data)
	}
	failed := false
	for _, n := range o.sizes {
		if !b.section("full") && !b.section("change") && !b.section("plan") && !b.section("sets") && !b.section("load") {
			break
		}
		r, err := b.measureSize(n)
		if r != nil {
			rep.sizes = append(rep.sizes, r)
		}
		if err != nil {
			b.logf("N=%d: %v", n, err)
			rep.errors = append(rep.errors, fmt.Sprintf("N=%d: %s", n, firstLine(err.Error())))
			failed = true
			if ctx.Err() != nil {
				break
			}
		}
	}
	if b.section("packet") && ctx.Err() == nil {
		p, err := b.measurePacket(o.packetN)
		rep.packet = p
		if err != nil {
			b.logf("per-packet: %v", err)
			rep.errors = append(rep.errors, "per-packet: "+firstLine(err.Error()))
			failed = true
		}
	}
	if b.section("guard") && ctx.Err() == nil {
		g, err := b.measureGuard(o.packetN)
		rep.guard = g
		if err != nil {
			b.logf("bind guard: %v", err)
			rep.errors = append(rep.errors, "bind guard: "+firstLine(err.Error()))
			failed = true
		}
	}
	if b.section("agent") && ctx.Err() == nil {
		for _, n := range o.sizes {
			a, err := b.measureAgent(n)
			if a != nil {
				rep.agents = append(rep.agents, a)
			}
			if err != nil {
				b.logf("agent, N=%d: %v", n, err)
				rep.errors = append(rep.errors, fmt.Sprintf("agent, N=%d: %s", n, firstLine(err.Error())))
				if a != nil {
					a.errs = append(a.errs, firstLine(err.Error()))
				}
				failed = true
			}
			if ctx.Err() != nil {
				break
			}
		}
	}
	if b.section("views") && ctx.Err() == nil {
		v, err := b.measureViews(slices.Max(o.sizes))
		rep.views = v
		if err != nil {
			b.logf("views: %v", err)
			rep.errors = append(rep.errors, "views: "+firstLine(err.Error()))
			failed = true
		}
	}
	rep.elapsed = time.Since(b.started)
	rep.quietWaited, rep.notQuiet = b.quietWaited, b.notQuiet

	var buf bytes.Buffer
	rep.write(&buf)
	os.Stdout.Write(buf.Bytes())
	if ctx.Err() != nil {
		if o.out != "" {
			b.logf("interrupted: %s left as it was", o.out)
		}
		return 130
	}
	if o.out != "" {
		if err := os.WriteFile(o.out, buf.Bytes(), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "nftpol-bench: %v\n", err)
			return 1
		}
		b.logf("wrote %s", o.out)
	}
	if failed {
		return 1
	}
	return 0
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func (b *bench) setup(nftpol string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: network namespaces, nftables, listeners as other UIDs")
	}
	var err error
	if b.nftpol, err = filepath.Abs(nftpol); err != nil {
		return err
	}
	if _, err := os.Stat(b.nftpol); err != nil {
		return fmt.Errorf("nftpol binary: %w (make build)", err)
	}
	if b.nft, err = exec.LookPath("nft"); err != nil {
		return fmt.Errorf("nft not found (apt-get install nftables): %w", err)
	}
	if b.ip, err = exec.LookPath("ip"); err != nil {
		return fmt.Errorf("ip not found (apt-get install iproute2): %w", err)
	}
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	// Policy files must be root's and not writable by others, like every
	// directory above them (a sticky /tmp is fine): nftpol checks.
	if b.work, err = os.MkdirTemp("", "nftpol-bench-"); err != nil {
		return err
	}
	if err := os.Chmod(b.work, 0o755); err != nil {
		return err
	}
	b.logf("work directory %s", b.work)
	// Not a bpffs: an nftpol given it finds no guard there to remove,
	// and cannot install one (only the guard section installs any, in a
	// bpffs of its own).
	b.bpfDir = filepath.Join(b.work, "no-bpffs")
	return os.Mkdir(b.bpfDir, 0o755)
}

// cleanup deletes every namespace the bench created (which ends nft's and
// nftpol's tables in them) and the work directory.
func (b *bench) cleanup() {
	for len(b.namespaces) > 0 {
		b.deleteNetns(b.namespaces[len(b.namespaces)-1])
	}
	b.removeGuardEnv()
	if b.runBase != "" {
		if err := os.RemoveAll(b.runBase); err != nil {
			b.logf("removing %s: %v", b.runBase, err)
		}
	}
	if b.opts.keepWork {
		b.logf("kept %s", b.work)
		return
	}
	if err := os.RemoveAll(b.work); err != nil {
		b.logf("removing %s: %v", b.work, err)
	}
}

// machine describes where the numbers come from.
type machine struct {
	cpus                           int
	model, kernel, nft, nftpol, gv string
	date                           time.Time
}

func machineInfo(b *bench) machine {
	m := machine{cpus: runtime.NumCPU(), date: time.Now().UTC(), gv: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.model = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.kernel = unix.ByteSliceToString(u.Release[:])
	}
	if out, err := exec.Command(b.nft, "--version").Output(); err == nil {
		m.nft = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command(b.nftpol, "--version").Output(); err == nil {
		m.nftpol = strings.TrimSpace(string(out))
	}
	return m
}

type report struct {
	opts    options
	machine machine
	cmdline string
	sizes   []*sizeResult
	packet  *packetResult
	guard   *guardResult
	agents  []*agentResult
	views   *viewsResult
	errors  []string
	elapsed time.Duration

	quietWaited time.Duration
	notQuiet    int
	gobench     string // go test -bench output
}

func (r *report) write(w io.Writer) {
	m := r.machine
	fmt.Fprintf(w, "# nftpol benchmarks\n\n")
	fmt.Fprintf(w, "Generated by `make bench` (`%s`) on %s, in %s.\n\n", r.cmdline, m.date.Format("2006-01-02 15:04 UTC"), r.elapsed.Round(time.Second))
	fmt.Fprintf(w, "- machine: %d CPUs, %s\n- kernel: %s\n- nft: %s\n- nftpol: %s (%s)\n\n", m.cpus, m.model, m.kernel, m.nft, m.nftpol, m.gv)
	fmt.Fprintf(w, "Each cell is the wall time of the whole process, fork to exit: the median over the runs, "+
		"min–max in parentheses; peak RSS is the largest ru_maxrss over the runs. nftpol and nft run alternately in "+
		"the same run, in network namespaces of their own that the bench creates. The ratio is nftpol's median over "+
		"the reference's. Policies: N accounts acct-NNNNNN, uid 100000+i, port 10000+i, TCP and UDP, zone 10000-65000. "+
		"\"cpu\" is the median user + system time. Measured processes run at niceness %d, and each measurement starts once "+
		"the CPUs were at most 10%% busy for 0.3 s (waiting up to %s)", r.opts.nice, r.opts.quietWait)
	if r.quietWaited > 0 {
		fmt.Fprintf(w, "; this run waited %s in all for other load to pass", fmtDur(r.quietWaited))
	}
	if r.notQuiet > 0 {
		fmt.Fprintf(w, ", and **%d measurements ran on a busy machine anyway**", r.notQuiet)
	}
	fmt.Fprintf(w, ".\n\n")
	if len(r.errors) > 0 {
		fmt.Fprintf(w, "**The run did not complete:**\n\n")
		for _, e := range r.errors {
			fmt.Fprintf(w, "- %s\n", e)
		}
		fmt.Fprintln(w)
	}
	if len(r.sizes) > 0 {
		fmt.Fprintf(w, "## Apply, change, plan, load\n\n")
		for _, s := range r.sizes {
			writeSize(w, s)
		}
	}
	if r.packet != nil {
		fmt.Fprintf(w, "## Per-packet cost\n\nEach configuration has a server namespace of its own, joined to one client "+
			"namespace by a veth pair; in it listeners run as the first and the last account's UID on their ports (their "+
			"replies pass the output chain's lookups (`meta skuid @tcp_moved`, then, in the rule of the UID's shard k, `meta skuid & 7 == k meta skuid != @tcp_moved meta skuid . tcp sport @tcp_ports_k`), new connections the input chain's zone "+
			"check). \"1 account\" is a table holding only the listener's account. One client process cycles through all "+
			"listeners in blocks of %d operations, so load from elsewhere on the machine hits every configuration alike. "+
			"Blocking system calls on one thread: connect+close is socket + connect + close, the round trip a 1-byte write and "+
			"its 1-byte echo over one connection.\n\n", packetBlock)
		writePacket(w, r.packet)
	}
	if r.guard != nil {
		writeGuard(w, r.guard)
	}
	if len(r.agents) > 0 {
		writeAgent(w, r.agents)
	}
	if r.views != nil {
		writeViews(w, r.views)
	}
	r.writeTargets(w)
	if r.gobench != "" {
		writeGoBench(w, r.gobench)
	}
}

// writeGoBench keeps the lines of `go test -bench -benchmem` output that say
// something: packages, benchmark results, failures.
func writeGoBench(w io.Writer, out string) {
	fmt.Fprintf(w, "## Go benchmarks\n\n`go test -run '^$' -bench . -benchmem ./...`, same machine, just before the run above (no root, no kernel):\n\n```\n")
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "pkg: "), strings.HasPrefix(line, "Benchmark"),
			strings.HasPrefix(line, "FAIL"), strings.HasPrefix(line, "--- FAIL"), strings.HasPrefix(line, "panic:"):
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintf(w, "```\n")
}

// writeTargets sums up the targets at the largest N measured.
func (r *report) writeTargets(w io.Writer) {
	if len(r.sizes) == 0 && r.packet == nil && r.guard == nil && len(r.agents) == 0 && r.views == nil {
		return
	}
	fmt.Fprintf(w, "## Targets\n\n")
	var big *sizeResult
	for _, s := range r.sizes {
		if big == nil || s.n > big.n {
			big = s
		}
	}
	line := func(what, status string) { fmt.Fprintf(w, "- %s: %s\n", what, status) }
	if big != nil {
		if big.n != 50000 {
			fmt.Fprintf(w, "The targets are set at 50,000 accounts; this run's largest N is %s.\n\n", thousands(int64(big.n)))
		} else {
			fmt.Fprintf(w, "At N = 50,000:\n\n")
		}
		rt := func(a, b *cell, limit float64) string {
			x, ok := ratio(a, b)
			if !ok {
				return "no data"
			}
			return fmt.Sprintf("%s (%s vs %s): %s", fmtRatio(x), fmtDur(a.median()), fmtDur(b.median()), verdict(x, ok, limit))
		}
		line("full apply ≤ 0.5× `nft -f` of the export", rt(&big.apply, &big.load, 0.5))
		line("one-account change ≤ 1.0× `nft -f` of the change by hand", rt(&big.change, &big.changeHand, 1.0))
		line("one-account change ≤ 0.05× a full reload", rt(&big.change, &big.reload, 0.05))
		var msgs []string
		var counts []int
		for _, s := range r.sizes {
			for _, x := range s.change.samples {
				counts = append(counts, x.msgs)
			}
			if len(s.change.samples) > 0 {
				lo, hi := s.change.samples[0].msgs, s.change.samples[0].msgs
				for _, x := range s.change.samples {
					lo, hi = min(lo, x.msgs), max(hi, x.msgs)
				}
				m := fmt.Sprint(lo)
				if hi != lo {
					m = fmt.Sprintf("%d–%d", lo, hi)
				}
				msgs = append(msgs, fmt.Sprintf("%s at %s", m, thousands(int64(s.n))))
			}
		}
		if len(counts) > 0 {
			st := "met"
			if slices.Max(counts) != slices.Min(counts) {
				st = "**missed**"
			}
			line("netlink messages of the one-account change do not grow with N", fmt.Sprintf("%s: %s", strings.Join(msgs, "; "), st))
		}
		for i := range big.sets {
			s := &big.sets[i]
			for _, c := range []struct {
				what string
				c    *cell
			}{{"changed", &s.changed}, {"removed", &s.removed}} {
				status := rt(c.c, &big.load, 1.0)
				if c.c.skipped != "" {
					status = "**missed**: " + c.c.skipped
				} else if c.c.err != "" {
					status = "**missed**: " + firstLine(c.c.err)
				}
				line(fmt.Sprintf("%s accounts %s ≤ 1.0× a full load", thousands(int64(s.k)), c.what), status)
			}
		}
		line("`plan` with nothing to change ≤ 0.5× `nft -j list table`", rt(&big.plan, &big.list, 0.5))
		if len(big.validateInc.samples) > 0 {
			line(fmt.Sprintf("load + compile of %s include files ≤ 1 s", thousands(int64(big.n))),
				fmt.Sprintf("%s: %s", fmtDur(big.validateInc.median()), secondVerdict(&big.validateInc)))
		}
		var over []string
		var peak int64
		cells := big.nftpolCells()
		names := make([]string, 0, len(cells))
		for k := range cells {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			c := cells[k]
			peak = max(peak, c.peakRSS())
			if c.peakRSS() > 50*1024 {
				over = append(over, fmt.Sprintf("%s %s", k, fmtRSS(c.peakRSS())))
			}
		}
		if peak > 0 {
			st := "met"
			if len(over) > 0 {
				st = "**missed**: " + strings.Join(over, ", ")
			}
			line("nftpol's peak RSS ≤ 50 MiB", fmt.Sprintf("peak %s; %s", fmtRSS(peak), st))
		}
	}
	if p := r.packet; p != nil {
		for _, acc := range []string{accFirst, accLast} {
			a, b := packetConfig{cfgLarge, acc}, packetConfig{cfgOne, acc}
			var parts []string
			worst, have := 0.0, true
			for _, x := range []struct {
				what string
				m    map[packetConfig][]opStats
			}{{"connect+close", p.connect}, {"round trip", p.rr}} {
				y, _, _, ok1 := roundStat(x.m[a], medianOf)
				z, _, _, ok2 := roundStat(x.m[b], medianOf)
				if !ok1 || !ok2 || z == 0 {
					have = false
					continue
				}
				parts = append(parts, fmt.Sprintf("%s %s (%.1f vs %.1f µs)", x.what, fmtRatio(y/z), y, z))
				worst = max(worst, y/z)
			}
			st := "met"
			switch {
			case !have:
				st = "no data"
			case worst > 1.10:
				st = "**missed**"
			}
			line(fmt.Sprintf("per packet at %s accounts within 10%% of 1 account, %s account (medians)", thousands(int64(p.n)), acc),
				fmt.Sprintf("%s: %s", strings.Join(parts, ", "), st))
		}
	}
	if g := r.guard; g != nil {
		for _, t := range g.targets() {
			line(t.what, t.status)
		}
	}
	agentTargets(r.agents, line)
	if r.views != nil {
		for _, t := range r.views.targets() {
			line(t.what, t.status)
		}
	}
	fmt.Fprintln(w)
}
