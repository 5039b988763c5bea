//go:build linux

package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/sockets"
	"github.com/nftpol/nftpol/views"
)

// Where a UID stands.
const (
	standingAccount     = "account"
	standingExempt      = "exempt"
	standingSystem      = "below-min-uid"
	standingNoAccount   = "no-account"
	verdictUndetermined = "undetermined"
)

// PortsReport is what nftpol ports tells one UID.
type PortsReport struct {
	uid      uint32
	standing string
	view     *views.View // nil without one
	host     views.Host  // the policy's zone, min_uid, loopback
	// applied is when the last apply or restore ran, when known.
	applied time.Time
	entries []portsEntry
}

type portsEntry struct {
	f Finding
	// verdict is f's, but undetermined for a UID that is not enforced on
	// a zone port: whether an account has the port is not for it to know.
	verdict string
	why     string
	advice  string
}

// Ports reads uid's view in the run directory dir (asking the agent that
// serves it, else the files views.Publish wrote) and
// judges uid's own sockets of the namespace opts name with the same
// evaluation audit uses, from that view alone: what nftpol ports tells one
// UID. procRoot is where processes are looked up (/proc).
func Ports(dir string, uid uint32, procRoot string, opts ...sockets.Option) (*PortsReport, error) {
	r := &PortsReport{uid: uid}
	// A running agent answers from memory (views.Serve); without one the
	// files of the last apply or restore do.
	host, v, err := views.Ask(dir, uid)
	var hostErr error
	if errors.Is(err, views.ErrNoServer) {
		host, hostErr = readHostFile(dir)
		v, err = readViewFile(dir, uid)
	} else if err != nil {
		return nil, err
	} else if v == nil {
		err = fs.ErrNotExist
	}
	if hostErr == nil {
		r.host, r.applied = *host, host.AppliedAt
	}
	switch {
	case err == nil:
		r.view = v
		r.host = v.Host()
		if hostErr != nil {
			r.applied = time.Time{}
		}
	case errors.Is(err, fs.ErrNotExist) && hostErr == nil:
		// No view: no account, or not enforced at all.
	case errors.Is(err, fs.ErrNotExist) && errors.Is(hostErr, fs.ErrNotExist):
		return nil, fmt.Errorf("nothing published in %s: nftpol apply (or restore) has not run since boot, or --run-dir is not where it publishes; ask your provider", dir)
	case errors.Is(err, fs.ErrNotExist):
		return nil, hostErr
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w (a view is readable by its UID only: run nftpol ports as UID %d, or as root)", err, uid)
	default:
		return nil, err
	}
	switch {
	case r.view != nil && r.view.Exempt:
		r.standing = standingExempt
	case r.view != nil && r.view.Account != "":
		r.standing = standingAccount
	case uid < r.host.MinUID:
		r.standing = standingSystem
	default:
		r.standing = standingNoAccount
	}

	judge, err := New(r.host.Policy(r.view))
	if err != nil {
		return nil, err
	}
	list, err := sockets.List(opts...)
	if err != nil {
		return nil, err
	}
	if auto, err := sockets.ReadAutoPorts(opts...); err == nil {
		judge.SetAutoPorts(auto)
	}
	own := slices.DeleteFunc(list, func(s sockets.Socket) bool { return s.UID != uid })
	inodes := make([]uint64, len(own))
	for i, s := range own {
		inodes[i] = s.Inode
	}
	// Without root only the caller's own processes can be read: enough,
	// the sockets are its own.
	holders, _, err := sockets.Holders(procRoot, inodes)
	if err != nil {
		return nil, fmt.Errorf("finding the processes behind sockets in %s: %w", procRoot, err)
	}
	findings, err := judge.JudgeAll(own, holders)
	if err != nil {
		return nil, err
	}
	for _, f := range findings {
		r.entries = append(r.entries, r.entry(f, own))
	}
	return r, nil
}

// entry words f for its owner and says what to do about a block.
func (r *PortsReport) entry(f Finding, own []sockets.Socket) portsEntry {
	e := portsEntry{f: f, verdict: string(f.Verdict)}
	if f.Verdict != Blocked {
		return e
	}
	s := f.Socket
	proto := rules.Proto(s.Proto)
	switch f.Reason {
	case UnassignedZonePort:
		// Judged under a policy without the other accounts, every zone
		// port but the caller's reads as unassigned; for a UID that is
		// not enforced that is the only block there is.
		e.verdict = verdictUndetermined
		e.why = "a zone port: reachable only if some account has it (who has which port is not shown to you)"
		e.advice = fmt.Sprintf("serve outside the zone %s, or use a port an account of yours has", r.host.Zone)
		return e
	case TransportNotGranted:
		e.why = f.Explain()
		e.advice = "use tcp or udp"
		return e
	case ProtocolNotAssigned:
		e.why = fmt.Sprintf("your account has this port for %s only", strings.Join(r.protocolsWith(s.Port), " and "))
	default:
		if r.standing == standingNoAccount {
			e.why = "your UID has no account, so no ports"
		} else {
			e.why = "outside your ranges"
		}
	}
	switch port, ok := r.nearestFree(proto, s.Port, own); {
	case s.LocalOnly():
		e.advice = "local programs only? use a UNIX socket (loopback is enforced here)"
	case ok:
		e.advice = fmt.Sprintf("move it to port %d, the nearest port of your %s ranges that no socket of yours holds", port, proto)
		if localService(s.Port) {
			e.advice += "; local programs only? use a UNIX socket"
		}
	case r.standing == standingNoAccount:
		e.advice = "ask your provider for an account; local programs only? use a UNIX socket"
	case len(r.ranges(proto)) == 0:
		e.advice = fmt.Sprintf("your account has no %s ports: ask your provider; local programs only? use a UNIX socket", proto)
	default:
		e.advice = fmt.Sprintf("every port of your %s ranges is taken by a socket of yours; local programs only? use a UNIX socket", proto)
	}
	return e
}

// localService: ports of services that usually serve programs on the same
// machine only (databases, caches), for which a UNIX socket is the better
// answer than a port.
func localService(port uint16) bool {
	switch port {
	case 3306, 5432, 6379, 11211, 27017:
		return true
	}
	return false
}

func (r *PortsReport) ranges(proto rules.Proto) []policies.PortRange {
	if r.view == nil {
		return nil
	}
	return r.view.Ports[proto]
}

func (r *PortsReport) protocolsWith(port uint16) []string {
	var out []string
	for _, p := range []rules.Proto{rules.TCP, rules.UDP} {
		if slices.ContainsFunc(r.ranges(p), func(rg policies.PortRange) bool { return rg.Contains(port) }) {
			out = append(out, string(p))
		}
	}
	return out
}

// nearestFree returns the port of the caller's proto ranges nearest to
// port that none of its own sockets of proto holds (the lower one on a
// tie).
func (r *PortsReport) nearestFree(proto rules.Proto, port uint16, own []sockets.Socket) (uint16, bool) {
	held := map[uint16]bool{}
	for _, s := range own {
		if rules.Proto(s.Proto) == proto {
			held[s.Port] = true
		}
	}
	best, dist, found := uint16(0), 1<<17, false
	consider := func(p uint16) {
		d := int(p) - int(port)
		if d < 0 {
			d = -d
		}
		if !held[p] && (d < dist || d == dist && p < best) {
			best, dist, found = p, d, true
		}
	}
	for _, rg := range r.ranges(proto) {
		// Nearest first: the ends, or port itself when inside.
		for p := int(max(rg.Lo, min(port, rg.Hi))); p >= int(rg.Lo); p-- {
			if !held[uint16(p)] {
				consider(uint16(p))
				break
			}
		}
		for p := int(max(rg.Lo, min(port, rg.Hi))); p <= int(rg.Hi); p++ {
			if !held[uint16(p)] {
				consider(uint16(p))
				break
			}
		}
	}
	return best, found
}

func (r *PortsReport) Blocked() int {
	n := 0
	for _, e := range r.entries {
		if e.verdict == string(Blocked) {
			n++
		}
	}
	return n
}

// readViewFile reads uid's view in dir.
func readViewFile(dir string, uid uint32) (*views.View, error) {
	b, err := readSmall(filepath.Join(dir, views.UIDDir, strconv.FormatUint(uint64(uid), 10)))
	if err != nil {
		return nil, err
	}
	v, err := views.ParseView(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, views.UIDDir, strconv.FormatUint(uint64(uid), 10)), err)
	}
	return v, nil
}

func readHostFile(dir string) (*views.Host, error) {
	path := filepath.Join(dir, views.HostFile)
	b, err := readSmall(path)
	if err != nil {
		return nil, err
	}
	h, err := views.ParseHost(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}

// readSmall reads a file of at most 1 MiB: a view is a few hundred bytes,
// and root reading one with --uid reads a file its UID owns.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	if err == nil && len(b) > 1<<20 {
		err = fmt.Errorf("%s: larger than 1 MiB", path)
	}
	return b, err
}

func (r *PortsReport) standingText() string {
	switch r.standing {
	case standingAccount:
		return fmt.Sprintf("UID %d is account %s: nftpol lets its daemons serve clients from outside on these ports only:", r.uid, r.view.Account)
	case standingExempt:
		return fmt.Sprintf("UID %d is exempt: nftpol does not limit where it serves (zone ports still take new connections only where an account has them).", r.uid)
	case standingSystem:
		return fmt.Sprintf("UID %d is not enforced (below min_uid %d): nftpol does not limit where it serves (zone ports still take new connections only where an account has them).", r.uid, r.host.MinUID)
	}
	return fmt.Sprintf("UID %d has no account: it can serve clients from outside on no port. Ask your provider for an account.", r.uid)
}

func (r *PortsReport) WriteText(w io.Writer) error {
	fmt.Fprintln(w, r.standingText())
	if r.standing == standingAccount {
		for _, p := range []rules.Proto{rules.TCP, rules.UDP} {
			rs := r.ranges(p)
			text := "none"
			if len(rs) > 0 {
				text = joinRanges(rs)
			}
			fmt.Fprintf(w, "  %-4s %s\n", p, text)
		}
	}
	loop := "loopback (127.0.0.1, ::1) is not enforced"
	if r.host.Loopback == policies.LoopbackEnforce {
		loop = "loopback is enforced too"
	}
	fmt.Fprintf(w, "Zone %s; %s.", r.host.Zone, loop)
	if !r.applied.IsZero() {
		fmt.Fprintf(w, " Policy applied %s", r.applied.UTC().Format("2006-01-02 15:04:05 MST"))
		if r.view != nil {
			fmt.Fprintf(w, "; yours last changed %s", r.view.PublishedAt.UTC().Format("2006-01-02 15:04:05 MST"))
		}
		fmt.Fprint(w, ".")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)

	if len(r.entries) == 0 {
		fmt.Fprintln(w, "You have no listening TCP or bound UDP socket.")
	} else {
		fmt.Fprintln(w, "Your sockets:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  PROTO\tADDRESS\tPROCESS\tVERDICT")
		for _, e := range r.entries {
			verdict := e.verdict
			if e.why != "" {
				verdict += ": " + e.why
			}
			if e.f.MaybeClient {
				verdict += " (automatic UDP port: may be a client)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", e.f.Socket.Proto, e.f.Socket.AddrPort(), processes(e.f.Processes), verdict)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		var advice []string
		for _, e := range r.entries {
			if e.advice != "" {
				advice = append(advice, fmt.Sprintf("  %s %s: %s", e.f.Socket.Proto, e.f.Socket.AddrPort(), e.advice))
			}
		}
		if len(advice) > 0 {
			fmt.Fprintln(w, "\nWhat to do:")
			fmt.Fprintln(w, strings.Join(advice, "\n"))
		}
	}
	fmt.Fprintln(w, "\nRecent violations: not available without root (the kernel keeps them for root only; your provider sees them with nftpol status).")
	return nil
}

func joinRanges(rs []policies.PortRange) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ", ")
}

// The JSON form of ports; field names are an interface.
type (
	portsJSON struct {
		UID      uint32 `json:"uid"`
		Standing string `json:"standing"`
		Account  string `json:"account,omitempty"`
		Enforced bool   `json:"enforced"`
		// Ports per protocol, as policy files write ranges.
		Ports       map[string][]string `json:"ports"`
		Zone        string              `json:"zone"`
		MinUID      uint32              `json:"min_uid"`
		Loopback    string              `json:"loopback"`
		AppliedAt   *time.Time          `json:"applied_at,omitempty"`
		PublishedAt *time.Time          `json:"published_at,omitempty"`
		Sockets     []portsSocketJSON   `json:"sockets"`
		Summary     map[string]int      `json:"summary"`
		// Violations is null: not available without root.
		Violations     []struct{} `json:"violations"`
		ViolationsNote string     `json:"violations_note"`
	}
	portsSocketJSON struct {
		Proto       string        `json:"proto"`
		Address     string        `json:"address"`
		Port        uint16        `json:"port"`
		Interface   uint32        `json:"interface,omitempty"`
		Inode       uint64        `json:"inode"`
		Processes   []processJSON `json:"processes"`
		Verdict     string        `json:"verdict"`
		Reason      string        `json:"reason,omitempty"`
		Explanation string        `json:"explanation,omitempty"`
		Advice      string        `json:"advice,omitempty"`
		MaybeClient bool          `json:"maybe_client,omitempty"`
	}
)

func (r *PortsReport) WriteJSON(w io.Writer) error {
	j := portsJSON{UID: r.uid, Standing: r.standing, Ports: map[string][]string{},
		Enforced: r.standing == standingAccount || r.standing == standingNoAccount,
		Zone:     r.host.Zone.String(), MinUID: r.host.MinUID, Loopback: string(r.host.Loopback),
		Sockets: []portsSocketJSON{}, Summary: map[string]int{},
		ViolationsNote: "not available without root: the kernel keeps them for root only (nftpol status)"}
	if r.view != nil {
		j.Account = r.view.Account
		t := r.view.PublishedAt
		j.PublishedAt = &t
		for p, rs := range r.view.Ports {
			for _, rg := range rs {
				j.Ports[string(p)] = append(j.Ports[string(p)], rg.String())
			}
		}
	}
	if !r.applied.IsZero() {
		t := r.applied
		j.AppliedAt = &t
	}
	for _, v := range Verdicts {
		j.Summary[string(v)] = 0
	}
	for _, e := range r.entries {
		j.Summary[e.verdict]++
		s := portsSocketJSON{Proto: string(e.f.Socket.Proto), Address: e.f.Socket.Addr.String(), Port: e.f.Socket.Port,
			Interface: e.f.Socket.Interface, Inode: e.f.Socket.Inode, Processes: []processJSON{},
			Verdict: e.verdict, Explanation: e.why, Advice: e.advice, MaybeClient: e.f.MaybeClient}
		if e.verdict == string(Blocked) {
			s.Reason = string(e.f.Reason)
		}
		for _, p := range e.f.Processes {
			s.Processes = append(s.Processes, processJSON{p.PID, p.Command})
		}
		j.Sockets = append(j.Sockets, s)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(j)
}
