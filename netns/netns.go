//go:build linux

package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Open opens the network namespace called name, as `ip netns add` creates
// it (/run/netns/NAME). A name containing a slash is taken as a path
// (/proc/PID/ns/net works too). The caller closes the file; its descriptor
// is what netlink's Config.NetNS and nftables.WithNetNSFd take.
func Open(name string) (*os.File, error) {
	path := name
	if !strings.Contains(name, "/") {
		path = filepath.Join("/run/netns", name)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || (st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC) {
		f.Close()
		return nil, fmt.Errorf("%s is not a network namespace; give a name from `ip netns list` or a path like /proc/PID/ns/net", path)
	}
	return f, nil
}
