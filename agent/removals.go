package agent

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nftpol/nftpol/policies"
)

// The removal guard over a burst of changes. `apply` refuses to remove more
// than half of the installed accounts in one go; the agent applies each
// change of the include directory as it comes, so config management that
// deletes account files one at a time (or a broken run that empties the
// directory file by file) would pass that test at every step. So the agent
// judges removals against the accounts installed when the burst began: a
// burst lasts while changes that remove accounts come less than
// burstWindow apart. Once more than half of those accounts would be gone
// (when more than guardMinAccounts were installed), nothing more is applied
// until the files bring them back or an operator confirms with
// `nftpol apply --allow-removals`.
const (
	burstWindow      = time.Minute
	guardMinAccounts = 10
)

// removals remembers the accounts of the burst's start.
type removals struct {
	base map[uint32]string // uid -> account, installed when the burst began
	last time.Time         // when an applied change last removed accounts
}

// enforced returns the UIDs p gives ports to, with their account names.
func enforced(p *policies.Policy) map[uint32]string {
	m := make(map[uint32]string, len(p.Accounts))
	for _, a := range p.Accounts {
		if len(a.Ports) > 0 {
			m[a.UID] = a.Name
		}
	}
	return m
}

// check says whether going from installed (the policy enforced now) to next
// is allowed at now; it does not record anything (see applied).
func (r *removals) check(now time.Time, installed, next *policies.Policy) error {
	if installed == nil {
		return nil
	}
	base := r.base
	if base == nil || now.Sub(r.last) > burstWindow {
		base = enforced(installed)
	}
	if len(base) <= guardMinAccounts {
		return nil
	}
	want := enforced(next)
	var gone []string
	for uid, name := range base {
		if _, ok := want[uid]; !ok {
			gone = append(gone, fmt.Sprintf("%s (uid %d)", name, uid))
		}
	}
	if 2*len(gone) <= len(base) {
		return nil
	}
	sort.Strings(gone)
	removed := len(gone)
	const show = 10
	more := ""
	if len(gone) > show {
		gone, more = gone[:show], fmt.Sprintf(" and %d more", len(gone)-show)
	}
	return fmt.Errorf("refusing to remove %d of the %d accounts installed when this burst of changes began (more than half, within %s of each other): %s%s; "+
		"the last good policy stays enforced. If the policy really lost them, run nftpol apply --allow-removals",
		removed, len(base), burstWindow, strings.Join(gone, ", "), more)
}

// applied records that the change from installed to next was applied at
// now.
func (r *removals) applied(now time.Time, installed, next *policies.Policy) {
	if installed == nil {
		return
	}
	if r.base == nil || now.Sub(r.last) > burstWindow {
		r.base = enforced(installed)
	}
	want := enforced(next)
	for uid := range enforced(installed) {
		if _, ok := want[uid]; !ok {
			r.last = now
			return
		}
	}
}

// reset ends the burst: an operator confirmed the removals.
func (r *removals) reset() { r.base, r.last = nil, time.Time{} }
