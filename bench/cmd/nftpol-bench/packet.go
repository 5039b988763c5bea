package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Per-packet cost. Each configuration has a server namespace of its own:
// no table, conntrack only, nftpol with only the first account, nftpol
// with only the last account, nftpol with N accounts. One client namespace
// ("outside") is joined to each of them by a veth pair. In every server
// namespace listeners run as the first and the last account's UID on their
// own ports. One client process then cycles through all listeners in small
// blocks, so that whatever else the machine does at a moment hits every
// configuration alike: TCP connections (socket, connect, close) and 1-byte
// request/response round trips over one connection per listener. Blocking
// system calls on one thread: what is timed is the kernel path.
//
// Every reply from a listener leaves through the output chain and its
// lookups (`meta skuid @tcp_moved`, then in the rule of the UID's shard k
// `meta skuid & 7 == k meta skuid != @tcp_moved meta skuid . tcp sport
// @tcp_ports_k`); every new connection passes
// the input chain's zone check.

// opStats summarises one listener's operations of one kind, in nanoseconds.
type opStats struct {
	N      int     `json:"n"`
	Mean   float64 `json:"mean_ns"`
	Median float64 `json:"median_ns"`
	P90    float64 `json:"p90_ns"`
}

// targetStats is what the client reports per listener.
type targetStats struct {
	Connect opStats `json:"connect"`
	RR      opStats `json:"rr"`
}

// packetConfig is a server namespace's configuration and a listener.
type packetConfig struct {
	name    string
	account string // first or last
}

// packetResult holds every client run's statistics per configuration.
type packetResult struct {
	n       int // accounts in the large table
	iters   int
	rounds  int
	block   int
	cpu     int // the CPU client and listeners ran on, or -1
	connect map[packetConfig][]opStats
	rr      map[packetConfig][]opStats
	err     string
}

// Configurations of the server namespaces, and the listeners.
const (
	cfgNone      = "no table"
	cfgCt        = "conntrack only"
	cfgOne       = "nftpol, 1 account"
	cfgLarge     = "nftpol, N accounts"
	accFirst     = "first"
	accLast      = "last"
	serveLife    = 2 * time.Hour
	packetBlock  = 500
	serverSuffix = ".1"
)

// packetNS is one server namespace: its configuration, its subnet in
// 198.18.0.0/15, the listeners it runs.
type packetNS struct {
	cfg      string
	policy   string // nftpol policy to apply, if any
	nftFile  string // nft file to load, if any
	accounts []string
	subnet   int // 198.18.<subnet>.0/24
	ns       string
}

func (b *bench) measurePacket(n int) (*packetResult, error) {
	res := &packetResult{n: n, iters: b.opts.packetIters, rounds: b.opts.packetRounds, block: packetBlock, cpu: b.opts.packetCPU,
		connect: map[packetConfig][]opStats{}, rr: map[packetConfig][]opStats{}}
	dir := filepath.Join(b.work, "packet")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	last := n - 1
	first1, last1, large := filepath.Join(dir, "first.yaml"), filepath.Join(dir, "last.yaml"), filepath.Join(dir, "large.yaml")
	if err := writePolicy(first1, 0, 1, edit{}); err != nil {
		return res, err
	}
	if err := writePolicy(last1, last, n, edit{}); err != nil {
		return res, err
	}
	if err := writePolicy(large, 0, n, edit{}); err != nil {
		return res, err
	}
	ctFile := filepath.Join(dir, "ct.nft")
	if err := os.WriteFile(ctFile, []byte(ctOnlyTable), 0o644); err != nil {
		return res, err
	}
	servers := []*packetNS{
		{cfg: cfgNone, accounts: []string{accFirst, accLast}},
		{cfg: cfgCt, nftFile: ctFile, accounts: []string{accFirst, accLast}},
		{cfg: cfgOne, policy: first1, accounts: []string{accFirst}},
		{cfg: cfgOne, policy: last1, accounts: []string{accLast}},
		{cfg: cfgLarge, policy: large, accounts: []string{accFirst, accLast}},
	}

	cli, err := b.newNetns("pkt-cli")
	if err != nil {
		return res, err
	}
	defer b.deleteNetns(cli)
	// The client closes first, so its side keeps the TIME_WAIT sockets:
	// let it reuse them and give it every port.
	for _, s := range [][2]string{{"net/ipv4/tcp_tw_reuse", "1"}, {"net/ipv4/ip_local_port_range", "1024 65535"}} {
		if err := setSysctl(cli, s[0], s[1]); err != nil {
			b.logf("per-packet: sysctl %s in %s: %v (continuing)", s[0], cli, err)
		}
	}
	var targets []string
	labels := map[string]packetConfig{}
	for i, sv := range servers {
		sv.subnet = i + 1
		if sv.ns, err = b.newNetns(fmt.Sprintf("pkt-srv%d", i)); err != nil {
			return res, err
		}
		defer b.deleteNetns(sv.ns)
		prefix := fmt.Sprintf("198.18.%d", sv.subnet)
		srvIf, cliIf := fmt.Sprintf("bs%d", i), fmt.Sprintf("bc%d", i)
		for _, a := range [][]string{
			{"-n", sv.ns, "link", "add", srvIf, "type", "veth", "peer", "name", cliIf, "netns", cli},
			{"-n", sv.ns, "addr", "add", prefix + ".1/24", "dev", srvIf},
			{"-n", cli, "addr", "add", prefix + ".2/24", "dev", cliIf},
			{"-n", sv.ns, "link", "set", srvIf, "up"},
			{"-n", cli, "link", "set", cliIf, "up"},
		} {
			if _, err := b.run(command{args: append([]string{b.ip}, a...)}); err != nil {
				return res, err
			}
		}
		// Conntrack entries of closed connections would otherwise stay
		// two minutes and pile up over the runs.
		if sv.cfg != cfgNone {
			if err := setSysctl(sv.ns, "net/netfilter/nf_conntrack_tcp_timeout_time_wait", "1"); err != nil {
				b.logf("per-packet: sysctl in %s: %v (continuing)", sv.ns, err)
			}
		}
		switch {
		case sv.policy != "":
			state := filepath.Join(dir, fmt.Sprintf("state%d", i))
			if _, err := b.run(command{args: []string{b.nftpol, "--config", sv.policy, "--netns", sv.ns, "--state-dir", state, "apply"}}); err != nil {
				return res, err
			}
		case sv.nftFile != "":
			if _, err := b.nftIn(sv.ns, nil, "-f", sv.nftFile); err != nil {
				return res, err
			}
		}
		for _, acc := range sv.accounts {
			i := 0
			if acc == accLast {
				i = last
			}
			addr := prefix + serverSuffix
			stop, err := b.startServer(sv.ns, addr, accountUID(i), accountPort(i))
			if err != nil {
				return res, err
			}
			defer stop()
			label := fmt.Sprintf("%s-%s", sv.ns, acc)
			labels[label] = packetConfig{sv.cfg, acc}
			targets = append(targets, fmt.Sprintf("%s=%s:%d", label, addr, accountPort(i)))
		}
	}

	for round := 1; round <= b.opts.packetRounds; round++ {
		b.logf("per-packet run %d/%d: %d listeners, %d operations of each kind per listener, in blocks of %d",
			round, b.opts.packetRounds, len(targets), b.opts.packetIters, packetBlock)
		st, err := b.client(cli, targets)
		if err != nil {
			res.err = err.Error()
			return res, err
		}
		for _, t := range targets {
			label, _, _ := strings.Cut(t, "=")
			ts, ok := st[label]
			if !ok {
				return res, fmt.Errorf("the client reported nothing for %s", label)
			}
			k := labels[label]
			res.connect[k] = append(res.connect[k], ts.Connect)
			res.rr[k] = append(res.rr[k], ts.RR)
			b.logf("per-packet %s, %s account: connect+close %.1f µs, round trip %.1f µs (medians)", k.name, k.account,
				ts.Connect.Median/1e3, ts.RR.Median/1e3)
		}
		if err := b.ctx.Err(); err != nil {
			return res, err
		}
	}
	return res, nil
}

// startServer runs this program's serve subcommand in netns as uid. stop
// ends it (closing its standard input) and waits.
// extra are more flags of serve (-cgroup, -probe).
func (b *bench) startServer(netns, addr string, uid, port int, extra ...string) (stop func(), err error) {
	args := []string{"serve", "-netns", netns, "-addr", addr, "-uid", fmt.Sprint(uid), "-port", fmt.Sprint(port),
		"-max", serveLife.String(), "-cpu", fmt.Sprint(b.opts.packetCPU), "-nice", fmt.Sprint(b.opts.nice)}
	cmd := exec.Command(b.self, append(args, extra...)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop = func() {
		in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 6)
		_, err := io.ReadFull(out, buf)
		if err == nil && string(buf) != "ready\n" {
			err = fmt.Errorf("server said %q", buf)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = errors.New("server not ready after 10s")
	}
	if err != nil {
		stop()
		return nil, fmt.Errorf("listener uid %d port %d: %w", uid, port, err)
	}
	return stop, nil
}

// client runs this program's client subcommand in netns against targets
// (LABEL=ADDR:PORT) and returns its statistics per label.
func (b *bench) client(netns string, targets []string) (map[string]targetStats, error) {
	res, err := b.run(command{args: []string{b.self, "client", "-targets", strings.Join(targets, " "),
		"-n", fmt.Sprint(b.opts.packetIters), "-block", fmt.Sprint(packetBlock), "-cpu", fmt.Sprint(b.opts.packetCPU)},
		netns: netns, stdout: true, timed: true})
	if err != nil {
		return nil, err
	}
	st := map[string]targetStats{}
	if err := json.Unmarshal(res.out, &st); err != nil {
		return nil, fmt.Errorf("client output %q: %w", res.out, err)
	}
	return st, nil
}

// serveMain is the serve subcommand: listen on addr:port as uid, in
// netns, and echo on every connection until the peer closes, one thread per
// connection. It ends when its standard input closes, or after -max.
func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	netns := fs.String("netns", "", "network namespace name")
	addrS := fs.String("addr", "", "IPv4 address to listen on")
	uid := fs.Int("uid", -1, "UID (and GID) to listen as")
	port := fs.Int("port", 0, "TCP port")
	maxLife := fs.Duration("max", time.Hour, "exit after this long")
	cpu := fs.Int("cpu", -1, "run on this CPU only (negative: anywhere)")
	nice := fs.Int("nice", 0, "run at this niceness")
	cgroup := fs.String("cgroup", "", "join this cgroup v2 `DIR` first (one the bench created)")
	probe := probeFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, err := netip.ParseAddr(*addrS)
	if *netns == "" || *uid < 0 || *port <= 0 || err != nil || !addr.Is4() {
		return errors.New("serve needs -netns, -addr (IPv4), -uid and -port")
	}
	// Before any socket exists: a socket belongs to the cgroup its
	// creator was in, and the guard's programs go by the socket's.
	if err := joinCgroup(*cgroup); err != nil {
		return err
	}
	if err := pinProcess(*cpu); err != nil {
		return err
	}
	if *nice != 0 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, *nice); err != nil {
			return fmt.Errorf("setpriority %d: %w", *nice, err)
		}
	}
	if err := becomeAccount(*netns, *uid); err != nil {
		return err
	}
	if err := probe.check(); err != nil {
		return err
	}
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Port: *port, Addr: addr.As4()}); err != nil {
		return fmt.Errorf("bind %s:%d: %w", addr, *port, err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		return err
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	go func() {
		time.Sleep(*maxLife)
		os.Exit(0)
	}()
	fmt.Println("ready")
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		go echo(fd)
	}
}

// echo answers on fd until the peer closes. Blocking calls: the goroutine
// keeps a thread while it waits, and wakes without the poller.
func echo(fd int) {
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	buf := make([]byte, 512)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if n <= 0 || err != nil {
			return
		}
		if _, err := unix.Write(fd, buf[:n]); err != nil {
			return
		}
	}
}

// clientMain is the client subcommand, run inside the client namespace. For
// every target it makes -n connections (socket, connect, close) and -n
// 1-byte round trips over one connection, in blocks of -block, cycling
// through the targets (starting one further each cycle) so that all of them
// see the same machine. The first block of each kind per target is a
// warm-up and not counted. It prints the statistics per label as JSON.
func clientMain(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	targetsS := fs.String("targets", "", "LABEL=ADDR:PORT ... (space-separated)")
	n := fs.Int("n", 20000, "timed operations of each kind per target")
	block := fs.Int("block", packetBlock, "operations per block")
	cpu := fs.Int("cpu", -1, "run on this CPU only (negative: anywhere)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := pinProcess(*cpu); err != nil {
		return err
	}
	type target struct {
		label    string
		sa       *unix.SockaddrInet4
		rrFD     int
		conn, rr []int64
	}
	var ts []*target
	for _, t := range strings.Fields(*targetsS) {
		label, ap, ok := strings.Cut(t, "=")
		addrPort, err := netip.ParseAddrPort(ap)
		if !ok || err != nil || !addrPort.Addr().Is4() {
			return fmt.Errorf("-targets: %q is not LABEL=IPv4:PORT", t)
		}
		ts = append(ts, &target{label: label, sa: &unix.SockaddrInet4{Port: int(addrPort.Port()), Addr: addrPort.Addr().As4()}})
	}
	if len(ts) == 0 || *n < 1 || *block < 1 {
		return errors.New("nothing to do: -targets, -n, -block")
	}
	runtime.LockOSThread()

	// A blocked connection would hang a blocking call: a watchdog ends the
	// run if no operation completes for a while.
	var done atomic.Int64
	go func() {
		last := int64(-1)
		for {
			time.Sleep(5 * time.Second)
			d := done.Load()
			if d == last {
				fmt.Fprintf(os.Stderr, "client: no progress for 5s after %d operations (blocked by a table?)\n", d)
				os.Exit(1)
			}
			last = d
		}
	}()

	for _, t := range ts {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, t.sa); err != nil {
			return fmt.Errorf("%s: connect: %w", t.label, err)
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		t.rrFD = fd
		t.conn = make([]int64, 0, *n)
		t.rr = make([]int64, 0, *n)
	}
	connectOnce := func(t *target) (int64, error) {
		t0 := time.Now()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		err = unix.Connect(fd, t.sa)
		unix.Close(fd)
		d := int64(time.Since(t0))
		if err != nil {
			return 0, fmt.Errorf("%s: connect: %w", t.label, err)
		}
		return d, nil
	}
	out, in := []byte{'x'}, make([]byte, 1)
	rrOnce := func(t *target) (int64, error) {
		t0 := time.Now()
		if _, err := unix.Write(t.rrFD, out); err != nil {
			return 0, fmt.Errorf("%s: write: %w", t.label, err)
		}
		for {
			m, err := unix.Read(t.rrFD, in)
			if err == unix.EINTR {
				continue
			}
			if err != nil || m != 1 {
				return 0, fmt.Errorf("%s: read: %d bytes, %v", t.label, m, err)
			}
			break
		}
		return int64(time.Since(t0)), nil
	}
	cycles := (*n+*block-1) / *block + 1 // the first is the warm-up
	for c := range cycles {
		for j := range ts {
			t := ts[(c+j)%len(ts)]
			for _, kind := range []int{0, 1} {
				for range *block {
					var d int64
					var err error
					if kind == 0 {
						d, err = connectOnce(t)
					} else {
						d, err = rrOnce(t)
					}
					if err != nil {
						return err
					}
					done.Add(1)
					if c == 0 {
						continue
					}
					if kind == 0 && len(t.conn) < *n {
						t.conn = append(t.conn, d)
					} else if kind == 1 && len(t.rr) < *n {
						t.rr = append(t.rr, d)
					}
				}
			}
		}
	}
	res := map[string]targetStats{}
	for _, t := range ts {
		unix.Close(t.rrFD)
		res[t.label] = targetStats{Connect: summarise(t.conn), RR: summarise(t.rr)}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func summarise(times []int64) opStats {
	st := opStats{N: len(times)}
	if len(times) == 0 {
		return st
	}
	var sum int64
	for _, t := range times {
		sum += t
	}
	slices.Sort(times)
	st.Mean = float64(sum) / float64(len(times))
	st.Median = float64(times[len(times)/2])
	st.P90 = float64(times[len(times)*9/10])
	return st
}

// pinProcess binds every thread of the process to cpu (threads created
// later inherit it from their creator). Client, listeners and the packets'
// softirq work then share one CPU: a round trip never waits for a
// cross-CPU wake-up, which costs much in a VM and comes at random.
func pinProcess(cpu int) error {
	if cpu < 0 {
		return nil
	}
	var set unix.CPUSet
	set.Set(cpu)
	for range 2 { // again, for a thread started meanwhile
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, t := range tasks {
			var tid int
			if _, err := fmt.Sscan(t.Name(), &tid); err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("pinning to CPU %d: %w", cpu, err)
			}
		}
	}
	return nil
}

// enterNetns moves the calling (locked) thread into /run/netns/<name>.
// becomeAccount moves the calling goroutine's OS thread, locked for good,
// into the namespace called netns and then drops the process to uid (gid
// the same, no supplementary groups). A socket's namespace is its creating
// thread's and its owner (what meta skuid matches) the creating
// credentials: enter, drop, then create, all on this thread.
func becomeAccount(netns string, uid int) error {
	runtime.LockOSThread()
	if err := enterNetns(netns); err != nil {
		return err
	}
	// The syscall package applies these to every thread of the process.
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(uid); err != nil {
		return fmt.Errorf("setgid: %w", err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setuid: %w", err)
	}
	return nil
}

func enterNetns(name string) error {
	if name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("bad namespace name %q", name)
	}
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Setns(fd, unix.CLONE_NEWNET)
}
