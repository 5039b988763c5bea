package compiler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// fuzzUsers stands in for NSS in FuzzCompileExport.
func fuzzUsers(name string) (uint32, error) {
	if uid, ok := map[string]uint32{"www-data": 33, "backup": 34, "admin12": 1012, "admin13": 1013}[name]; ok {
		return uid, nil
	}
	return 0, fmt.Errorf("%w %q", policies.ErrUnknownUser, name)
}

// FuzzCompileExport builds a policy from the fuzzed values (see fuzzPolicy),
// writes it as policy files and loads it; when Load accepts it, it compiles
// and exports it. Compile must accept every policy that Load accepts,
// Compile and Render must be deterministic, and nft must accept the export
// (nft -c -f, a check that loads nothing, run in a network namespace of its
// own). The nft check needs nft and CAP_NET_ADMIN; where either is missing
// it is left out, except under CI=true, where it fails.
//
// The policy is built rather than taken as raw bytes (policies.FuzzLoad does
// that): random bytes almost never make a valid policy with accounts, and
// the compiler only sees valid ones. Built from values, most inputs load, and
// the fuzzer explores zones, UIDs, adjacent and shared ranges, protocols,
// names and sizes.
func FuzzCompileExport(f *testing.F) {
	f.Fuzz(func(t *testing.T, table string, zoneLo, zoneHi uint16, minUID uint32, flags uint8, accounts, exempt []byte) {
		dir := t.TempDir()
		files := fuzzPolicy(table, zoneLo, zoneHi, minUID, flags, accounts, exempt)
		var main string
		for name, text := range files {
			path := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, text, 0o644); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(name, "/") {
				main = path
			}
		}
		p, err := policies.Load(main, policies.WithLookup(fuzzUsers), policies.WithPermissionCheck(false))
		if err != nil {
			return // policies.FuzzLoad checks the errors
		}
		rs, err := Compile(p)
		if err != nil {
			t.Fatalf("Compile refuses a policy that Load accepted: %v", err)
		}
		text := rules.RenderString(rs)
		again, err := Compile(p)
		if err != nil {
			t.Fatalf("second Compile: %v", err)
		}
		if text2 := rules.RenderString(again); text2 != text {
			t.Fatalf("two compiles of one policy export differently:\n%s\n---\n%s", text, text2)
		}
		if !rs.Owned() {
			t.Errorf("compiled ruleset lacks the owner mark")
		}
		for _, s := range rs.Sets {
			for _, e := range s.Elements {
				if e.Comment != rules.SanitizeComment(e.Comment) {
					t.Errorf("set %s: element comment %q needs sanitising", s.Name, e.Comment)
				}
			}
		}
		if msg := fuzzNFTCheck(t, dir, text); msg != "" {
			t.Fatalf("nft -c -f rejects the export of a valid policy: %s\nfiles: %s\nexport:\n%s", msg, files, text)
		}
	})
}

// fuzzTableName is the shape of a table name (policies checks it too, and
// refuses nft's keywords).
var fuzzTableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)

// maxFuzzAccounts bounds the accounts fuzzPolicy makes, so that one input
// stays quick to load, compile and check.
const maxFuzzAccounts = 2000

// fuzzPolicy builds policy files (name → content; the main file has no
// slash in its name) from fuzzed values. Settings come from the arguments
// and flags:
//
//	bit 0: action drop          bit 1: loopback enforce
//	bits 2-3: default protocols (0 left out, 1 tcp, 2 udp, 3 both)
//	bit 4: main file in YAML    bit 5: leave the zone out (the default)
//	bit 6: leave min_uid out    bit 7: include file in YAML
//
// Every 6 bytes of accounts make one account: a UID step (2 bytes) above the
// previous account's UID, a gap (1 byte) and a width (2 bytes, multiplied)
// for its ports, placed after the previous account's, and a byte of choices:
//
//	bits 0-1: protocols (0 left out, 1 tcp, 2 udp, 3 both)
//	bit 2: in the include directory    bit 3: a single port as a number
//	bit 4: the range written in two touching halves
//	bit 5: the previous account's ports, with its other protocol
//	bits 6-7: the name (short, with punctuation, 64 characters, from table)
//
// Each byte of exempt is one exempt UID. The values are bent towards a
// valid policy (the zone's ends in order, a table name of the right shape,
// ports cut at the end of the zone); what is still invalid (a UID beyond 32
// bits or exempt, a table name nft reserves) is refused by Load, as it must
// be.
func fuzzPolicy(table string, zoneLo, zoneHi uint16, minUID uint32, flags uint8, accounts, exempt []byte) map[string][]byte {
	main := map[string]any{"include": "policies.d"}
	if fuzzTableName.MatchString(table) {
		main["table"] = table
	} else {
		table = "t"
	}
	zone := policies.PortRange{Lo: 40010, Hi: 49999}
	if flags&(1<<5) == 0 {
		zone = policies.PortRange{Lo: max(1, min(zoneLo, zoneHi)), Hi: max(1, zoneLo, zoneHi)}
		main["zone"] = fmt.Sprintf("%d-%d", zone.Lo, zone.Hi)
	}
	if flags&(1<<6) == 0 {
		main["min_uid"] = minUID
	} else {
		minUID = 1000
	}
	if flags&1 != 0 {
		main["action"] = "drop"
	}
	if flags&2 != 0 {
		main["loopback"] = "enforce"
	}
	if protos := fuzzProtocols(flags >> 2); protos != nil {
		main["protocols"] = protos
	}
	var ex []uint32
	for _, b := range exempt {
		// Mostly below min_uid (system users), some far above it.
		ex = append(ex, uint32(b)+uint32(b&1)*5_000_000)
	}
	if len(ex) > 0 {
		main["exempt"] = ex
	}

	var inMain, inInclude []any
	uid := uint64(minUID)
	next := int(zone.Lo)
	var prev map[string]any
	for i := 0; i+6 <= len(accounts) && i/6 < maxFuzzAccounts; i += 6 {
		a := accounts[i : i+6]
		uid += uint64(a[0])<<8 | uint64(a[1])
		choice := a[5]
		acct := map[string]any{"uid": uid}
		uid++
		switch choice >> 6 {
		case 0:
			acct["name"] = fmt.Sprintf("u%d", i/6)
		case 1:
			acct["name"] = fmt.Sprintf("site-%d.example_org@host%d", i/6, len(accounts))
		case 2:
			acct["name"] = fmt.Sprintf("%064d", i/6)
		default:
			acct["name"] = fmt.Sprintf("%s%d", table, i/6)
		}
		if choice&(1<<5) != 0 && prev != nil && prev["protocols"] != nil && len(prev["protocols"].([]string)) == 1 {
			acct["ports"] = prev["ports"]
			other := "udp"
			if prev["protocols"].([]string)[0] == "udp" {
				other = "tcp"
			}
			acct["protocols"] = []string{other}
			acct["shared"] = true
		} else {
			// Mostly narrow ranges, some up to the whole port space.
			width := int(a[3])
			if a[4] != 0 {
				width *= int(a[4])
			}
			lo := next + int(a[2])
			if lo > int(zone.Hi) {
				break // the zone is full
			}
			hi := min(lo+width, int(zone.Hi))
			next = hi + 1
			switch {
			case choice&(1<<3) != 0:
				acct["ports"] = []any{lo}
				next = lo + 1
			case choice&(1<<4) != 0 && hi > lo:
				mid := (lo + hi) / 2
				acct["ports"] = []any{fmt.Sprintf("%d-%d", mid+1, hi), fmt.Sprintf("%d-%d", lo, mid)}
			default:
				acct["ports"] = []any{fmt.Sprintf("%d-%d", lo, hi)}
			}
			if protos := fuzzProtocols(choice); protos != nil {
				acct["protocols"] = protos
			}
		}
		prev = acct
		if acct["shared"] != nil {
			// Both protocols of these ports are taken now.
			delete(acct, "shared")
			prev = nil
		}
		if choice&(1<<2) != 0 {
			inInclude = append(inInclude, acct)
		} else {
			inMain = append(inMain, acct)
		}
	}
	if inMain != nil {
		main["accounts"] = inMain
	}
	files := map[string][]byte{}
	// JSON is YAML too: the main file in YAML is the same text read by
	// the YAML decoder.
	mainName := "policy.json"
	if flags&(1<<4) != 0 {
		mainName = "policy.yaml"
	}
	files[mainName] = mustJSON(main)
	incName := "policies.d/site.json"
	if flags&(1<<7) != 0 {
		incName = "policies.d/site.yaml"
	}
	if inInclude != nil {
		files[incName] = mustJSON(map[string]any{"accounts": inInclude})
	} else {
		files[incName] = []byte(`{"accounts": []}`)
	}
	return files
}

// fuzzProtocols turns two bits into a protocols list: nil (left out), [tcp],
// [udp] or [udp, tcp].
func fuzzProtocols(b uint8) []string {
	switch b & 3 {
	case 1:
		return []string{"tcp"}
	case 2:
		return []string{"udp"}
	case 3:
		return []string{"udp", "tcp"}
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

var fuzzNFT struct {
	once sync.Once
	// argv runs nft -c -f FILE, in a network namespace of its own when
	// unshare is there; nil when nft cannot check here.
	argv []string
	why  string
}

// fuzzNFTCheck returns nft's complaint about text, "" when nft accepts it or
// cannot check here.
func fuzzNFTCheck(t *testing.T, dir, text string) string {
	t.Helper()
	fuzzNFT.once.Do(func() {
		nft, err := exec.LookPath("nft")
		if err != nil {
			fuzzNFT.why = "nft is not installed"
			return
		}
		argv := []string{nft, "-c", "-f"}
		// A namespace of its own: nft -c validates against the
		// kernel's ruleset, and the host's must not play a part.
		if unshare, err := exec.LookPath("unshare"); err == nil && os.Geteuid() == 0 {
			argv = append([]string{unshare, "--net", "--"}, argv...)
		}
		probe := filepath.Join(os.TempDir(), fmt.Sprintf("nftpol-fuzz-probe-%d.nft", os.Getpid()))
		defer os.Remove(probe)
		if err := os.WriteFile(probe, []byte("table inet nftpol_probe {\n}\n"), 0o600); err != nil {
			fuzzNFT.why = err.Error()
			return
		}
		if out, err := runNFT(append(argv, probe)); err != nil {
			fuzzNFT.why = fmt.Sprintf("%s cannot check here: %v: %s", strings.Join(argv, " "), err, out)
			return
		}
		fuzzNFT.argv = argv
	})
	if fuzzNFT.argv == nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: the export must be checked with nft, but %s", fuzzNFT.why)
		}
		return ""
	}
	f := filepath.Join(dir, "export.nft")
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runNFT(append(fuzzNFT.argv, f))
	if err != nil {
		return fmt.Sprintf("%v: %s", err, out)
	}
	return ""
}

// runNFT runs argv for at most 30 seconds and returns its combined output.
func runNFT(argv []string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out: %w", err)
	}
	return out.String(), err
}
