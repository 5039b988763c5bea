//go:build linux

package sockets

import (
	"os"
	"strconv"
	"testing"
)

func TestReadAutoPorts(t *testing.T) {
	a, err := ReadAutoPorts()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	if want := strconv.Itoa(int(a.Lo)) + "\t" + strconv.Itoa(int(a.Hi)) + "\n"; string(b) != want {
		t.Errorf("ReadAutoPorts = %d-%d, the file says %q", a.Lo, a.Hi, b)
	}
}
