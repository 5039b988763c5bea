package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// flushedKernel is a kernel whose table is gone whenever it is read, as
// after `nft flush ruleset`; flush is somebody else committing.
type flushedKernel struct {
	mu  sync.Mutex
	gen uint32
}

func (k *flushedKernel) Identity() (kernel.Identity, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return kernel.Identity{BootID: "test", NetnsCookie: 1, Generation: k.gen}, nil
}
func (k *flushedKernel) Read(string) (*rules.Ruleset, error) { return nil, nil }
func (k *flushedKernel) Apply(p *rules.Plan, _ uint32) (kernel.Stats, error) {
	k.flush()
	return kernel.Stats{Messages: p.Operations()}, nil
}
func (k *flushedKernel) Delete(string) error                       { k.flush(); return nil }
func (k *flushedKernel) Hits(string, string) ([]kernel.Hit, error) { return nil, nil }
func (k *flushedKernel) Close() error                              { return nil }
func (k *flushedKernel) flush() {
	k.mu.Lock()
	k.gen = kernel.NextGeneration(k.gen)
	k.mu.Unlock()
}

type chanMonitor chan Change

func (m chanMonitor) Changes() <-chan Change { return m }
func (m chanMonitor) Close() error           { return nil }

// lineLimitedLog is the agent's stderr read by a program with a line
// limit, as the benchmark's bufio.Scanner (4 MiB) or any reader with a
// fixed buffer: at a longer line it stops reading, and the agent's next
// write to the pipe blocks for good. It keeps the lines it took.
type lineLimitedLog struct {
	max     int
	mu      sync.Mutex
	lines   []string
	partial bytes.Buffer
	stalled chan struct{}
	once    sync.Once
}

func (l *lineLimitedLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	l.partial.Write(b)
	for {
		i := bytes.IndexByte(l.partial.Bytes(), '\n')
		if i < 0 {
			break
		}
		line := string(l.partial.Next(i + 1))
		if len(line) > l.max {
			l.mu.Unlock()
			l.once.Do(func() { close(l.stalled) })
			select {} // the reader is gone, the pipe stays full
		}
		l.lines = append(l.lines, strings.TrimSuffix(line, "\n"))
	}
	l.mu.Unlock()
	return len(b), nil
}

func (l *lineLimitedLog) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, `"msg":"`+msg+`"`) {
			n++
		}
	}
	return n
}

// TestHealLogLineBounded: in monitor mode, `nft flush ruleset` makes every
// account drift; the heal's log line once listed them all (5 MB at 50,000
// accounts), a reader of the agent's stderr with a line limit stopped
// there, and the agent blocked writing it: deaf to every later flush, at
// no CPU. Each heal here must be logged in a line of a few KiB, and the
// agent must go on healing.
func TestHealLogLineBounded(t *testing.T) {
	const accounts = 1000 // ~100 bytes of drift each
	dir := t.TempDir()
	var y strings.Builder
	y.WriteString("zone: 10000-65000\nmin_uid: 1000\nprotocols: [tcp, udp]\naccounts:\n")
	for i := range accounts {
		fmt.Fprintf(&y, "  - {name: acct-%06d, uid: %d, ports: [\"%d\"]}\n", i, 100000+i, 10000+i)
	}
	cfgFile := filepath.Join(dir, "nftpol.yaml")
	if err := os.WriteFile(cfgFile, []byte(y.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	k := &flushedKernel{gen: 1}
	mon := make(chanMonitor, 1)
	log := &lineLimitedLog{max: 16 << 10, stalled: make(chan struct{})}
	eng := reconcile.New(reconcile.Config{StateDir: stateDir, Open: func() (reconcile.Kernel, error) { return k, nil },
		Keep: true, Warn: io.Discard, BPFDir: filepath.Join(dir, "bpf")})
	defer eng.Close()
	a := New(Config{
		StateDir:   stateDir,
		ConfigFile: cfgFile,
		Policies:   policies.NewCache(cfgFile, policies.WithPermissionCheck(false)),
		Engine:     eng,
		Mode:       ModeMonitor,
		Watch:      func(string) (Monitor, error) { return mon, nil },
		Log:        slog.New(slog.NewJSONHandler(log, nil)),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}()

	wait := func(msg string, n int) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for log.count(msg) < n {
			select {
			case <-log.stalled:
				t.Fatalf("the agent wrote a log line over %d bytes: a reader with a line limit stops there and the agent blocks on its next write", log.max)
			case err := <-done:
				t.Fatalf("the agent ended: %v", err)
			case <-deadline:
				t.Fatalf("no %q line %d within 20s", msg, n)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	wait("ready", 1)
	for i := 1; i <= 2; i++ {
		k.flush()
		mon <- Change{Who: fmt.Sprintf("nft[%d]", i), At: time.Now()}
		wait("healed a change to the table by somebody else", i)
	}
}
