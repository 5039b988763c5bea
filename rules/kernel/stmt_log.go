//go:build linux

package kernel

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// Logging: a packet rate limit and the log statement it guards.

// limitBurst is nft's default burst, which it leaves out when listing.
const limitBurst = 5

var limitUnits = map[rules.LimitUnit]expr.LimitTime{
	rules.PerSecond: expr.LimitTimeSecond,
	rules.PerMinute: expr.LimitTimeMinute,
}

func encodeLimit(w *ruleEncoder, s rules.Limit) error {
	unit, ok := limitUnits[s.Unit]
	if !ok {
		return fmt.Errorf("limit: unknown unit %q", s.Unit)
	}
	w.add(&expr.Limit{Type: expr.LimitTypePkts, Rate: s.Rate, Unit: unit, Burst: limitBurst})
	return nil
}

func decodeLimit(e *expr.Limit) (rules.Stmt, int) {
	if e.Type != expr.LimitTypePkts || e.Over || e.Burst != limitBurst {
		return nil, 0
	}
	for u, t := range limitUnits {
		if t == e.Unit {
			return rules.Limit{Rate: e.Rate, Unit: u}, 1
		}
	}
	return nil, 0
}

func encodeLog(w *ruleEncoder, s rules.Log) {
	if s.Group != 0 {
		w.add(&expr.Log{
			Key:   1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_GROUP,
			Data:  []byte(rules.SanitizeComment(s.Prefix)),
			Group: s.Group,
		})
		return
	}
	w.add(&expr.Log{
		Key:   1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_FLAGS,
		Data:  []byte(rules.SanitizeComment(s.Prefix)),
		Flags: expr.LogFlagsUID,
	})
}

func decodeLog(e *expr.Log) (rules.Stmt, int) {
	if e.Group != 0 && e.Flags == 0 && e.Key&^(1<<unix.NFTA_LOG_PREFIX|1<<unix.NFTA_LOG_GROUP) == 0 {
		return rules.Log{Prefix: string(e.Data), Group: e.Group}, 1
	}
	// The kernel reports the default level (warn) it filled in.
	if e.Flags == expr.LogFlagsUID && e.Group == 0 && (e.Level == 0 || e.Level == expr.LogLevelWarning) &&
		e.Key&^(1<<unix.NFTA_LOG_PREFIX|1<<unix.NFTA_LOG_FLAGS|1<<unix.NFTA_LOG_LEVEL) == 0 {
		return rules.Log{Prefix: string(e.Data)}, 1
	}
	return nil, 0
}
