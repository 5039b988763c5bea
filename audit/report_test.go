//go:build linux

package audit

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

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
