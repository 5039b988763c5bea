package bindguard

import (
	"testing"

	"github.com/nftpol/nftpol/policies"
)

func TestLoadPrograms(t *testing.T) {
	requireRoot(t)
	g := New(Config{PinDir: testBPFFS(t), Cgroup: testCgroup(t, "")})
	d, err := Compile(&policies.Policy{Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Install(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Remove(); err != nil {
			t.Error(err)
		}
	})
}
