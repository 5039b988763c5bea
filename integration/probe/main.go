// Command probe makes and checks real traffic for nftpol's integration tests.
// It enters a network namespace by name (/run/netns/NAME, as made by
// `ip netns add`), takes on a UID, and then listens, connects or keeps a
// stream going:
//
//	probe listen  -netns NS -uid U -gid G -proto tcp|udp|udplite|unix -addr A -port P [-path SOCK] [-timeout 60s]
//	probe connect -netns NS [-uid U] -proto tcp|udp|udplite|unix -addr A -port P [-path SOCK] [-timeout 1500ms]
//	probe stream  -netns NS [-uid U] -proto tcp|udp -addr A -port P [-interval 50ms] [-timeout 1s] [-max 60s]
//	probe bind    -netns NS -uid U [-cgroup DIR] -proto tcp|udp|udplite -addr A -port P
//	probe listen  -netns NS -uid U -gid G -sockets tcp:P1,udp:P1,tcp:P2 [-addr A] [-timeout 60s]
//	probe hammer  -targets tcp:P1:ok,udp:P2:blocked -addrs A1,A2 [-workers 1] [-blocked-workers 1] [-pace 20ms] [-timeout 1s] [-max 10m]
//
// udplite is UDP-Lite (IPPROTO_UDPLITE), which any user can open and the
// net package does not know: the probe makes the socket itself and hands it
// to the net package as a datagram socket.
//
// listen prints "ready" once its socket is bound (with -sockets: all of them,
// on -addr, or on every address when it is empty) and echoes what it receives
// until its standard input closes, it gets SIGTERM, or -timeout passes.
//
// connect sends "ping", expects "ping" back and prints one word: ok, refused
// (TCP reset on connect, or ICMP port-unreachable on a connected UDP socket),
// denied (the send failed with EPERM: dropped on the way out of this host),
// timeout (no answer within -timeout), reset (the connection was reset after
// it was set up), closed (the peer closed without echoing) or "error: ...".
// It exits 0 for all of them: the test interprets the word.
//
// stream connects, makes one exchange, prints "connected" and then exchanges
// a message every -interval until its standard input closes (or SIGTERM, or
// -max); it prints "ok N" (N exchanges, all answered) or "fail N: WORD" at the
// first exchange that failed. Tests use it to prove that an established
// connection keeps working while the ruleset changes under it.
//
// hammer (see hammer.go) connects to many targets at once until its standard
// input closes and then prints what each target answered.
//
// The order in which the probe sets itself up matters: it locks its OS
// thread, enters the namespace on that thread, drops to the UID, and only then
// creates its socket. A socket belongs to the namespace of the thread that
// created it, and its owner (what `meta skuid` matches) is fixed at creation.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe listen|connect|stream|hammer [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "listen":
		err = listen(os.Args[2:])
	case "connect":
		err = connect(os.Args[2:])
	case "bind":
		err = bindOnce(os.Args[2:])
	case "stream":
		err = stream(os.Args[2:])
	case "hammer":
		err = hammer(os.Args[2:])
	case "ask":
		err = ask(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q (want listen, connect, stream or hammer)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

// endpoint holds the flags every subcommand shares.
type endpoint struct {
	netns string
	uid   int
	gid   int
	proto string
	addr  string
	port  int
	path  string
}

func (e *endpoint) register(fs *flag.FlagSet) {
	fs.StringVar(&e.netns, "netns", "", "network namespace `NAME` (/run/netns/NAME); empty: stay")
	fs.IntVar(&e.uid, "uid", -1, "run as this `UID` (negative: stay root)")
	fs.IntVar(&e.gid, "gid", -1, "run as this `GID` (negative: same as -uid)")
	fs.StringVar(&e.proto, "proto", "tcp", "tcp, udp, udplite or unix")
	fs.StringVar(&e.addr, "addr", "", "IP address")
	fs.IntVar(&e.port, "port", 0, "port")
	fs.StringVar(&e.path, "path", "", "UNIX socket path (-proto unix)")
}

// network returns the net package's network name and address for e.
func (e *endpoint) network() (string, string, error) {
	switch e.proto {
	case "tcp", "udp", "udplite":
		if e.port <= 0 || e.port > 65535 {
			return "", "", fmt.Errorf("-port %d out of range", e.port)
		}
		return e.proto, net.JoinHostPort(e.addr, strconv.Itoa(e.port)), nil
	case "unix":
		if e.path == "" {
			return "", "", errors.New("-proto unix needs -path")
		}
		return "unix", e.path, nil
	}
	return "", "", fmt.Errorf("-proto %q: want tcp, udp, udplite or unix", e.proto)
}

// udplite makes a UDP-Lite socket bound to (listen) or connected to e's
// address and port. Its checksum covers the whole datagram, the default.
func (e *endpoint) udplite(connect bool) (*os.File, error) {
	ip := net.ParseIP(e.addr)
	if ip == nil {
		return nil, fmt.Errorf("-addr %q is not an IP address", e.addr)
	}
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: e.port, Addr: [16]byte(ip.To16())})
	if ip4 := ip.To4(); ip4 != nil {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: e.port, Addr: [4]byte(ip4)}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDPLITE)
	if err != nil {
		return nil, fmt.Errorf("udplite socket: %w", err)
	}
	if connect {
		err = unix.Connect(fd, sa)
	} else {
		err = unix.Bind(fd, sa)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("udplite %s: %w", map[bool]string{true: "connect", false: "bind"}[connect], err)
	}
	return os.NewFile(uintptr(fd), "udplite"), nil
}

// enter moves the calling goroutine's OS thread into the namespace and then
// drops to the UID. Sockets must be created afterwards, on the same goroutine.
func (e *endpoint) enter() error {
	// The thread stays locked for the life of the process: the namespace is
	// a property of the thread, and an unlocked goroutine could move.
	runtime.LockOSThread()
	if e.netns != "" {
		fd, err := unix.Open("/run/netns/"+e.netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening namespace %s: %w", e.netns, err)
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("entering namespace %s: %w", e.netns, err)
		}
	}
	if e.uid >= 0 {
		gid := e.gid
		if gid < 0 {
			gid = e.uid
		}
		// The syscall package (not x/sys/unix) applies these to every
		// thread of the process, so no thread keeps root's credentials.
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := syscall.Setgid(gid); err != nil {
			return fmt.Errorf("setgid %d: %w", gid, err)
		}
		if err := syscall.Setuid(e.uid); err != nil {
			return fmt.Errorf("setuid %d: %w", e.uid, err)
		}
	}
	return nil
}

func listen(args []string) error {
	fs := flag.NewFlagSet("listen", flag.ContinueOnError)
	var e endpoint
	e.register(fs)
	timeout := fs.Duration("timeout", 60*time.Second, "exit after this long")
	sockets := fs.String("sockets", "", "listen on each `PROTO:PORT,...` (tcp or udp) at -addr instead of -proto/-port")
	ignoreTerm := fs.Bool("ignore-term", false, "ignore SIGTERM (a daemon that must be killed)")
	quiet := fs.Bool("quiet", false, "udp: do not report echoes that fail (a flood's)")
	blast := fs.Duration("blast", 0, "udp: answer the first datagram with as many as it can send for this long (a flood of answers), then echo")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
		ignoringTerm = true
	}
	quietEcho, blastFor = *quiet || *blast > 0, *blast
	if *sockets != "" {
		return listenMany(&e, *sockets, *timeout)
	}
	network, address, err := e.network()
	if err != nil {
		return err
	}
	if err := e.enter(); err != nil {
		return err
	}
	switch network {
	case "udp", "udplite":
		var pc net.PacketConn
		if network == "udp" {
			pc, err = net.ListenPacket(network, address)
		} else {
			pc, err = udplitePacketConn(&e)
		}
		if err != nil {
			return err
		}
		defer pc.Close()
		go echoPackets(pc)
	default:
		ln, err := net.Listen(network, address)
		if err != nil {
			return err
		}
		defer ln.Close()
		if network == "unix" {
			// Connecting needs write permission on the socket file; the
			// tests connect as other UIDs on purpose.
			if err := os.Chmod(address, 0o777); err != nil {
				return err
			}
		}
		go acceptEcho(ln)
	}
	fmt.Println("ready")
	waitForEnd(*timeout)
	return nil
}

func udplitePacketConn(e *endpoint) (net.PacketConn, error) {
	f, err := e.udplite(false)
	if err != nil {
		return nil, err
	}
	defer f.Close() // FilePacketConn holds a duplicate
	return net.FilePacketConn(f)
}

// listenMany is listen with -sockets: one process, one UID, many sockets.
func listenMany(e *endpoint, list string, timeout time.Duration) error {
	targets, err := parseTargets(list, false)
	if err != nil {
		return err
	}
	if err := e.enter(); err != nil {
		return err
	}
	for _, tg := range targets {
		address := net.JoinHostPort(e.addr, strconv.Itoa(tg.port))
		if tg.proto == "udp" {
			pc, err := net.ListenPacket("udp", address)
			if err != nil {
				return err
			}
			defer pc.Close()
			go echoPackets(pc)
			continue
		}
		ln, err := net.Listen("tcp", address)
		if err != nil {
			return err
		}
		defer ln.Close()
		go acceptEcho(ln)
	}
	fmt.Println("ready")
	waitForEnd(timeout)
	return nil
}

func acceptEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

func echoPackets(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// A reply rejected on the way out can come back as an
			// error on this socket; it must not stop the echo.
			continue
		}
		if blastFor > 0 {
			for end := time.Now().Add(blastFor); time.Now().Before(end); {
				for range 256 {
					_, _ = pc.WriteTo(buf[:n], from)
				}
			}
			blastFor = 0
		}
		if _, err := pc.WriteTo(buf[:n], from); err != nil && !quietEcho {
			// Said on stderr, where a transcript shows it: a reply
			// dropped on the way out fails here with EPERM.
			fmt.Fprintf(os.Stderr, "probe: echo to %s: %v\n", from, err)
		}
	}
}

// waitForEnd returns when standard input reaches EOF, on SIGTERM or SIGINT,
// or after d.
// ignoringTerm and quietEcho are listen's -ignore-term and -quiet.
var ignoringTerm, quietEcho bool

// blastFor is listen's -blast.
var blastFor time.Duration

func waitForEnd(d time.Duration) {
	done := make(chan struct{}, 1)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		done <- struct{}{}
	}()
	sig := make(chan os.Signal, 1)
	if ignoringTerm {
		signal.Notify(sig, syscall.SIGINT)
	} else {
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
	case <-sig:
	case <-timer.C:
	}
}

func connect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	var e endpoint
	e.register(fs)
	timeout := fs.Duration("timeout", 1500*time.Millisecond, "give up after this long (connect and answer together)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	network, address, err := e.network()
	if err != nil {
		return err
	}
	if err := e.enter(); err != nil {
		return err
	}
	deadline := time.Now().Add(*timeout)
	var c net.Conn
	if network == "udplite" {
		var f *os.File
		if f, err = e.udplite(true); err == nil {
			c, err = net.FileConn(f)
			f.Close()
		}
	} else {
		d := net.Dialer{Deadline: deadline}
		c, err = d.Dial(network, address)
	}
	if err != nil {
		fmt.Println(classify(err))
		return nil
	}
	defer c.Close()
	fmt.Println(classify(exchange(c, []byte("ping"), deadline)))
	return nil
}

// exchange sends msg and expects it back before deadline.
func exchange(c net.Conn, msg []byte, deadline time.Time) error {
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("got %q back, want %q", got, msg)
	}
	return nil
}

// classify turns the outcome of a connect or an exchange into the word the
// tests read.
func classify(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		// A firewall on this host dropped the packet on its way out.
		return "denied"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed"
	}
	return "error: " + err.Error()
}

func stream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	var e endpoint
	e.register(fs)
	interval := fs.Duration("interval", 50*time.Millisecond, "time between exchanges")
	timeout := fs.Duration("timeout", time.Second, "give up on one exchange (and on connecting) after this long")
	maxDur := fs.Duration("max", 60*time.Second, "stop after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if e.proto != "tcp" && e.proto != "udp" {
		return fmt.Errorf("-proto %q: stream wants tcp or udp", e.proto)
	}
	network, address, err := e.network()
	if err != nil {
		return err
	}
	if err := e.enter(); err != nil {
		return err
	}
	d := net.Dialer{Timeout: *timeout}
	c, err := d.Dial(network, address)
	if err != nil {
		fmt.Println("fail 0:", classify(err))
		return nil
	}
	defer c.Close()
	n := 0
	step := func() error {
		// Fixed-size messages, so a TCP read knows where one ends.
		msg := fmt.Appendf(nil, "%08d", n)
		if err := exchange(c, msg, time.Now().Add(*timeout)); err != nil {
			return err
		}
		n++
		return nil
	}
	if err := step(); err != nil {
		fmt.Printf("fail %d: %s\n", n, classify(err))
		return nil
	}
	fmt.Println("connected")

	stop := make(chan struct{})
	go func() {
		// Reads stdin line by line so a test can also just close it.
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
		}
		close(stop)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	end := time.NewTimer(*maxDur)
	defer end.Stop()
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
		case <-sig:
		case <-end.C:
		case <-tick.C:
			if err := step(); err != nil {
				fmt.Printf("fail %d: %s\n", n, classify(err))
				return nil
			}
			continue
		}
		// One last exchange, so that a connection broken just before the
		// end is still seen.
		if err := step(); err != nil {
			fmt.Printf("fail %d: %s\n", n, classify(err))
			return nil
		}
		fmt.Printf("ok %d\n", n)
		return nil
	}
}

// bindOnce joins -cgroup (a cgroup v2 directory) first, if given, then
// enters the namespace and the UID, binds one socket and prints ok, denied
// (EPERM: the bind guard refused it), in-use (EADDRINUSE) or "error: ...".
func bindOnce(args []string) error {
	fs := flag.NewFlagSet("bind", flag.ContinueOnError)
	var e endpoint
	e.register(fs)
	cgroup := fs.String("cgroup", "", "join this cgroup v2 `DIR` before binding")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cgroup != "" {
		if err := os.WriteFile(filepath.Join(*cgroup, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			return fmt.Errorf("joining cgroup %s: %w", *cgroup, err)
		}
	}
	if err := e.enter(); err != nil {
		return err
	}
	var err error
	if e.proto == "udplite" {
		var f *os.File
		if f, err = e.udplite(false); err == nil {
			f.Close()
		}
	} else {
		network, address, nerr := e.network()
		if nerr != nil {
			return nerr
		}
		if network == "tcp" {
			var ln net.Listener
			if ln, err = net.Listen(network, address); err == nil {
				ln.Close()
			}
		} else {
			var pc net.PacketConn
			if pc, err = net.ListenPacket(network, address); err == nil {
				pc.Close()
			}
		}
	}
	switch {
	case err == nil:
		fmt.Println("ok")
	case errors.Is(err, syscall.EPERM):
		fmt.Println("denied")
	case errors.Is(err, syscall.EADDRINUSE):
		fmt.Println("in-use")
	default:
		fmt.Println("error:", err)
	}
	return nil
}
