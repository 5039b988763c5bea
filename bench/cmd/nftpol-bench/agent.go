package main

// The agent section: `nftpol watch` on a policy of N include files, one per
// account, as config management writes them.
//
//  1. An include file replaced (written beside the include directory, then
//     renamed into it) until the kernel committed the agent's transaction,
//     against `nft -f` of the same element operations written by hand.
//  2. `nftpol apply` of the same change with the agent running (the CLI
//     forwards it; the agent follows no files here, --follow-policy=false,
//     so that the apply is the one doing it), the whole CLI process.
//  3. In monitor mode (--own-table=no), `nft flush ruleset` until the
//     agent's transaction that puts the table back committed.
//  4. The idle agent's RSS and its context switches over a quiet interval.
//
// The kernel's commits are timestamped independently of the agent: a
// netlink socket in the namespace joins the nf_tables multicast group, with
// a socket filter that lets only NEWGEN messages through (a full table's
// element notifications would overflow it), and records when each
// generation arrived and which process committed it.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	nfnlgrpNftables  = 7  // NFNLGRP_NFTABLES
	nfnlSubsysNftabl = 10 // NFNL_SUBSYS_NFTABLES
	nftMsgNewgen     = 15 // NFT_MSG_NEWGEN
	nftaGenProcPID   = 2  // NFTA_GEN_PROC_PID
	agentIdleFor     = 10 * time.Second
	healGroup        = 4 // heals in a row before a pause: the agent backs off from the 6th heal less than 10 s apart
	healPause        = 11 * time.Second
	healPoll         = 500 * time.Microsecond // the heal's generation poll
)

// genEvent is one committed nf_tables generation.
type genEvent struct {
	at  time.Time
	pid int
}

// genMonitor records the NEWGEN messages of one namespace.
type genMonitor struct {
	fd   int
	mu   sync.Mutex
	gens []genEvent
	lost int // ENOBUFS
	stop chan struct{}
	done chan struct{}
}

// netfilterSocket opens a netlink socket of the netfilter family in the
// namespace netns.
func netfilterSocket(netns string) (int, error) {
	fd := -1
	err := inNetns(netns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	return fd, err
}

// genAttr returns the big-endian u32 attribute typ of a NEWGEN message's
// payload (after its nfgenmsg header).
func genAttr(data []byte, typ uint16) (uint32, bool) {
	if len(data) < 4 {
		return 0, false
	}
	for a := data[4:]; len(a) >= 4; {
		l := int(binary.NativeEndian.Uint16(a[0:2]))
		if l < 4 || l > len(a) {
			break
		}
		if binary.NativeEndian.Uint16(a[2:4])&0x3fff == typ && l >= 8 {
			return binary.BigEndian.Uint32(a[4:8]), true
		}
		a = a[min(len(a), (l+3)&^3):]
	}
	return 0, false
}

func openGenMonitor(netns string) (*genMonitor, error) {
	fd, err := netfilterSocket(netns)
	if err != nil {
		return nil, fmt.Errorf("nf_tables monitor socket: %w", err)
	}
	fail := func(what string, err error) (*genMonitor, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("nf_tables monitor socket: %s: %w", what, err)
	}
	// Only NEWGEN: nlmsg_type (host order) at offset 4, which a socket
	// filter loads in network order.
	var t [2]byte
	binary.NativeEndian.PutUint16(t[:], nfnlSubsysNftabl<<8|nftMsgNewgen)
	want := uint32(binary.BigEndian.Uint16(t[:]))
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 4},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: want},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		return fail("SO_ATTACH_FILTER", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20); err != nil {
		return fail("SO_RCVBUFFORCE", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, nfnlgrpNftables); err != nil {
		return fail("NETLINK_ADD_MEMBERSHIP", err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000}); err != nil {
		return fail("SO_RCVTIMEO", err)
	}
	m := &genMonitor{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	go m.run()
	return m, nil
}

func (m *genMonitor) run() {
	defer close(m.done)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-m.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(m.fd, buf, 0)
		at := time.Now()
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			m.mu.Lock()
			m.lost++
			m.mu.Unlock()
			continue
		case err != nil:
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, msg := range msgs {
			if msg.Header.Type != nfnlSubsysNftabl<<8|nftMsgNewgen || len(msg.Data) < 4 {
				continue
			}
			ev := genEvent{at: at}
			if pid, ok := genAttr(msg.Data, nftaGenProcPID); ok {
				ev.pid = int(pid)
			}
			m.mu.Lock()
			m.gens = append(m.gens, ev)
			m.mu.Unlock()
		}
	}
}

func (m *genMonitor) close() {
	close(m.stop)
	<-m.done
	unix.Close(m.fd)
}

// after returns the generations committed after t by pid (0: by any process
// but notPID).
func (m *genMonitor) after(t time.Time, pid, notPID int) []genEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []genEvent
	for _, g := range m.gens {
		if g.at.After(t) && (pid == 0 && !threadOf(g.pid, notPID) || pid != 0 && threadOf(g.pid, pid)) {
			out = append(out, g)
		}
	}
	return out
}

// threadOf says whether tid is a thread of process pid: the kernel names
// the committing thread in NEWGEN (task_pid_nr), which in a Go program is
// rarely the main one.
func threadOf(tid, pid int) bool {
	if tid == pid {
		return true
	}
	if tid <= 0 || pid <= 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d/task/%d", pid, tid))
	return err == nil
}

// waitGen waits up to within for a generation that after(t, pid, notPID)
// returns, and returns the last of them.
func (m *genMonitor) waitGen(t time.Time, pid, notPID int, within time.Duration) (genEvent, error) {
	deadline := time.Now().Add(within)
	for {
		if gs := m.after(t, pid, notPID); len(gs) > 0 {
			return gs[len(gs)-1], nil
		}
		if time.Now().After(deadline) {
			return genEvent{}, fmt.Errorf("no nf_tables generation by pid %d within %s", pid, within)
		}
		time.Sleep(time.Millisecond)
	}
}

// agentRun is a running `nftpol watch`.
type agentRun struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{}
	err  error

	mu    sync.Mutex
	lines []map[string]any
	raw   strings.Builder
}

// startAgent starts nftpol watch at the bench's niceness and waits for its
// "ready".
func (b *bench) startAgent(config, netns, stateDir, runDir string, extra ...string) (*agentRun, error) {
	args := append([]string{"--config", config, "--netns", netns, "--state-dir", stateDir, "--run-dir", runDir, "watch"}, extra...)
	cmd := exec.Command(b.nftpol, args...)
	cmd.Env = append(os.Environ(), "NFTPOL_BPF_DIR="+b.bpfDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	// The child takes the niceness of the thread that forks it.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread ends with the goroutine: Pdeathsig follows it, so keep it
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, b.opts.nice); err != nil {
			errc <- err
			return
		}
		errc <- cmd.Start()
		<-b.ctx.Done()
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("starting nftpol watch: %w", err)
	}
	a := &agentRun{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<16), 1<<22)
		for sc.Scan() {
			line := sc.Text()
			var m map[string]any
			a.mu.Lock()
			a.raw.WriteString(line + "\n")
			if json.Unmarshal([]byte(line), &m) == nil {
				a.lines = append(a.lines, m)
			}
			a.mu.Unlock()
		}
		if err := sc.Err(); err != nil {
			// A line too long to scan: say so, and keep draining the
			// pipe, or the agent blocks writing to it for good.
			a.mu.Lock()
			a.raw.WriteString("<<reading the agent's log stopped: " + err.Error() + ">>\n")
			a.mu.Unlock()
			_, _ = io.Copy(io.Discard, stderr)
		}
		a.err = cmd.Wait()
		close(a.done)
	}()
	if _, err := a.waitLog(0, 5*time.Minute, "ready"); err != nil {
		a.stop()
		return nil, err
	}
	return a, nil
}

// count is the number of log lines so far.
func (a *agentRun) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.lines)
}

// waitLog waits for a line with msg from the from-th line on.
func (a *agentRun) waitLog(from int, within time.Duration, msg string) (map[string]any, error) {
	deadline := time.Now().Add(within)
	for {
		a.mu.Lock()
		for i := from; i < len(a.lines); i++ {
			if a.lines[i]["msg"] == msg {
				m := a.lines[i]
				a.mu.Unlock()
				return m, nil
			}
		}
		a.mu.Unlock()
		select {
		case <-a.done:
			return nil, fmt.Errorf("nftpol watch ended (%v) before logging %q:\n%s", a.err, msg, a.tail())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nftpol watch did not log %q within %s:\n%s", msg, within, a.tail())
		}
		time.Sleep(time.Millisecond)
	}
}

func (a *agentRun) tail() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.raw.String()
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return strings.TrimSpace(s)
}

// stop ends the agent with SIGTERM, then SIGKILL.
func (a *agentRun) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// procStatus reads fields of /proc/PID/status (values in kB where they
// have a unit), and the context switches summed over all threads.
func procStatus(pid int) (rssKiB, hwmKiB int64, switches int64, threads int, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		x, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			rssKiB = x
		case "VmHWM":
			hwmKiB = x
		}
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return
	}
	for _, t := range tasks {
		d, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		threads++
		for _, line := range strings.Split(string(d), "\n") {
			k, v, _ := strings.Cut(line, ":")
			if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
				x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				switches += x
			}
		}
	}
	return
}

// procCPU is the process's user + system time from /proc/PID/stat.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
}

// The positions of the changed account in its set, and the protocols.
var (
	agentPositions = []string{"first", "middle", "last"}
	agentProtocols = []string{"tcp+udp", "tcp"}
)

// agentCombo is the measurements of one policy shape and position.
type agentCombo struct {
	protocols, position string
	follow, hand, apply cell
	handText            string
	logTook             []float64       // the agent's took_ms of the followed changes
	renames             []time.Duration // how long each followed change's rename took
	servedTook          []float64       // of the served applies
}

type idleResult struct {
	rss, hwm  int64 // KiB
	switches  int64 // over agentIdleFor, all threads
	threads   int
	cpu       time.Duration
	err       string
	protocols string
}

type agentResult struct {
	n      int
	combos []*agentCombo
	idle   *idleResult
	heal   cell // monitor mode: flush ruleset -> back
	healN  int
	healP  string // the protocols of the healed policy
	lost   int    // NEWGEN messages the monitor socket lost
	errs   []string
}

// agentHeader is the main file's settings for a protocol set.
func agentHeader(protocols string) string {
	p := "[tcp, udp]"
	if protocols == "tcp" {
		p = "[tcp]"
	}
	return "# generated by nftpol-bench\nzone: \"10000-65000\"\nmin_uid: 1000\nprotocols: " + p + "\n"
}

// agentEdit is the change of one account at a position: the last account
// widened to 11 ports (the change section's change), the first and the
// middle one moved to 11 free ports above all accounts'.
func agentEdit(n int, position string) (int, edit) {
	switch position {
	case "first", "middle":
		i := 0
		if position == "middle" {
			i = n / 2
		}
		p := accountPort(n + 20)
		return i, edit{ports: map[int]string{i: fmt.Sprintf("%d-%d", p, p+10)}}
	}
	return n - 1, widenLast(n)
}

// agentPolicy is one protocol set's files at n: the include layout the
// agent follows, the single files nft's reference is computed from, and
// the changed account files.
type agentPolicy struct {
	dir, main, inc, staging string
	p0                      string // single file, for nft's namespace
	export                  string
}

func (b *bench) writeAgentPolicy(dir string, n int, protocols string) (*agentPolicy, error) {
	ap := &agentPolicy{dir: dir, inc: filepath.Join(dir, "policies.d"), staging: filepath.Join(dir, "staging")}
	for _, d := range []string{ap.inc, ap.staging} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, err
		}
	}
	for i := range n {
		data := "accounts:\n" + accountLine(i, edit{})
		if err := os.WriteFile(filepath.Join(ap.inc, accountName(i)+".yaml"), []byte(data), 0o644); err != nil {
			return nil, err
		}
	}
	ap.main = filepath.Join(dir, "nftpol.yaml")
	if err := os.WriteFile(ap.main, []byte(agentHeader(protocols)+"include: policies.d\n"), 0o644); err != nil {
		return nil, err
	}
	ap.p0 = filepath.Join(dir, "p0.yaml")
	if err := writeAgentSingle(ap.p0, n, protocols, edit{}); err != nil {
		return nil, err
	}
	res, err := b.run(command{args: []string{b.nftpol, "--config", ap.p0, "export"}, stdout: true})
	if err != nil {
		return nil, err
	}
	ap.export = string(res.out)
	return ap, nil
}

func writeAgentSingle(path string, n int, protocols string, e edit) error {
	var sb strings.Builder
	sb.WriteString(agentHeader(protocols) + "accounts:\n")
	for i := range n {
		sb.WriteString(accountLine(i, e))
	}
	return os.WriteFile(path, []byte(sb.String()), 0o644)
}

// put replaces account i's include file with content, by a rename from
// the staging directory, and returns when the rename began and when it
// returned: the file is in the include directory from then on.
func (ap *agentPolicy) put(i int, content string) (began, done time.Time, err error) {
	tmp := filepath.Join(ap.staging, accountName(i)+".yaml")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return time.Time{}, time.Time{}, err
	}
	return renameUnpreempted(tmp, filepath.Join(ap.inc, accountName(i)+".yaml"))
}

// renameUnpreempted renames from to to on a thread of its own that runs
// SCHED_FIFO, and returns when the rename began and when it returned. The
// agent wakes as soon as the rename queues its inotify event, before the
// rename returns: at normal priority the agent, at the measured processes'
// niceness, could keep the renaming thread off the CPU while it works, and
// "returned" would come after the agent's commit. A FIFO thread is not
// preempted by them. The goroutine ends with its thread locked, so the
// runtime ends the thread too: no FIFO thread goes back to Go's pool.
func renameUnpreempted(from, to string) (began, done time.Time, err error) {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		runtime.LockOSThread()
		if attr, err := unix.SchedGetAttr(0, 0); err == nil {
			attr.Policy, attr.Priority, attr.Nice = unix.SCHED_FIFO, 1, 0
			_ = unix.SchedSetAttr(0, attr, 0) // best effort: without it, "returned" may come late
		}
		began = time.Now()
		err = os.Rename(from, to)
		done = time.Now()
	}()
	<-ch
	return began, done, err
}

func (b *bench) measureAgent(n int) (*agentResult, error) {
	res := &agentResult{n: n}
	dir := filepath.Join(b.work, fmt.Sprintf("agent-%d", n))
	nsB, err := b.newNetns(fmt.Sprintf("a%d-nft", n))
	if err != nil {
		return res, err
	}
	defer b.deleteNetns(nsB)
	for _, protocols := range agentProtocols {
		var positions []string
		for _, pos := range agentPositions {
			if b.opts.agentCombos == nil || b.opts.agentCombos[protocols+":"+pos] {
				positions = append(positions, pos)
			}
		}
		if len(positions) == 0 {
			continue
		}
		b.logf("N=%d agent, %s: writing %d include files", n, protocols, n)
		ap, err := b.writeAgentPolicy(filepath.Join(dir, strings.ReplaceAll(protocols, "+", "-")), n, protocols)
		if err != nil {
			return res, err
		}
		var combos []*agentCombo
		for _, pos := range positions {
			c := &agentCombo{protocols: protocols, position: pos}
			combos = append(combos, c)
			res.combos = append(res.combos, c)
		}
		if err := b.agentReference(ap, n, nsB, combos); err != nil {
			return res, err
		}
		first := res.idle == nil
		if err := b.agentFollow(ap, n, combos, res, first); err != nil {
			return res, err
		}
		if err := b.agentApply(ap, n, combos); err != nil {
			return res, err
		}
		if first {
			res.healP = protocols
			// A heal that does not come is a result, not the end of
			// the measurements at n.
			if err := b.agentHeal(ap, n, res); err != nil {
				if b.ctx.Err() != nil {
					return res, err
				}
				b.logf("N=%d monitor mode: %v", n, err)
			}
		}
		if err := os.RemoveAll(ap.dir); err != nil {
			return res, err
		}
	}
	return res, nil
}

// agentReference: nft -f of each position's change by hand, and back, in
// nft's namespace holding nftpol's table of p0.
func (b *bench) agentReference(ap *agentPolicy, n int, nsB string, combos []*agentCombo) error {
	if err := b.dropTable(nsB, b.table); err != nil {
		return err
	}
	st := filepath.Join(ap.dir, "state-nft-ns")
	if _, err := b.run(command{args: []string{b.nftpol, "--config", ap.p0, "--netns", nsB, "--state-dir", st, "apply"}}); err != nil {
		return err
	}
	for _, c := range combos {
		_, e := agentEdit(n, c.position)
		p1 := filepath.Join(ap.dir, "p1-"+c.position+".yaml")
		if err := writeAgentSingle(p1, n, c.protocols, e); err != nil {
			return err
		}
		r1, err := b.run(command{args: []string{b.nftpol, "--config", p1, "export"}, stdout: true})
		if err != nil {
			return err
		}
		c01, err := handChange(b.table, ap.export, string(r1.out))
		if err != nil {
			return err
		}
		c10, err := handChange(b.table, string(r1.out), ap.export)
		if err != nil {
			return err
		}
		c.handText = c01
		f01, f10 := filepath.Join(ap.dir, "c01-"+c.position+".nft"), filepath.Join(ap.dir, "c10-"+c.position+".nft")
		if err := os.WriteFile(f01, []byte(c01), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(f10, []byte(c10), 0o644); err != nil {
			return err
		}
		for run := 1; run <= b.opts.runs; run++ {
			for _, f := range []string{f01, f10} {
				s, err := b.nftMeasured(nsB, "-f", f)
				if err != nil {
					c.hand.fail(err)
					return err
				}
				c.hand.add(s.sample)
			}
		}
		b.logf("N=%d agent %s %s: nft -f by hand %s", n, c.protocols, c.position, fmtDur(c.hand.median()))
	}
	return nil
}

// agentRunBase is where the agents' run directories go: the views they
// publish after each commit are files, which on a disk cost far more than
// on the tmpfs /run is on a server. /dev/shm is a tmpfs the bench only
// adds a directory to (and removes it at the end); elsewhere, the work
// directory.
func (b *bench) agentRunBase() (string, error) {
	if b.runBase != "" {
		return b.runBase, nil
	}
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC {
		d, err := os.MkdirTemp("/dev/shm", "nftpol-bench-")
		if err != nil {
			return "", err
		}
		b.runBase = d
	} else {
		b.logf("/dev/shm is no tmpfs: the agents' run directories are on the work directory's file system")
		b.runBase = filepath.Join(b.work, "run")
	}
	return b.runBase, os.Chmod(b.runBase, 0o755)
}

// agentNetns makes a fresh namespace and state for one agent.
func (b *bench) agentNetns(ap *agentPolicy, role string) (ns, st, rd string, err error) {
	if ns, err = b.newNetns(role); err != nil {
		return
	}
	st = filepath.Join(ap.dir, "state-"+role)
	base, err := b.agentRunBase()
	if err != nil {
		return
	}
	rd = filepath.Join(base, role)
	for _, d := range []string{st, rd} {
		if err = os.RemoveAll(d); err != nil {
			return
		}
	}
	err = os.MkdirAll(rd, 0o755)
	return
}

// agentFollow: include files renamed in, until the agent's commit; then
// the idle agent.
func (b *bench) agentFollow(ap *agentPolicy, n int, combos []*agentCombo, res *agentResult, idle bool) error {
	ns, st, rd, err := b.agentNetns(ap, fmt.Sprintf("a%d-follow", n))
	if err != nil {
		return err
	}
	defer b.deleteNetns(ns)
	b.logf("N=%d agent %s: starting nftpol watch", n, combos[0].protocols)
	ag, err := b.startAgent(ap.main, ns, st, rd)
	if err != nil {
		return err
	}
	defer ag.stop()
	mon, err := openGenMonitor(ns)
	if err != nil {
		return err
	}
	defer func() {
		mon.mu.Lock()
		res.lost += mon.lost
		mon.mu.Unlock()
		mon.close()
	}()
	for _, c := range combos {
		i, e := agentEdit(n, c.position)
		changed, orig := "accounts:\n"+accountLine(i, e), "accounts:\n"+accountLine(i, edit{})
		for run := 1; run <= b.opts.runs; run++ {
			for _, content := range []string{changed, orig} {
				b.waitQuiet()
				from := ag.count()
				cpu0 := procCPU(ag.pid)
				t0, t1, err := ap.put(i, content)
				if err != nil {
					return err
				}
				c.renames = append(c.renames, t1.Sub(t0))
				line, err := ag.waitLog(from, time.Minute, "applied")
				if err != nil {
					c.follow.fail(err)
					return err
				}
				g, err := mon.waitGen(t0, ag.pid, 0, 5*time.Second)
				if err != nil {
					c.follow.fail(err)
					return err
				}
				c.follow.add(sample{wall: g.at.Sub(t1), cpu: procCPU(ag.pid) - cpu0})
				if ms, ok := line["took_ms"].(float64); ok {
					c.logTook = append(c.logTook, ms)
				}
				// Let the notification of the next change not be confused
				// with this one's.
				time.Sleep(20 * time.Millisecond)
			}
		}
		b.logf("N=%d agent %s %s: include file renamed -> commit %s (nft by hand %s)", n, c.protocols, c.position,
			fmtDur(c.follow.median()), fmtDur(c.hand.median()))
	}
	if idle {
		res.idle = b.agentIdle(ag, combos[0].protocols)
	}
	return nil
}

// agentIdle reads the agent's RSS and counts its context switches while
// nothing happens.
func (b *bench) agentIdle(ag *agentRun, protocols string) *idleResult {
	r := &idleResult{protocols: protocols}
	// Past the last change's aftermath: the agent gives the memory of a
	// burst of work back 2 s after it (agent's settleAfter).
	time.Sleep(4 * time.Second)
	_, _, sw0, _, err := procStatus(ag.pid)
	if err != nil {
		r.err = err.Error()
		return r
	}
	cpu0 := procCPU(ag.pid)
	select {
	case <-b.ctx.Done():
		r.err = "interrupted"
		return r
	case <-time.After(agentIdleFor):
	}
	rss, hwm, sw1, threads, err := procStatus(ag.pid)
	if err != nil {
		r.err = err.Error()
		return r
	}
	r.rss, r.hwm, r.switches, r.threads, r.cpu = rss, hwm, sw1-sw0, threads, procCPU(ag.pid)-cpu0
	b.logf("agent idle: VmRSS %s, VmHWM %s, %d context switches in %s over %d threads", fmtRSS(rss), fmtRSS(hwm), r.switches, agentIdleFor, threads)
	return r
}

// agentApply: nftpol apply of each change with an agent running that
// follows no files.
func (b *bench) agentApply(ap *agentPolicy, n int, combos []*agentCombo) error {
	ns, st, rd, err := b.agentNetns(ap, fmt.Sprintf("a%d-apply", n))
	if err != nil {
		return err
	}
	defer b.deleteNetns(ns)
	ag, err := b.startAgent(ap.main, ns, st, rd, "--follow-policy=false")
	if err != nil {
		return err
	}
	defer ag.stop()
	for _, c := range combos {
		i, e := agentEdit(n, c.position)
		changed, orig := "accounts:\n"+accountLine(i, e), "accounts:\n"+accountLine(i, edit{})
		for run := 1; run <= b.opts.runs; run++ {
			for _, content := range []string{changed, orig} {
				if _, _, err := ap.put(i, content); err != nil {
					return err
				}
				from := ag.count()
				s, err := b.run(command{args: []string{b.nftpol, "--config", ap.main, "--netns", ns, "--state-dir", st, "apply"}, timed: true})
				if err != nil {
					c.apply.fail(err)
					return err
				}
				c.apply.add(s.sample)
				if line, err := ag.waitLog(from, 5*time.Second, "served"); err == nil {
					if ms, ok := line["took_ms"].(float64); ok {
						c.servedTook = append(c.servedTook, ms)
					}
				} else {
					c.apply.fail(errors.New("the agent did not serve the apply: it ran in the CLI"))
					return err
				}
			}
		}
		b.logf("N=%d agent %s %s: nftpol apply through the agent %s (nft by hand %s)", n, c.protocols, c.position,
			fmtDur(c.apply.median()), fmtDur(c.hand.median()))
	}
	return nil
}

// agentHeal: monitor mode, nft flush ruleset until the table is back.
// Heals come in groups with a pause between them, so that the agent does
// not take them for a fight (it backs off then).
func (b *bench) agentHeal(ap *agentPolicy, n int, res *agentResult) error {
	ns, st, rd, err := b.agentNetns(ap, fmt.Sprintf("a%d-monitor", n))
	if err != nil {
		return err
	}
	defer b.deleteNetns(ns)
	ag, err := b.startAgent(ap.main, ns, st, rd, "--own-table=no")
	if err != nil {
		return err
	}
	defer ag.stop()
	poll, err := openGenPoller(ns)
	if err != nil {
		return err
	}
	defer poll.close()
	res.healN = n
	heals := max(2*b.opts.runs, healGroup)
	for k := range heals {
		if k > 0 && k%healGroup == 0 {
			time.Sleep(healPause)
		}
		b.waitQuiet()
		from := ag.count()
		cpu0 := procCPU(ag.pid)
		if err := poll.start(healPoll); err != nil {
			res.heal.fail(err)
			return err
		}
		if _, err := b.nftIn(ns, nil, "flush", "ruleset"); err != nil {
			poll.end()
			res.heal.fail(err)
			return err
		}
		_, err := ag.waitLog(from, 3*time.Minute, "healed a change to the table by somebody else")
		time.Sleep(5 * healPoll) // the last commit's generation seen
		poll.end()
		if err != nil {
			res.heal.fail(err)
			return err
		}
		// Nobody but nft and the agent commits in the namespace: the
		// first change of generation is the flush, the last one before
		// the agent said it healed is its commit that put the table back.
		seen, err := poll.changes()
		if err == nil && len(seen) < 2 {
			err = fmt.Errorf("%d generations seen during a flush and its heal, want 2 or more", len(seen))
		}
		if err != nil {
			res.heal.fail(err)
			return err
		}
		res.heal.add(sample{wall: seen[len(seen)-1].Sub(seen[0]), cpu: procCPU(ag.pid) - cpu0})
		b.logf("N=%d monitor mode heal %d/%d: %s", n, k+1, heals, fmtDur(res.heal.last()))
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// writeAgent writes the agent section.
func writeAgent(w io.Writer, rs []*agentResult) {
	fmt.Fprintf(w, "## The agent (`nftpol watch`)\n\n")
	fmt.Fprintf(w, "The agent follows a main file and an include directory with one file per account (the policies above, "+
		"TCP+UDP as everywhere else, and the same accounts with `protocols: [tcp]`). The changed account is the first, the middle "+
		"or the last of its set: the last widened to 11 ports (the change section's change), the first and the middle one moved to "+
		"11 free ports above everybody's. **Include file → commit**: the account's file written beside the include directory and "+
		"renamed into it, from the moment the rename returned (the new file is in the include directory, as the reference's input "+
		"file is in place before `nft -f` starts) until the kernel committed the agent's transaction; the commit is timestamped by a "+
		"netlink socket in the namespace on the nf_tables multicast group (NEWGEN messages of the agent's PID), not by the agent. In "+
		"brackets: the agent's own `took_ms` (from compiling the policy it read to the end of its apply, which goes on after the "+
		"commit: state and views written), and the median time the rename itself took (the file system's, not counted). **apply through the agent**: the whole `nftpol apply` process, fork to exit, which "+
		"forwards to an agent started with `--follow-policy=false` (so that the apply, not the file watch, makes the change); the "+
		"agent's `served` took_ms in brackets. The reference is `nft -f` of the same element operations written by hand, in a "+
		"namespace of its own holding the same table; each run changes the account and changes it back. \"cpu\" is the agent's "+
		"user + system time from the rename to its log line (/proc/PID/stat, 10 ms ticks), in ms. The agent runs at the measured processes' niceness, "+
		"with its run directory (the views it publishes after each commit) on a tmpfs, as /run is on a server.\n\n")
	for _, r := range rs {
		fmt.Fprintf(w, "### N = %s accounts\n\n", thousands(int64(r.n)))
		var rows [][]string
		for _, c := range r.combos {
			for _, x := range []struct {
				what  string
				c     *cell
				took  []float64
				limit float64
			}{{"include file → commit", &c.follow, c.logTook, 0.2}, {"`nftpol apply` through the agent", &c.apply, c.servedTook, 0.5}} {
				t := x.c.time()
				switch {
				case len(x.took) > 0 && x.c == &c.follow && len(c.renames) > 0:
					t += fmt.Sprintf(" [agent %.1f ms; rename %s]", medianF64(x.took), fmtDur(medianDur(c.renames)))
				case len(x.took) > 0:
					t += fmt.Sprintf(" [agent %.1f ms]", medianF64(x.took))
				}
				rt, ok := ratio(x.c, &c.hand)
				rs, tgt := "", fmt.Sprintf("≤ %.1f×: %s", x.limit, verdict(rt, ok, x.limit))
				if ok {
					rs = fmtRatio(rt)
				}
				rows = append(rows, []string{x.what, c.protocols, c.position, t, c.hand.time(), rs, tgt})
			}
		}
		mdTable(w, []string{"operation", "protocols", "changed account", "nftpol", "`nft -f` by hand", "ratio", "target"}, rows)
		if r.healN > 0 || len(r.errs) > 0 {
			writeHeal(w, r)
		}
		if r.idle != nil {
			writeIdle(w, r)
		}
		if r.lost > 0 {
			fmt.Fprintf(w, "The monitor socket lost messages %d times (ENOBUFS); each timed change still had its NEWGEN.\n\n", r.lost)
		}
		for _, e := range r.errs {
			fmt.Fprintf(w, "- failed: %s\n", e)
		}
	}
}

func writeHeal(w io.Writer, r *agentResult) {
	h := &r.heal
	if len(h.samples) == 0 {
		if h.err != "" {
			fmt.Fprintf(w, "Monitor mode: failed: %s\n\n", firstLine(h.err))
		}
		return
	}
	ws := h.walls()
	med, worst := h.median(), ws[len(ws)-1]
	st := "met"
	switch {
	case med > 50*time.Millisecond && worst > 200*time.Millisecond:
		st = "**missed** (median and worst)"
	case med > 50*time.Millisecond:
		st = "**missed** (median)"
	case worst > 200*time.Millisecond:
		st = "**missed** (worst)"
	}
	fmt.Fprintf(w, "Monitor mode (`--own-table=no`, %s): `nft flush ruleset` in the namespace, from the flush's commit "+
		"to the commit of the agent's transaction that put the table back: median %s, worst %s over %d heals (in groups of %d, %s apart, "+
		"so the agent does not back off as from a fight; agent cpu %s median). Target median ≤ 50 ms, worst ≤ 200 ms: %s. "+
		"The commits are timestamped by asking the namespace's generation every %s (NFT_MSG_GETGEN), not by a NEWGEN listener: "+
		"while anybody listens to nf_tables notifications the kernel builds one for each element the heal adds, "+
		"which the agent avoids by leaving the group for its own commits.\n\n",
		r.healP, fmtDur(med), fmtDur(worst), len(ws), healGroup, healPause, fmtDur(h.cpuMedian()), st, healPoll)
}

func writeIdle(w io.Writer, r *agentResult) {
	i := r.idle
	if i.err != "" {
		fmt.Fprintf(w, "Idle agent: failed: %s\n\n", i.err)
		return
	}
	rssSt := "met"
	if i.rss > 60*1024 {
		rssSt = "**missed**"
	}
	perMin := float64(i.switches) * float64(time.Minute) / float64(agentIdleFor)
	wakeSt := "met"
	if i.switches > 1 {
		wakeSt = "**missed**"
	}
	fmt.Fprintf(w, "Idle agent (%s, following the files, after the changes above): VmRSS %s (VmHWM %s; target ≤ 60 MiB: %s); "+
		"%d context switches over %s idle, all %d threads (/proc/PID/task/*/status, voluntary + nonvoluntary; ~%.0f a minute), cpu %s "+
		"(target: no wake-ups more often than once a minute: %s).\n\n",
		i.protocols, fmtRSS(i.rss), fmtRSS(i.hwm), rssSt, i.switches, agentIdleFor, i.threads, perMin, fmtDur(i.cpu), wakeSt)
}

func medianF64(xs []float64) float64 {
	m, _ := medianF(xs)
	return m
}

// agentTargets are the target lines of the agent section, at the largest N.
func agentTargets(rs []*agentResult, line func(what, status string)) {
	var big *agentResult
	for _, r := range rs {
		if big == nil || r.n > big.n {
			big = r
		}
	}
	if big == nil {
		return
	}
	at := thousands(int64(big.n))
	for _, c := range big.combos {
		for _, x := range []struct {
			what  string
			c     *cell
			limit float64
		}{{"include file → commit", &c.follow, 0.2}, {"`nftpol apply` through the agent", &c.apply, 0.5}} {
			rt, ok := ratio(x.c, &c.hand)
			st := "no data"
			if ok {
				st = fmt.Sprintf("%s (%s vs %s): %s", fmtRatio(rt), fmtDur(x.c.median()), fmtDur(c.hand.median()), verdict(rt, ok, x.limit))
			}
			line(fmt.Sprintf("agent at %s, %s, %s account: %s ≤ %.1f× `nft -f` by hand", at, c.protocols, c.position, x.what, x.limit), st)
		}
	}
	if big.healN > 0 && len(big.heal.samples) > 0 {
		ws := big.heal.walls()
		st := "met"
		if big.heal.median() > 50*time.Millisecond || ws[len(ws)-1] > 200*time.Millisecond {
			st = "**missed**"
		}
		line(fmt.Sprintf("monitor mode at %s: flush ruleset → table back, median ≤ 50 ms, worst ≤ 200 ms", at),
			fmt.Sprintf("median %s, worst %s: %s", fmtDur(big.heal.median()), fmtDur(ws[len(ws)-1]), st))
	}
	if i := big.idle; i != nil && i.err == "" {
		st := "met"
		if i.rss > 60*1024 {
			st = "**missed**"
		}
		line(fmt.Sprintf("idle agent at %s: VmRSS ≤ 60 MiB", at), fmt.Sprintf("%s: %s", fmtRSS(i.rss), st))
		st = "met"
		if i.switches > 1 {
			st = "**missed**"
		}
		line(fmt.Sprintf("idle agent at %s: no wake-ups more often than once a minute", at),
			fmt.Sprintf("%d context switches in %s: %s", i.switches, agentIdleFor, st))
	}
}
