package sockets

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLocalOnly(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ifx  uint32
		want bool
	}{
		{"127.0.0.1", 0, true},
		{"127.3.2.1", 0, true},
		{"::1", 0, true},
		{"::ffff:127.0.0.1", 0, true},
		{"0.0.0.0", 0, false},
		{"::", 0, false},
		{"198.18.0.1", 0, false},
		{"0.0.0.0", LoopbackIndex, true}, // SO_BINDTODEVICE lo
		{"0.0.0.0", 2, false},
	} {
		s := Socket{Addr: netip.MustParseAddr(tt.addr), Interface: tt.ifx}
		if got := s.LocalOnly(); got != tt.want {
			t.Errorf("%s on interface %d: LocalOnly = %v, want %v", tt.addr, tt.ifx, got, tt.want)
		}
	}
}

func TestParsePortList(t *testing.T) {
	got, err := parsePortList("40010-49999,50100\n")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]PortRange{{40010, 49999}, {50100, 50100}}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if got, err := parsePortList("\n"); err != nil || got != nil {
		t.Errorf("empty list: %v, %v", got, err)
	}
	for _, bad := range []string{"x", "5-1", "70000"} {
		if _, err := parsePortList(bad); err == nil {
			t.Errorf("%q parsed without error", bad)
		}
	}
	a := AutoPorts{Lo: 32768, Hi: 60999, Reserved: []PortRange{{40010, 49999}}}
	for port, want := range map[uint16]bool{32767: false, 32768: true, 40010: false, 49999: false, 50000: true, 61000: false} {
		if a.Contains(port) != want {
			t.Errorf("Contains(%d) = %v, want %v", port, !want, want)
		}
	}
}
