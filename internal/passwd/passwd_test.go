package passwd

import "testing"

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		name string
		uid  uint32
		ok   bool
	}{
		{"root:x:0:0:root:/root:/bin/bash\n", "root", 0, true},
		{"site:*:4294967295:1::/:", "site", 4294967295, true},
		{"site:*:4294967296:1::/:", "", 0, false},
		{"site:*:-1:1::/:", "", 0, false},
		{":x:1:1::/:", "", 0, false},
		{"short:x:1", "", 0, false},
	} {
		name, uid, ok := Line([]byte(tc.line))
		if name != tc.name || uid != tc.uid || ok != tc.ok {
			t.Errorf("Line(%q) = %q, %d, %v; want %q, %d, %v", tc.line, name, uid, ok, tc.name, tc.uid, tc.ok)
		}
	}
}
