package main

import (
	"testing"
)

func TestAuditFlags(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	for _, args := range [][]string{
		{"audit", "--grace", "-1s"},
		{"audit", "-o", "yaml"},
	} {
		if code, _, errOut := nftpol(t, append([]string{"--config", f}, args...)...); code != 1 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want an error", args, code, errOut)
		}
	}
}
