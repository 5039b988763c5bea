//go:build linux

package views

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SocketName is the agent's socket in the run directory: any user may
// connect, and is told its own view only (the kernel says who connected:
// SO_PEERCRED); root may ask for any UID's.
const SocketName = "ports.sock"

// ErrNoServer is Ask's error when no agent serves the run directory.
var ErrNoServer = errors.New("no agent serves views")

// askTimeout bounds a question and its answer.
const askTimeout = 2 * time.Second

type question struct {
	UID uint32 `json:"uid"`
}

type answer struct {
	Host  json.RawMessage `json:"host,omitempty"`
	View  json.RawMessage `json:"view,omitempty"`
	Error string          `json:"error,omitempty"`
}

// Listen makes the socket in the run directory dir (created 0755 when
// missing, refused when another user could change it, as Publish does),
// mode 0666: every user may ask.
func Listen(dir string) (*net.UnixListener, error) {
	if err := ensureDir(dir, 0o755, false); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, SocketName)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers questions on ln with the views of the index current
// returns (nil: nothing applied yet) until ln is closed.
func Serve(ln *net.UnixListener, current func() *Index, log *slog.Logger) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Warn("views socket", "err", err.Error())
			}
			return
		}
		go serveOne(c, current)
	}
}

func serveOne(c *net.UnixConn, current func() *Index) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(askTimeout))
	reply := func(a answer) { _ = json.NewEncoder(c).Encode(a) }
	peer, err := peerUID(c)
	if err != nil {
		reply(answer{Error: err.Error()})
		return
	}
	line, err := bufio.NewReader(&limited{c, 512}).ReadBytes('\n')
	if err != nil {
		return
	}
	var q question
	if err := json.Unmarshal(line, &q); err != nil {
		reply(answer{Error: "a question is one JSON line: {\"uid\": N}"})
		return
	}
	if peer != 0 && q.UID != peer {
		reply(answer{Error: fmt.Sprintf("UID %d may see its own view only, not UID %d's", peer, q.UID)})
		return
	}
	ix := current()
	if ix == nil {
		reply(answer{Error: "the agent has applied nothing yet: no views"})
		return
	}
	host, view := ix.Lookup(q.UID)
	reply(answer{Host: host, View: view})
}

func peerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Uid, nil
}

// limited reads at most n bytes: a question is short.
type limited struct {
	c *net.UnixConn
	n int
}

func (l *limited) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("question too long")
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.c.Read(p)
	l.n -= n
	return n, err
}

// Ask asks the agent serving the run directory dir for uid's view: the
// host file's content and the view file's content (nil when uid has
// none). It returns ErrNoServer when no agent listens there.
func Ask(dir string, uid uint32) (host *Host, view *View, err error) {
	path := filepath.Join(dir, SocketName)
	c, err := net.DialTimeout("unix", path, askTimeout)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil, ErrNoServer
		}
		return nil, nil, fmt.Errorf("asking the agent at %s: %w", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(askTimeout))
	if err := json.NewEncoder(c).Encode(question{UID: uid}); err != nil {
		return nil, nil, fmt.Errorf("asking the agent at %s: %w", path, err)
	}
	var a answer
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&a); err != nil {
		return nil, nil, fmt.Errorf("the agent at %s did not answer: %w", path, err)
	}
	if a.Error != "" {
		return nil, nil, fmt.Errorf("the agent at %s: %s", path, a.Error)
	}
	if host, err = ParseHost(a.Host); err != nil {
		return nil, nil, fmt.Errorf("the agent at %s: %w", path, err)
	}
	if len(a.View) > 0 && string(a.View) != "null" {
		if view, err = ParseView(a.View); err != nil {
			return nil, nil, fmt.Errorf("the agent at %s: %w", path, err)
		}
	}
	return host, view, nil
}
