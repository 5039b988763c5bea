package allocation

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/internal/durable"
	"github.com/nftpol/nftpol/internal/flock"
	"github.com/nftpol/nftpol/policies"
)

// Request asks for a block of ports for a new account.
type Request struct {
	// Name of the new account; its file is NAME.yaml.
	Name string
	// UID, or User to resolve through NSS: when User is set, UID must
	// be 0.
	UID  uint32
	User string
	// Size is the number of ports.
	Size int
	// Write makes Allocate write the account's file into the include
	// directory; without it Allocate only says what it would give.
	Write bool
}

// Result is what Allocate gave.
type Result struct {
	Name  string
	UID   uint32
	User  string
	Ports policies.PortRange
	// File is the account file written, "" without Request.Write.
	File string
}

// LockName is the lock file Allocate holds in the include directory while
// it reads the policy, chooses and writes. It starts with a dot, so policy
// loading skips it.
const LockName = ".nftpol-allocate.lock"

// LockTimeout bounds the wait for another allocation to finish.
const LockTimeout = 30 * time.Second

// Allocate finds the lowest free block of req.Size ports in the zone of the
// policy in configFile (see Find) and, with req.Write, writes NAME.yaml into
// the policy's include directory. opts go to every policies.Load.
//
// The name must be new, both among the accounts and as a file of the include
// directory; the UID must not have an account yet. The file is written to a
// temporary name, synced and renamed without replacing anything, and the
// whole policy is loaded again before Allocate returns: a file that would
// not validate is removed again and the error says why. With req.Write, a
// lock on LockName in the include directory is held from reading the
// policy to writing the file, so concurrent allocations never hand out the
// same ports.
func Allocate(ctx context.Context, configFile string, req Request, opts ...policies.Option) (Result, error) {
	p, err := policies.Load(configFile, opts...)
	if err != nil {
		return Result{}, fmt.Errorf("the policy must be valid before ports can be allocated: %w", err)
	}
	if req.Write {
		if p.Include == "" {
			return Result{}, fmt.Errorf("%s has no include directory, where allocate writes account files; set include: (like include: policies.d)", configFile)
		}
		unlock, err := lock(ctx, filepath.Join(p.Include, LockName))
		if err != nil {
			return Result{}, err
		}
		defer unlock()
		// Read again under the lock: another allocation may have
		// written its file since.
		if p, err = policies.Load(configFile, opts...); err != nil {
			return Result{}, fmt.Errorf("the policy must be valid before ports can be allocated: %w", err)
		}
	}
	acct, err := checkNew(p, req, opts)
	if err != nil {
		return Result{}, err
	}
	var used []policies.PortRange
	for _, a := range p.Accounts {
		used = append(used, a.Ports...)
	}
	block, err := Find(p.Zone, used, req.Size)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", configFile, err)
	}
	res := Result{Name: req.Name, UID: acct.UID, User: req.User, Ports: block}
	if !req.Write {
		return res, nil
	}
	res.File = filepath.Join(p.Include, req.Name+".yaml")
	if err := writeNew(res.File, accountFile(res)); err != nil {
		return Result{}, err
	}
	if _, err := policies.Load(configFile, opts...); err != nil {
		rmErr := os.Remove(res.File)
		if rmErr == nil {
			rmErr = durable.SyncDir(p.Include)
		}
		if rmErr != nil {
			return Result{}, fmt.Errorf("the policy does not validate with %s, and removing it failed (%v); remove it by hand: %w", res.File, rmErr, err)
		}
		return Result{}, fmt.Errorf("the policy would not validate with the new account, so %s was removed again: %w", res.File, err)
	}
	return res, nil
}

// checkNew checks that the request names a new, enforceable account, and
// returns it as the policy loader reads it. The loader itself checks the
// name, the user and the UID (one set of rules, one set of messages): the
// account is loaded alone, under the policy's own settings, from a
// temporary policy file.
func checkNew(p *policies.Policy, req Request, opts []policies.Option) (policies.Account, error) {
	if req.Name == "" || strings.ContainsAny(req.Name, `/\`) || strings.HasPrefix(req.Name, ".") {
		return policies.Account{}, fmt.Errorf("invalid account name %q; use letters, digits, '.', '_', '@' or '-', starting with a letter or digit", req.Name)
	}
	if req.User != "" && req.UID != 0 {
		return policies.Account{}, errors.New("give the account's user or its uid, not both")
	}
	for _, a := range p.Accounts {
		if a.Name == req.Name {
			return policies.Account{}, fmt.Errorf("account %q already exists in %s; choose another name, or widen its ports there", req.Name, a.File)
		}
	}
	if p.Include != "" {
		for _, ext := range []string{".yaml", ".yml", ".toml", ".json"} {
			f := filepath.Join(p.Include, req.Name+ext)
			if _, err := os.Lstat(f); err == nil {
				return policies.Account{}, fmt.Errorf("%s already exists; choose another name, or remove the file", f)
			}
		}
	}

	dir, err := os.MkdirTemp("", "nftpol-allocate-")
	if err != nil {
		return policies.Account{}, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "account.yaml")
	var b strings.Builder
	fmt.Fprintf(&b, "zone: %q\nmin_uid: %d\nexempt: [", p.Zone.String(), p.MinUID)
	for i, u := range p.Exempt {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatUint(uint64(u), 10))
	}
	b.WriteString("]\nprotocols: [")
	for i, proto := range p.Protocols {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(proto))
	}
	b.WriteString("]\n")
	// The zone's first port stands in for the ports, which are not chosen
	// yet: it is valid whatever the zone.
	b.WriteString(accountFile(Result{Name: req.Name, UID: req.UID, User: req.User, Ports: policies.PortRange{Lo: p.Zone.Lo, Hi: p.Zone.Lo}}))
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		return policies.Account{}, err
	}
	alone, err := policies.Load(file, opts...)
	var verr *policies.ValidationError
	if errors.As(err, &verr) {
		// Field and message only: the temporary file means nothing to
		// the caller.
		msgs := make([]string, len(verr.Problems))
		for i, pr := range verr.Problems {
			msgs[i] = "  " + pr.Field + ": " + pr.Message
		}
		return policies.Account{}, fmt.Errorf("the new account would not validate:\n%s", strings.Join(msgs, "\n"))
	}
	if err != nil {
		return policies.Account{}, err
	}
	acct := alone.Accounts[0]
	for _, a := range p.Accounts {
		if a.UID == acct.UID {
			return policies.Account{}, fmt.Errorf("uid %d already has the account %q in %s; one UID is one account, so widen its ports there instead", acct.UID, a.Name, a.File)
		}
	}
	return *acct, nil
}

// accountFile is the include file for one account. Names and users are
// quoted: YAML would read some of them (like "1e3", "no" or "null") as
// something else.
func accountFile(r Result) string {
	var b strings.Builder
	b.WriteString("accounts:\n")
	fmt.Fprintf(&b, "  - name: %s\n", strconv.Quote(r.Name))
	if r.User != "" {
		fmt.Fprintf(&b, "    user: %s\n", strconv.Quote(r.User))
	} else {
		fmt.Fprintf(&b, "    uid: %d\n", r.UID)
	}
	fmt.Fprintf(&b, "    ports: [%q]\n", r.Ports.String())
	return b.String()
}

// writeNew writes content to path atomically and never over an existing
// file: a temporary file in the same directory, synced, then renamed with
// RENAME_NOREPLACE (or hard-linked where the file system cannot do that),
// then the directory synced so the new name survives a crash.
func writeNew(path, content string) error {
	dir := filepath.Dir(path)
	header := fmt.Sprintf("# Written by nftpol allocate on %s; nftpol apply enforces it.\n", time.Now().UTC().Format(time.RFC3339))
	// A dot name: policy loading skips it until it is complete.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("writing the account file: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	_, err = tmp.WriteString(header + content)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp.Name(), unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// No RENAME_NOREPLACE here; link(2) refuses an existing name too.
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s already exists; choose another name, or remove the file", path)
	}
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	return durable.SyncDir(dir)
}

// lock takes an exclusive flock on path, creating it, and returns the
// function that releases it. It waits at most LockTimeout, or until ctx
// ends. The kernel releases the lock if the process dies, so a crashed
// allocation never blocks the next.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the allocation lock: %w", err)
	}
	if err := flock.Wait(ctx, f, LockTimeout, 20*time.Millisecond); err != nil {
		f.Close()
		if errors.Is(err, flock.ErrTimeout) {
			return nil, fmt.Errorf("another nftpol allocate has held %s for %v; try again, or find the process with `fuser %s`", path, LockTimeout, path)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}
