package policies

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
)

// lookupNSS resolves a user name the way the rest of the system does.
//
// os/user goes through NSS (so LDAP and sssd users resolve too) only in cgo
// builds; a CGO_ENABLED=0 binary reads /etc/passwd alone and would report
// directory users as unknown.
func lookupNSS(name string) (uint32, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	switch {
	case errors.As(err, &unknown):
		return 0, fmt.Errorf("%w %q", ErrUnknownUser, name)
	case err != nil:
		return 0, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q has a non-numeric uid %q", name, u.Uid)
	}
	return uint32(uid), nil
}

type userResult struct {
	uid uint32
	err error
}

// resolve looks a user name up once per Load.
func (l *loader) resolve(name string) (uint32, error) {
	r, ok := l.users[name]
	if !ok {
		r.uid, r.err = l.lookup(name)
		l.users[name] = r
	}
	return r.uid, r.err
}

// lookupMessage is the problem for a user name that did not resolve.
func lookupMessage(name string, err error) string {
	if errors.Is(err, ErrUnknownUser) {
		return fmt.Sprintf("unknown user %q; name an existing user, or give uid: instead", name)
	}
	return fmt.Sprintf("cannot look up user %q: %v", name, err)
}
