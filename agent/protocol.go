package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SocketName is the agent's socket in the state directory: the CLI's plan,
// apply, restore, remove and status are served through it while an agent
// runs, so the agent is the only writer.
const SocketName = "agent.sock"

// Request is a command the CLI asks the agent to run: its arguments as
// given, and the global settings as the CLI resolved them (flags and
// environment), so the agent can check they are its own.
type Request struct {
	Args     []string          `json:"args"`
	Settings map[string]string `json:"settings"`
}

// Frames of the answer: stdout and stderr bytes as the command writes them,
// then its exit code.
const (
	frameStdout = 1
	frameStderr = 2
	frameExit   = 3
)

// maxRequest bounds a request: arguments and settings, never a policy.
const maxRequest = 1 << 20

// ErrNoAgent is returned by Forward when no agent listens on the state
// directory: the CLI then does the work itself.
var ErrNoAgent = errors.New("no agent running")

// Forward asks the agent serving the state directory dir to run req,
// copying what the command writes to stdout and stderr as it comes, and
// returns its exit code. ErrNoAgent: nobody listens (no socket, or one an
// agent that died left behind).
func Forward(dir string, req Request, stdout, stderr io.Writer) (int, error) {
	path := filepath.Join(dir, SocketName)
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return 0, ErrNoAgent
		}
		return 0, fmt.Errorf("the agent's socket %s: %w", path, err)
	}
	defer conn.Close()
	b, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return 0, fmt.Errorf("asking the agent (%s): %w", path, err)
	}
	r := bufio.NewReader(conn)
	var head [5]byte
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			return 0, fmt.Errorf("the agent (%s) ended the answer early: %w; see its log (journalctl -u nftpol-watch)", path, err)
		}
		n := binary.BigEndian.Uint32(head[1:])
		switch head[0] {
		case frameStdout, frameStderr:
			w := stdout
			if head[0] == frameStderr {
				w = stderr
			}
			if _, err := io.CopyN(w, r, int64(n)); err != nil {
				return 0, err
			}
		case frameExit:
			return int(n), nil
		default:
			return 0, fmt.Errorf("the agent (%s) answered frame type %d: a different nftpol version? restart nftpol-watch", path, head[0])
		}
	}
}

// frames writes a command's output to the connection that asked for it.
type frames struct {
	mu   sync.Mutex
	conn net.Conn
	err  error
}

func (f *frames) frame(kind byte, n uint32, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err // the caller went away: the command runs to its end all the same
	}
	var head [5]byte
	head[0] = kind
	binary.BigEndian.PutUint32(head[1:], n)
	_ = f.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, f.err = f.conn.Write(append(head[:], data...)); f.err != nil {
		return f.err
	}
	return nil
}

// stream is an io.Writer of one kind of frames.
type stream struct {
	f    *frames
	kind byte
}

func (s stream) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		n := min(len(rest), 1<<20)
		if err := s.f.frame(s.kind, uint32(n), rest[:n]); err != nil {
			return 0, err
		}
		rest = rest[n:]
	}
	return len(p), nil
}

// peerUID is the UID of the process on the other end of conn.
func peerUID(conn *net.UnixConn) (uint32, error) {
	raw, err := conn.SyscallConn()
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

// readRequest reads one request from conn.
func readRequest(conn net.Conn) (Request, error) {
	var req Request
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(io.LimitReader(conn, maxRequest), 4096).ReadBytes('\n')
	if err != nil {
		return req, fmt.Errorf("reading the request: %w", err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	if err := json.Unmarshal(line, &req); err != nil {
		return req, fmt.Errorf("decoding the request: %w", err)
	}
	return req, nil
}
