package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A measured process: its wall time from fork to reaping, and its peak
// resident set size as the kernel reports it to wait4 (ru_maxrss).
type sample struct {
	wall time.Duration
	cpu  time.Duration // user + system time
	rss  int64         // KiB
	// For nftpol apply -o json: the netlink messages of the batch and
	// where the kernel's content came from ("state" or "full").
	msgs int
	read string
}

// command is one process to run.
type command struct {
	args []string
	// netns runs the process inside /run/netns/<netns>. nft has no
	// --netns flag, so it is started from a thread that entered the
	// namespace: a child inherits the namespaces of the thread that forks
	// it. nftpol is given --netns instead, as an operator would.
	netns string
	// stdout captures standard output; otherwise it goes to /dev/null.
	stdout bool
	stdin  []byte
	// exits lists the exit codes that count as success besides 0.
	exits []int
	// timed: a measurement. It starts only once the machine is quiet
	// (see waitQuiet).
	timed bool
	// env adds NAME=value entries to the bench's own environment.
	env []string
}

// result is what a finished command left.
type result struct {
	sample
	out    []byte
	stderr []byte
	code   int
}

// run runs c to its end, bounded by the bench's per-process timeout, and
// measures it. A non-zero exit not listed in c.exits is an error that
// carries the process's standard error.
//
// The process is started by a small helper (this program's exec
// subcommand) that times it and reads its rusage. Measuring from here would
// be wrong for the RSS: Go starts a child with vfork, and exec records the
// hiwater RSS of the memory the child borrowed (this process's, which holds
// large policies) as the child's ru_maxrss. The helper is small, so its
// share is a floor of a few MiB.
func (b *bench) run(c command) (result, error) {
	ctx, cancel := context.WithTimeout(b.ctx, b.opts.opTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.self, append([]string{"exec", "-nice", fmt.Sprint(b.opts.nice), "--"}, c.args...)...)
	var out, errb bytes.Buffer
	if c.stdout {
		cmd.Stdout = &out
	}
	cmd.Stderr = &errb
	env := c.env
	if len(c.args) > 0 && c.args[0] == b.nftpol && b.bpfDir != "" {
		// The bind guard's pins are the host's, not a namespace's: an
		// nftpol with the default --bpf-dir and a policy without the
		// guard would remove a guard the host installed under
		// /sys/fs/bpf/nftpol/<table>, --netns or not. A --bpf-dir on
		// the command line wins over this.
		env = append([]string{"NFTPOL_BPF_DIR=" + b.bpfDir}, env...)
	}
	if len(env) > 0 {
		// The exec helper passes its environment on to the command.
		cmd.Env = append(os.Environ(), env...)
	}
	if c.stdin != nil {
		cmd.Stdin = bytes.NewReader(c.stdin)
	}
	if c.timed {
		b.waitQuiet()
	}
	rep, w, err := os.Pipe()
	if err != nil {
		return result{}, err
	}
	defer rep.Close()
	cmd.ExtraFiles = []*os.File{w}
	// The kernel finishes a netlink batch before a killed process dies,
	// so a kill cannot cut a transaction short; it only stops waiting.
	cmd.WaitDelay = 10 * time.Second

	err = startIn(cmd, c.netns)
	w.Close()
	if err != nil {
		return result{}, fmt.Errorf("%s: %w", shortCmd(c.args), err)
	}
	werr := cmd.Wait()
	var r result
	r.out = out.Bytes()
	r.stderr = errb.Bytes()
	var ej execReport
	data, rerr := io.ReadAll(rep)
	if ctx.Err() != nil && b.ctx.Err() == nil {
		return r, fmt.Errorf("%s: still running after %v, killed", shortCmd(c.args), b.opts.opTimeout)
	}
	if werr != nil || rerr != nil || json.Unmarshal(data, &ej) != nil {
		return r, fmt.Errorf("%s: %v %v\n%s", shortCmd(c.args), werr, rerr, strings.TrimSpace(errb.String()))
	}
	if ej.Err != "" {
		return r, fmt.Errorf("%s: %s", shortCmd(c.args), ej.Err)
	}
	r.wall, r.cpu, r.rss, r.code = time.Duration(ej.WallNS), time.Duration(ej.CPUNS), ej.MaxRSS, ej.Exit
	if r.code != 0 && !contains(c.exits, r.code) {
		return r, fmt.Errorf("%s: exit status %d\n%s", shortCmd(c.args), r.code, strings.TrimSpace(errb.String()))
	}
	return r, nil
}

// waitQuiet returns once the machine's CPUs were at most quietBusy busy
// over a sampling interval, or after opts.quietWait. Other work on the
// machine (and the kernel's deferred freeing after our own last operation)
// would otherwise land in a measurement at random; a median over 5 runs
// does not survive a minute of somebody else's load. Steal time counts as
// busy: the hypervisor gave the CPU to someone else.
func (b *bench) waitQuiet() {
	const quietBusy, interval = 0.10, 300 * time.Millisecond
	start := time.Now()
	prev, err := cpuTimes()
	if err != nil {
		return
	}
	logged := false
	var busy float64
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(interval):
		}
		cur, err := cpuTimes()
		if err != nil {
			return
		}
		total, idle := cur[0]-prev[0], cur[1]-prev[1]
		prev = cur
		if total == 0 {
			continue
		}
		busy = 1 - float64(idle)/float64(total)
		waited := time.Since(start)
		if busy <= quietBusy {
			if waited > 2*interval {
				b.quietWaited += waited
			}
			return
		}
		if waited >= b.opts.quietWait || b.quietWaited >= b.opts.quietBudget {
			b.logf("the machine is still %.0f%% busy after %s; measuring anyway", 100*busy, fmtDur(waited))
			b.quietWaited += waited
			b.notQuiet++
			return
		}
		if !logged && waited > 3*time.Second {
			b.logf("waiting for a quiet machine (CPUs %.0f%% busy)", 100*busy)
			logged = true
		}
	}
}

// cpuTimes returns the total and the idle (idle + iowait) jiffies of all
// CPUs from /proc/stat.
func cpuTimes() ([2]uint64, error) {
	var t [2]uint64
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return t, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, x := range f[1:] {
		if i >= 8 { // guest time is counted in user already
			break
		}
		v, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return t, err
		}
		t[0] += v
		if i == 3 || i == 4 {
			t[1] += v
		}
	}
	return t, nil
}

// execReport is what the exec helper tells about the process it ran.
type execReport struct {
	WallNS int64  `json:"wall_ns"`
	CPUNS  int64  `json:"cpu_ns"`
	MaxRSS int64  `json:"maxrss_kib"`
	Exit   int    `json:"exit"`
	Err    string `json:"error,omitempty"`
}

// execMain is the exec subcommand: run the command after "--" with this
// process's standard files and -nice, time it from fork to reaping, and
// write an execReport to file descriptor 3. The command dies with the
// helper.
func execMain(args []string) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	nice := fs.Int("nice", 0, "run the command at this niceness")
	if err := fs.Parse(args); err != nil {
		return err
	}
	args = fs.Args()
	if len(args) < 1 {
		return errors.New("usage: exec [-nice N] -- COMMAND [ARG...]")
	}
	report := os.NewFile(3, "report")
	if report == nil {
		return errors.New("no report file descriptor")
	}
	if *nice != 0 {
		// The command inherits it.
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, *nice); err != nil {
			return fmt.Errorf("setpriority %d: %w", *nice, err)
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig follows the thread that forks: keep it for good.
	runtime.LockOSThread()
	var rep execReport
	start := time.Now()
	err := cmd.Start()
	if err == nil {
		err = cmd.Wait()
	}
	rep.WallNS = int64(time.Since(start))
	if ps := cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			rep.MaxRSS = ru.Maxrss
		}
		rep.CPUNS = int64(ps.UserTime() + ps.SystemTime())
		rep.Exit = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			rep.Err = "killed by " + ws.Signal().String()
		}
	} else if err != nil {
		rep.Err = err.Error()
	}
	return json.NewEncoder(report).Encode(rep)
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// shortCmd names a command for an error message without its long paths.
func shortCmd(args []string) string {
	var parts []string
	for _, a := range args {
		if i := strings.LastIndexByte(a, '/'); i >= 0 && i < len(a)-1 {
			a = a[i+1:]
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// startIn starts cmd inside the network namespace netns ("" for the
// bench's own namespace). It refuses to start it anywhere else: if the
// namespace cannot be entered, nothing runs, so nft never reaches the
// host's ruleset.
func startIn(cmd *exec.Cmd, netns string) error {
	if netns == "" {
		return cmd.Start()
	}
	errc := make(chan error, 1)
	go func() {
		errc <- inNetns(netns, cmd.Start)
	}()
	return <-errc
}

// inNetns runs fn on a thread that is inside /run/netns/<name>, then puts
// the thread back. A thread that cannot be put back is never used again:
// it ends with the goroutine.
func inNetns(name string, fn func() error) error {
	if name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("bad namespace name %q", name)
	}
	runtime.LockOSThread()
	home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening the current network namespace: %w", err)
	}
	defer unix.Close(home)
	target, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	err = unix.Setns(target, unix.CLONE_NEWNET)
	unix.Close(target)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", name, err)
	}
	ferr := fn()
	if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return errors.Join(ferr, fmt.Errorf("leaving network namespace %s: %w", name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// setSysctl writes a sysctl of the network namespace netns (a key under
// /proc/sys/net, which shows the namespace of the thread that opens it).
func setSysctl(netns, key, value string) error {
	if !strings.HasPrefix(key, "net/") {
		return fmt.Errorf("sysctl %s: only per-namespace net/ keys", key)
	}
	return inNetns(netns, func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value+"\n"), 0)
	})
}

// Namespaces: every one the bench creates is named nftpol-bench-PID-ROLE,
// remembered, and deleted at the end, also after a failure or a signal.

func (b *bench) newNetns(role string) (string, error) {
	name := fmt.Sprintf("nftpol-bench-%d-%s", os.Getpid(), role)
	if _, err := b.run(command{args: []string{b.ip, "netns", "add", name}}); err != nil {
		return "", err
	}
	b.namespaces = append(b.namespaces, name)
	if _, err := b.run(command{args: []string{b.ip, "-n", name, "link", "set", "lo", "up"}}); err != nil {
		return "", err
	}
	return name, nil
}

func (b *bench) deleteNetns(name string) {
	for i, n := range b.namespaces {
		if n == name {
			b.namespaces = append(b.namespaces[:i], b.namespaces[i+1:]...)
			break
		}
	}
	// Not b.run: this also runs after the bench's context was cancelled.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, b.ip, "netns", "del", name).CombinedOutput(); err != nil {
		b.logf("deleting namespace %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
}

// nftIn runs nft with args inside netns.
func (b *bench) nftIn(netns string, stdin []byte, args ...string) (result, error) {
	if netns == "" {
		return result{}, errors.New("nft outside a bench namespace")
	}
	return b.run(command{args: append([]string{b.nft}, args...), netns: netns, stdin: stdin})
}

// nftMeasured runs nft with args inside netns, as a measurement.
func (b *bench) nftMeasured(netns string, args ...string) (result, error) {
	if netns == "" {
		return result{}, errors.New("nft outside a bench namespace")
	}
	return b.run(command{args: append([]string{b.nft}, args...), netns: netns, timed: true})
}

// dropTable deletes table inet <name> in netns if it is there: the first
// line creates it when absent, so the delete cannot fail, and both happen
// in one transaction.
func (b *bench) dropTable(netns, name string) error {
	script := fmt.Sprintf("table inet %s\ndelete table inet %s\n", name, name)
	_, err := b.nftIn(netns, []byte(script), "-f", "-")
	// Freeing a large set is partly deferred (RCU); let it finish before
	// the next measurement.
	time.Sleep(b.opts.settle)
	return err
}
