package views

import (
	"sync"
	"time"

	"github.com/nftpol/nftpol/rules"
)

// Index answers for one UID at a time what its view file would say, from a
// ruleset held in memory: how the agent serves `nftpol ports` without a
// file per account being written at each apply. The per-UID data is
// derived on the first lookup, not when the index is made, so an apply
// pays nothing for it.
type Index struct {
	rs     *rules.Ruleset
	at     time.Time
	source string

	once     sync.Once
	g        globals
	accounts map[uint32]*account
}

// NewIndex indexes rs, applied at at.
func NewIndex(rs *rules.Ruleset, at time.Time, source string) *Index {
	return &Index{rs: rs, at: at, source: source}
}

// Lookup returns the host file's content and uid's view file's content,
// view nil when uid has none (no account, not exempt). Safe from any
// goroutine.
func (ix *Index) Lookup(uid uint32) (host, view []byte) {
	ix.once.Do(func() { ix.g, ix.accounts = derive(ix.rs) })
	h := ix.g.host(ix.at, ix.source)
	host = appendHost(nil, &h)
	if a := ix.accounts[uid]; a != nil {
		v := ix.g.view(uid, a, ix.at)
		view = appendView(nil, &v)
	}
	return host, view
}
