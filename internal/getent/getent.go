// Package getent asks the system's name service (NSS: /etc/passwd, LDAP,
// sssd, ...) for users through getent(1), which goes through NSS as any C
// program does. nftpol is built without cgo (its processes start without
// the dynamic loader and libc's threads), and so cannot call NSS itself.
//
// This is the one place user names from policy files reach another
// program: as arguments after "--", never through a shell (see
// policies.TestNothingRunsPrograms).
package getent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/nftpol/nftpol/internal/passwd"
)

// Timeout bounds one getent run: a directory server that does not answer
// must not hang an apply for good.
const Timeout = time.Minute

// Command is the getent program, found in PATH (tests point it elsewhere).
var Command = "getent"

// Passwd returns the UIDs of those names the passwd database knows, by the
// names its entries carry (a case-blind directory may spell one otherwise
// than asked). A name it does not know is simply absent.
func Passwd(names []string) (map[string]uint32, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, Command, append([]string{"passwd", "--"}, names...)...)
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return nil, fmt.Errorf("getent passwd did not answer within %s", Timeout)
	case errors.As(err, &exit) && exit.ExitCode() == 2:
		// getent's "one or more keys not found"
	case err != nil:
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return nil, fmt.Errorf("getent passwd: %w", err)
	}
	found := map[string]uint32{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if name, uid, ok := passwd.Line(sc.Bytes()); ok {
			if _, dup := found[name]; !dup {
				found[name] = uid
			}
		}
	}
	return found, sc.Err()
}
