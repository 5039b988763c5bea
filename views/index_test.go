package views

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestIndexIsWhatPublishWrites: the agent's answer for a UID is the view
// file Publish writes for it, byte for byte, and none for a UID without an
// account.
func TestIndexIsWhatPublishWrites(t *testing.T) {
	at := time.Date(2026, 11, 26, 3, 27, 15, 0, time.UTC)
	rs := compile(t, testPolicy())
	ix := NewIndex(rs, at, "agent/1")
	host, views := Views(rs, at)
	host.Source = "agent/1"
	for _, uid := range []uint32{1012, 1013, 1500} {
		h, v := ix.Lookup(uid)
		want := views[uid]
		if !bytes.Equal(v, appendView(nil, &want)) {
			t.Errorf("uid %d: %s\nwant %s", uid, v, appendView(nil, &want))
		}
		if !bytes.Equal(h, appendHost(nil, &host)) {
			t.Errorf("uid %d: host %s, want %s", uid, h, appendHost(nil, &host))
		}
		if _, err := ParseView(v); err != nil {
			t.Errorf("uid %d: %v", uid, err)
		}
	}
	if _, v := ix.Lookup(1014); v != nil {
		t.Errorf("uid 1014 has no account, got a view %s", v)
	}
}

// BenchmarkIndexLookup50k: the first lookup in a new index of 50,000 accounts,
// what the first `nftpol ports` after an apply costs the agent.
func BenchmarkIndexLookup50k(b *testing.B) {
	rs := compile(b, manyAccounts(50000))
	b.ResetTimer()
	for range b.N {
		ix := NewIndex(rs, time.Now(), "")
		ix.Lookup(100000 + 25000)
	}
}

// TestServeAsk: Ask gets from Serve what the index holds for the caller's
// UID; with nobody listening it says so (the files are read then); a UID
// asking for another's view is refused (root may).
func TestServeAsk(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if _, _, err := Ask(dir, 1012); !errors.Is(err, ErrNoServer) {
		t.Fatalf("Ask with no agent: %v, want ErrNoServer", err)
	}
	ln, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	at := time.Date(2026, 11, 26, 3, 27, 15, 0, time.UTC)
	var current atomic.Pointer[Index]
	go Serve(ln, current.Load, slog.New(slog.NewTextHandler(io.Discard, nil)))
	me := uint32(os.Getuid())
	if _, _, err := Ask(dir, me); err == nil || !strings.Contains(err.Error(), "applied nothing yet") {
		t.Errorf("Ask before an apply: %v", err)
	}
	p := testPolicy()
	p.Accounts[0].UID = me // the caller is site12
	current.Store(NewIndex(compile(t, p), at, "agent/1"))
	host, view, err := Ask(dir, me)
	if err != nil {
		t.Fatal(err)
	}
	if host.Source != "agent/1" || host.MinUID != 1000 || view == nil || view.Account != "site12" || view.UID != me {
		t.Errorf("Ask: host %+v, view %+v", host, view)
	}
	_, view, err = Ask(dir, 1013)
	switch {
	case me == 0 && (err != nil || view == nil || view.Account != "site13"):
		t.Errorf("root asking for 1013: %+v %v", view, err)
	case me != 0 && (err == nil || !strings.Contains(err.Error(), "may see its own view only")):
		t.Errorf("uid %d asking for 1013: %+v %v, want refused", me, view, err)
	}
}
