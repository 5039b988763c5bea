package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// These tests run the nftpol binary on policy files in temporary
// directories. They touch no kernel state and need no root.

// allocatePolicy writes a main policy with an include directory and returns
// the nftpolRun for it (audit and allocate need no namespace).
func allocatePolicy(t *testing.T, main string, include map[string]string) nftpolRun {
	t.Helper()
	file := writePolicy(t, main)
	dir := filepath.Join(filepath.Dir(file), "policies.d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range include {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return nftpolRun{bin: buildBinary(t, "cmd/nftpol"), config: file}
}

// runLocal runs nftpol with --config only: allocate and validate need no
// namespace and no state directory.
func (n nftpolRun) runLocal(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	stdout, stderr, code, err := runExit(n.bin, append([]string{"--config", n.config}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return stdout, stderr, code
}

// runExit runs a short command, bounded by commandTimeout, and returns its
// output and exit code. err is set only when it could not run to its end.
func runExit(name string, args ...string) (stdout, stderr string, code int, err error) {
	stdout, stderr, err = runCommand(name, args...)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() > 0 {
		return stdout, stderr, exit.ExitCode(), nil
	}
	if err != nil {
		return stdout, stderr, 0, fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr, 0, nil
}

type allocJSON struct {
	Name  string `json:"name"`
	UID   int    `json:"uid"`
	Ports string `json:"ports"`
	Lo    int    `json:"lo"`
	Hi    int    `json:"hi"`
	File  string `json:"file"`
}

// TestAllocateConcurrentProcesses: eight nftpol processes allocating at once
// get disjoint blocks, and the policy validates with all eight files.
func TestAllocateConcurrentProcesses(t *testing.T) {
	n := allocatePolicy(t, "zone: 40010-40999\ninclude: policies.d\naccounts:\n  - {name: site12, uid: 1012, ports: [\"40010-40019\"]}\n", nil)
	const procs = 8
	results := make([]allocJSON, procs)
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() {
			stdout, stderr, code, err := runExit(n.bin, "--config", n.config, "allocate", "-o", "json",
				"--name", fmt.Sprintf("site%d", 20+i), "--uid", fmt.Sprint(1020+i), "--size", "10", "--write")
			switch {
			case err != nil:
				errs[i] = err
			case code != 0:
				errs[i] = fmt.Errorf("allocate %d exited %d: %s", i, code, stderr)
			default:
				errs[i] = json.Unmarshal([]byte(stdout), &results[i])
			}
		})
	}
	wg.Wait()
	var los []int
	for i, r := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if r.Hi-r.Lo != 9 || (r.Lo-40010)%10 != 0 {
			t.Errorf("%s got %s, want an aligned block of 10", r.Name, r.Ports)
		}
		los = append(los, r.Lo)
	}
	slices.Sort(los)
	// Disjoint, and the lowest free blocks: 40020, 40030, ... 40090.
	for i, lo := range los {
		if want := 40020 + 10*i; lo != want {
			t.Errorf("blocks start at %v, want 40020, 40030, ... 40090 (one each)", los)
			break
		}
	}
	stdout, stderr, code := n.runLocal(t, "validate")
	if code != 0 || !strings.Contains(stdout, "9 accounts") {
		t.Errorf("validate after %d allocations: exit %d\n%s%s", procs, code, stdout, stderr)
	}
}

// TestAllocateCLI: the printed block, a dry run, a written file that
// validates, a refused name, fragmentation and a full zone.
func TestAllocateCLI(t *testing.T) {
	n := allocatePolicy(t, `zone: 40010-40059
include: policies.d
accounts:
  - {name: site12, uid: 1012, ports: ["40010-40012", "40019-40021"]}
`, map[string]string{"site13.yaml": "accounts: [{name: site13, uid: 1013, ports: [\"40028-40059\"], protocols: [udp]}]\n"})

	// Free: 40013-40018 and 40022-40027, six ports each; no block of 5
	// aligned to 40010+5k fits, so the lowest unaligned one is given.
	stdout, stderr, code := n.runLocal(t, "allocate", "--name", "site14", "--uid", "1014", "--size", "5")
	if code != 0 || stdout != "site14 (uid 1014): 40013-40017 (5 ports)\n" {
		t.Fatalf("dry run: exit %d\n%s%s", code, stdout, stderr)
	}
	file := filepath.Join(filepath.Dir(n.config), "policies.d", "site14.yaml")
	if _, err := os.Stat(file); err == nil {
		t.Fatal("a dry run wrote a file")
	}
	stdout, stderr, code = n.runLocal(t, "allocate", "--name", "site14", "--uid", "1014", "--size", "5", "--write")
	if code != 0 || !strings.Contains(stdout, "Wrote "+file) {
		t.Fatalf("--write: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = n.runLocal(t, "validate")
	if code != 0 || !strings.Contains(stdout, "3 accounts") {
		t.Errorf("validate with the written file: exit %d\n%s%s", code, stdout, stderr)
	}
	if _, stderr, code = n.runLocal(t, "allocate", "--name", "site14", "--uid", "1015", "--size", "1", "--write"); code != 1 || !strings.Contains(stderr, `account "site14" already exists`) {
		t.Errorf("a taken name: exit %d: %s", code, stderr)
	}
	// Left: 40018 and 40022-40027.
	if _, stderr, code = n.runLocal(t, "allocate", "--name", "site15", "--uid", "1015", "--size", "7"); code != 1 ||
		!strings.Contains(stderr, "no free block of 7 ports in the zone 40010-40059: 7 ports are free, the largest free block is 40022-40027 (6 ports)") {
		t.Errorf("too big a block: exit %d: %s", code, stderr)
	}
	stdout, _, code = n.runLocal(t, "allocate", "--name", "site15", "--uid", "1015", "--size", "6", "--write")
	if code != 0 || !strings.HasPrefix(stdout, "site15 (uid 1015): 40022-40027 (6 ports)\n") {
		t.Errorf("the last block of 6: exit %d: %s", code, stdout)
	}
	stdout, _, code = n.runLocal(t, "allocate", "--name", "site16", "--uid", "1016", "--size", "1", "--write")
	if code != 0 || !strings.HasPrefix(stdout, "site16 (uid 1016): 40018 (1 port)\n") {
		t.Errorf("the last port: exit %d: %s", code, stdout)
	}
	if _, stderr, code = n.runLocal(t, "allocate", "--name", "site17", "--uid", "1017", "--size", "1"); code != 1 ||
		!strings.Contains(stderr, "every port of the zone 40010-40059 belongs to an account") {
		t.Errorf("full zone: exit %d: %s", code, stderr)
	}
	if _, _, code = n.runLocal(t, "validate"); code != 0 {
		t.Errorf("the policy does not validate after allocations")
	}
}
