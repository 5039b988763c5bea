// Package passwd parses passwd(5) lines: /etc/passwd as the policy loader
// reads it, and what getent prints.
package passwd

import (
	"bytes"
	"strconv"
)

// Line parses the name and UID of one passwd(5) line.
func Line(line []byte) (name string, uid uint32, ok bool) {
	f := bytes.SplitN(bytes.TrimRight(line, "\r\n"), []byte(":"), 4)
	if len(f) < 4 || len(f[0]) == 0 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(string(f[2]), 10, 32)
	if err != nil {
		return "", 0, false
	}
	return string(f[0]), uint32(n), true
}
