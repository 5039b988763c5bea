//go:build linux

package audit

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/bindguard"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/sockets"
)

func sampleReport() *Report {
	sock := func(proto, addr string, port uint16, uid uint32) sockets.Socket {
		return sockets.Socket{Proto: sockets.Proto(proto), Addr: netip.MustParseAddr(addr), Port: port, UID: uid, Inode: uint64(port)}
	}
	return &Report{
		Policy: "/etc/nftpol/nftpol.yaml",
		Netns:  "web1",
		Findings: []Finding{
			{Socket: sock("tcp", "0.0.0.0", 22, 0), Processes: []sockets.Process{{PID: 812, Command: "sshd"}}, Verdict: NotEnforced},
			{Socket: sock("tcp", "::", 40010, 1001), Account: "alpha", Processes: []sockets.Process{{PID: 4242, Command: "node"}, {PID: 4243, Command: "node"}}, Verdict: Reachable},
			{Socket: sock("tcp", "198.18.0.1", 40025, 1001), Account: "alpha", Processes: []sockets.Process{{PID: 4250, Command: "node"}},
				Verdict: Blocked, Reason: OtherAccount, Other: "beta", Rule: "tcp served outside the account's ports"},
			{Socket: sock("udp", "127.0.0.1", 41000, 1001), Account: "alpha", Verdict: LocalOnly},
		},
		Terminate: true,
		Grace:     10 * time.Second,
		Terminated: []Termination{
			{PID: 4250, Command: "node", Sockets: []string{"tcp 198.18.0.1:40025"}, Signals: []string{"SIGTERM"}, Outcome: Exited},
		},
	}
}

func TestAuditText(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `Sockets of network namespace web1 under /etc/nftpol/nftpol.yaml:

PROTO  ADDRESS           UID   ACCOUNT  PROCESS              VERDICT
tcp    0.0.0.0:22        0     -        812/sshd             not-enforced
tcp    [::]:40010        1001  alpha    4242/node,4243/node  reachable
tcp    198.18.0.1:40025  1001  alpha    4250/node            blocked: another account's port (beta)
udp    127.0.0.1:41000   1001  alpha    -                    local-only

4 sockets: 1 reachable, 1 blocked, 1 local-only, 1 not-enforced.

--terminate (grace 10s):
  pid 4250 (node, tcp 198.18.0.1:40025): SIGTERM, exited
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestAuditJSON(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got auditJSON
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	blocked := got.Sockets[2]
	if blocked.Verdict != "blocked" || blocked.Reason != "another-account" || blocked.OtherAccount != "beta" ||
		blocked.Explanation != "another account's port (beta)" || blocked.Address != "198.18.0.1" || blocked.Port != 40025 {
		t.Errorf("blocked socket in JSON: %+v", blocked)
	}
	if got.Summary["blocked"] != 1 || got.Summary["local-only"] != 1 || len(got.Terminated) != 1 || got.Terminated[0].Outcome != "exited" {
		t.Errorf("summary or Terminated: %+v %+v", got.Summary, got.Terminated)
	}
	if !strings.Contains(b.String(), `"processes": []`) {
		t.Errorf("a socket without processes must still have a processes list:\n%s", b.String())
	}
}

// TestReportGuard: with the policy's bind guard, the report marks the
// sockets whose bind the guard refuses, in text and JSON, and no other.
func TestReportGuard(t *testing.T) {
	p := &policies.Policy{Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		BindGuard: policies.BindGuard{Enabled: true},
		Accounts:  []*policies.Account{{Name: "alpha", UID: 1001, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}}, Protocols: []policies.Protocol{policies.TCP}}}}
	d, err := bindguard.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	r := sampleReport()
	r.Guard = d
	var text, js bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	// alpha on beta's 40025 and on the zone port 41000 for udp (alpha has
	// tcp only; loopback or not, the bind is refused) are refused; alpha's
	// own 40010 and root's 22 are not.
	if n := strings.Count(text.String(), "(the bind guard refuses this bind)"); n != 2 ||
		!strings.Contains(text.String(), "another account's port (beta) (the bind guard refuses this bind)") ||
		!strings.Contains(text.String(), "local-only (the bind guard refuses this bind)") {
		t.Errorf("text marks %d sockets:\n%s", n, text.String())
	}
	if n := strings.Count(js.String(), `"bind_guard_refuses": true`); n != 2 {
		t.Errorf("JSON marks %d sockets:\n%s", n, js.String())
	}
}
