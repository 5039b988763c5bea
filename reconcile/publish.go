package reconcile

import (
	"fmt"
	"time"

	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
	"github.com/nftpol/nftpol/state"
	"github.com/nftpol/nftpol/views"
)

// publish writes the per-UID views of rs, just recorded in the state with
// the kernel's identity id, into the run directory (views.Publish). The
// state read at the start of the command is what the previous publication
// was made from, if the run directory says so: then only the accounts that
// changed are written. It runs after the state is committed, so a view
// never shows what the state (and restore) would not install.
func (e *Engine) publish(rs *rules.Ruleset, id *kernel.Identity) error {
	if e.cfg.RunDir == "" {
		return nil
	}
	defer e.cfg.Phase("views published")
	var prev *views.Publication
	if st, err := e.Recorded(); err == nil {
		pub := PublicationOf(st)
		prev = &pub
	}
	if _, err := views.Publish(e.cfg.RunDir, views.Publication{Ruleset: rs, Source: source(id)}, prev, time.Now().UTC()); err != nil {
		return fmt.Errorf("the kernel and the state are updated, but publishing the account views in %s failed: %w; "+
			"nftpol ports shows the previous ones until an apply or restore succeeds", e.cfg.RunDir, err)
	}
	return nil
}

// PublicationOf is what the views of st are published from: its ruleset,
// named by the kernel's identity it records (as apply publishes them).
func PublicationOf(st *state.State) views.Publication {
	return views.Publication{Ruleset: st.Ruleset(), Source: source(st.Kernel)}
}

// source names the ruleset the kernel held at id for views.Publication:
// every commit changes the generation, so no two rulesets share one.
func source(id *kernel.Identity) string {
	if id == nil {
		return ""
	}
	return fmt.Sprintf("%s/%d/%d", id.BootID, id.NetnsCookie, id.Generation)
}
