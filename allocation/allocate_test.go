package allocation

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nftpol/nftpol/policies"
)

func lookup(name string) (uint32, error) {
	if uid, ok := map[string]uint32{"admin20": 1020, "www-data": 33}[name]; ok {
		return uid, nil
	}
	return 0, fmt.Errorf("%w %q", policies.ErrUnknownUser, name)
}

var opts = []policies.Option{policies.WithLookup(lookup)}

// setup writes a main policy file (with an include directory unless main
// has no include:) and the given include files; it returns the main file.
func setup(t *testing.T, main string, include map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "policies.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range include {
		if err := os.WriteFile(filepath.Join(dir, "policies.d", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(dir, "nftpol.yaml")
	if err := os.WriteFile(file, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

const mainPolicy = `zone: 40010-40099
exempt: [www-data]
include: policies.d
accounts:
  - {name: site12, uid: 1012, ports: ["40010-40019"]}
`

func TestAllocateDryRun(t *testing.T) {
	file := setup(t, mainPolicy, map[string]string{
		"site13.yaml": "accounts: [{name: site13, uid: 1013, ports: [\"40030-40039\"], protocols: [udp]}]\n",
	})
	res, err := Allocate(context.Background(), file, Request{Name: "site20", UID: 1020, Size: 10}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	// site13 has 40030-40039 for udp only; it is still not free.
	if res.Ports != r(40020, 40029) || res.UID != 1020 || res.File != "" {
		t.Errorf("got %+v, want 40020-40029 for uid 1020 and no file", res)
	}
	res, err = Allocate(context.Background(), file, Request{Name: "site20", UID: 1020, Size: 20}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	// Blocks of 20 start at 40010+20k: 40010 and 40030 are taken.
	if res.Ports != r(40050, 40069) {
		t.Errorf("20 ports: got %v, want 40050-40069", res.Ports)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(file), "policies.d", "site20.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dry run wrote a file: %v", err)
	}
}

func TestAllocateWrite(t *testing.T) {
	for _, req := range []Request{
		{Name: "site20", UID: 1020, Size: 10, Write: true},
		{Name: "site20", User: "admin20", Size: 10, Write: true},
	} {
		t.Run(fmt.Sprintf("uid %d user %q", req.UID, req.User), func(t *testing.T) {
			file := setup(t, mainPolicy, nil)
			res, err := Allocate(context.Background(), file, req, opts...)
			if err != nil {
				t.Fatal(err)
			}
			want := filepath.Join(filepath.Dir(file), "policies.d", "site20.yaml")
			if res.File != want || res.Ports != r(40020, 40029) || res.UID != 1020 {
				t.Errorf("got %+v, want 40020-40029 for uid 1020 in %s", res, want)
			}
			text, err := os.ReadFile(want)
			if err != nil {
				t.Fatal(err)
			}
			if req.User != "" && !strings.Contains(string(text), `user: "admin20"`) {
				t.Errorf("the file does not name the user:\n%s", text)
			}
			// The written file validates, and the policy now has it.
			p, err := policies.Load(file, opts...)
			if err != nil {
				t.Fatalf("policy with the written file: %v\n%s", err, text)
			}
			if len(p.Accounts) != 2 || p.Accounts[1].Name != "site20" || p.Accounts[1].UID != 1020 ||
				len(p.Accounts[1].Ports) != 1 || p.Accounts[1].Ports[0] != r(40020, 40029) {
				t.Errorf("accounts after allocate: %+v", p.Accounts)
			}
			fi, err := os.Stat(want)
			if err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("file mode: %v %v", fi.Mode(), err)
			}
			// No temporary file is left behind; the lock file stays, hidden.
			entries, _ := os.ReadDir(filepath.Dir(want))
			for _, e := range entries {
				if e.Name() != "site20.yaml" && e.Name() != LockName {
					t.Errorf("left behind: %s", e.Name())
				}
			}
			// The same name again is refused, now that the file exists.
			_, err = Allocate(context.Background(), file, Request{Name: "site20", UID: 1021, Size: 10, Write: true}, opts...)
			if err == nil || !strings.Contains(err.Error(), `account "site20" already exists`) {
				t.Errorf("second allocation of the name: %v", err)
			}
		})
	}
}

func TestAllocateRefuses(t *testing.T) {
	tests := []struct {
		name    string
		main    string
		include map[string]string
		req     Request
		want    string
	}{
		{"name in the policy", mainPolicy, nil,
			Request{Name: "site12", UID: 1020, Size: 10, Write: true}, `account "site12" already exists in `},
		{"name as a file of another format", mainPolicy, map[string]string{"site20.json": `{"accounts": []}`},
			Request{Name: "site20", UID: 1020, Size: 10, Write: true}, "site20.json already exists"},
		{"uid with an account", mainPolicy, nil,
			Request{Name: "site20", UID: 1012, Size: 10, Write: true}, `uid 1012 already has the account "site12"`},
		{"uid below min_uid", mainPolicy, nil,
			Request{Name: "site20", UID: 500, Size: 10, Write: true}, "uid: uid 500 is below min_uid 1000"},
		{"exempt user", mainPolicy, nil,
			Request{Name: "site20", User: "www-data", Size: 10, Write: true}, "is exempt"},
		{"unknown user", mainPolicy, nil,
			Request{Name: "site20", User: "nobody-here", Size: 10, Write: true}, `unknown user "nobody-here"`},
		{"bad name", mainPolicy, nil,
			Request{Name: "site 20", UID: 1020, Size: 10, Write: true}, `name: invalid name "site 20"`},
		{"path as name", mainPolicy, nil,
			Request{Name: "../site20", UID: 1020, Size: 10, Write: true}, `invalid account name "../site20"`},
		{"no include directory", "zone: 40010-40099\n", nil,
			Request{Name: "site20", UID: 1020, Size: 10, Write: true}, "has no include directory"},
		{"invalid policy", mainPolicy, map[string]string{"bad.yaml": "accounts: [{name: bad, uid: 1030, ports: [50000]}]\n"},
			Request{Name: "site20", UID: 1020, Size: 10}, "the policy must be valid before ports can be allocated"},
		{"full zone", "zone: 40010-40019\ninclude: policies.d\naccounts: [{name: a, uid: 1012, ports: [\"40010-40019\"]}]\n", nil,
			Request{Name: "site20", UID: 1020, Size: 1, Write: true}, "every port of the zone 40010-40019 belongs to an account"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := setup(t, tt.main, tt.include)
			_, err := Allocate(context.Background(), file, tt.req, opts...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(file), "policies.d", "site20.yaml")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused allocation wrote a file: %v", err)
			}
		})
	}
}

// TestAllocateConcurrent: allocations racing in one process still get
// disjoint ports (flock locks are per open file, so goroutines contend
// like processes do; integration/allocate_test.go races processes).
func TestAllocateConcurrent(t *testing.T) {
	file := setup(t, "zone: 40010-40999\ninclude: policies.d\n", nil)
	const n = 8
	results := make([]Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = Allocate(context.Background(), file,
				Request{Name: fmt.Sprintf("site%d", 20+i), UID: uint32(1020 + i), Size: 10, Write: true}, opts...)
		})
	}
	wg.Wait()
	seen := map[policies.PortRange]string{}
	for i, res := range results {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if other, ok := seen[res.Ports]; ok {
			t.Errorf("%s and %s both got %v", other, res.Name, res.Ports)
		}
		seen[res.Ports] = res.Name
	}
	p, err := policies.Load(file, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Accounts) != n {
		t.Errorf("%d accounts after %d allocations", len(p.Accounts), n)
	}
}
