package integration

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scalePolicy returns a policy of n accounts in the zone 10000-65000:
// account i is acct-NNNNNN, uid 100000+i, port 10000+i, TCP and UDP. With
// widenLast the last account's port becomes a range of 11 ports, a change
// to one account of the same shape whatever n is.
func scalePolicy(n int, widenLast bool) string {
	var b strings.Builder
	b.WriteString("zone: \"10000-65000\"\nmin_uid: 1000\naccounts:\n")
	for i := range n {
		ports := fmt.Sprint(10000 + i)
		if widenLast && i == n-1 {
			ports = fmt.Sprintf("\"%d-%d\"", 10000+i, 10000+i+10)
		}
		fmt.Fprintf(&b, "  - {name: acct-%06d, uid: %d, ports: [%s], protocols: [tcp, udp]}\n", i, 100000+i, ports)
	}
	return b.String()
}

// scaleRun applies scalePolicy(n) to a fresh namespace, then widens the
// last account, and returns the netlink messages of that one-account change.
// At full size it also checks every element with nft's own reader.
func scaleRun(t *testing.T, bin string, n int, verify bool) int {
	t.Helper()
	ns := newNetns(t, fmt.Sprintf("n%d", n))
	r := nftpolRun{bin: bin, config: writePolicy(t, scalePolicy(n, false)), netns: ns, stateDir: t.TempDir()}

	start := time.Now()
	full, raw := r.runJSON(t, 0, "apply", "-o", "json")
	applyTime := time.Since(start)
	if full.Applied == nil || full.TableAction != "create" || len(full.Accounts) != n {
		t.Fatalf("n=%d: first apply: table_action %q, %d accounts, applied %v; want create, %d accounts\n%.2000s",
			n, full.TableAction, len(full.Accounts), full.Applied, n, raw)
	}
	t.Logf("n=%d: first apply: %v, %d netlink messages, %d elements",
		n, applyTime.Round(time.Millisecond), full.Applied.Messages, full.Applied.Elements)

	if verify {
		for _, proto := range []string{"tcp", "udp"} {
			// An account's elements are in the shard of its UID's
			// low bits, and only there.
			start := time.Now()
			got := map[string]string{}
			for k := range 8 {
				shard := fmt.Sprintf("%s_ports_%d", proto, k)
				for key, c := range nftSetElements(t, ns, shard) {
					if uid, _, _ := strings.Cut(key, " . "); func() bool { u, err := strconv.Atoi(uid); return err != nil || u&7 != k }() {
						t.Errorf("n=%d: set %s holds %s, of another shard", n, shard, key)
					}
					got[key] = c
				}
			}
			set := proto + "_ports_*"
			t.Logf("n=%d: nft -j list set %s: %d elements in %v", n, set, len(got), time.Since(start).Round(time.Millisecond))
			if len(got) != n {
				t.Errorf("n=%d: set %s holds %d elements, want %d", n, set, len(got), n)
			}
			for _, i := range []int{0, n / 2, n - 1} {
				key := fmt.Sprintf("%d . %d", 100000+i, 10000+i)
				if c, ok := got[key]; !ok || c != fmt.Sprintf("acct-%06d", i) {
					t.Errorf("n=%d: set %s: element %s: present %v, comment %q; want present with comment acct-%06d",
						n, set, key, ok, c, i)
				}
			}
			var missing []string
			for i := range n {
				key := fmt.Sprintf("%d . %d", 100000+i, 10000+i)
				if _, ok := got[key]; !ok {
					missing = append(missing, key)
				}
				delete(got, key)
			}
			if len(missing) > 0 || len(got) > 0 {
				extra := slices.Sorted(maps.Keys(got))
				t.Errorf("n=%d: set %s: %d elements missing (first %v), %d unexpected (first %v)",
					n, set, len(missing), missing[:min(5, len(missing))], len(extra), extra[:min(5, len(extra))])
			}
		}
		start = time.Now()
		r.planExit(t, 0)
		t.Logf("n=%d: plan (read back and diff): %v", n, time.Since(start).Round(time.Millisecond))
	}

	r.setPolicy(t, scalePolicy(n, true))
	start = time.Now()
	change, raw := r.runJSON(t, 0, "apply", "-o", "json")
	changeTime := time.Since(start)
	if change.Applied == nil || len(change.Accounts) != 1 || len(change.Chains) != 0 {
		t.Fatalf("n=%d: one-account change: %d accounts, %d chain changes, applied %v; want 1, 0\n%s",
			n, len(change.Accounts), len(change.Chains), change.Applied, raw)
	}
	if a := change.Accounts[0]; a.UID != 100000+n-1 || a.Action != "change" {
		t.Errorf("n=%d: changed account uid %d action %q, want uid %d change", n, a.UID, a.Action, 100000+n-1)
	}
	t.Logf("n=%d: one-account change: %d netlink messages (%d elements), apply took %v",
		n, change.Applied.Messages, change.Applied.Elements, changeTime.Round(time.Millisecond))
	if verify {
		r.planExit(t, 0)
		// The last account moved (rules.Overlay): its old element
		// stays in the per-account set, its new one is in the moved
		// ports.
		old := fmt.Sprintf("%d . %d", 100000+n-1, 10000+n-1)
		last := fmt.Sprintf("%d . %d-%d", 100000+n-1, 10000+n-1, 10000+n-1+10)
		name := fmt.Sprintf("acct-%06d", n-1)
		shard := (100000 + n - 1) & 7
		want := (n + 7 - shard) / 8 // UIDs 100000.. of that shard (100000 is of shard 0)
		for _, p := range []string{"tcp", "udp"} {
			set := fmt.Sprintf("%s_ports_%d", p, shard)
			if got := nftSetElements(t, ns, set); len(got) != want || got[old] != name {
				t.Errorf("n=%d: after the change set %s holds %d elements, %s present: %v; want %d, true",
					n, set, len(got), old, got[old] != "", want)
			}
			if got := nftSetElements(t, ns, p+"_moved_ports"); len(got) != 1 || got[last] != name {
				t.Errorf("n=%d: after the change set %s_moved_ports holds %v, want %s only", n, p, got, last)
			}
		}
	}
	return change.Applied.Messages
}

// TestApplyScale50000 applies 50,000 accounts, checks them in the kernel
// with nft's reader and nftpol's, and shows that a change to one account
// costs as many netlink messages at 50,000 accounts as at 3.
func TestApplyScale50000(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	small := scaleRun(t, bin, 3, false)
	large := scaleRun(t, bin, 50000, true)
	t.Logf("one-account change: %d netlink messages at 3 accounts, %d at 50000", small, large)
	if large != small {
		t.Errorf("one-account change: %d netlink messages at 50000 accounts, %d at 3: the cost grows with the number of accounts",
			large, small)
	}
}
