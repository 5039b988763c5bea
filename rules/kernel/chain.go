//go:build linux

package kernel

import (
	"fmt"

	"github.com/google/nftables"

	"github.com/nftpol/nftpol/rules"
)

// nftpol's chains are base chains of type filter, policy accept, on the
// input or output hook. Any other chain decodes with a hook that no desired
// chain has, so the plan replaces the table.

// encodeChain makes ch, which has its name and table, the base chain c.
func encodeChain(ch *nftables.Chain, c *rules.Chain) error {
	hook := nftables.ChainHookInput
	if c.Hook == rules.HookOutput {
		hook = nftables.ChainHookOutput
	} else if c.Hook != rules.HookInput {
		return fmt.Errorf("chain %s: unknown hook %q", ch.Name, c.Hook)
	}
	prio := nftables.ChainPriority(c.Priority)
	policy := nftables.ChainPolicyAccept
	ch.Type, ch.Hooknum, ch.Priority, ch.Policy = nftables.ChainTypeFilter, hook, &prio, &policy
	return nil
}

func decodeChain(ch *nftables.Chain) *rules.Chain {
	mc := &rules.Chain{Name: ch.Name}
	switch {
	case ch.Hooknum == nil || ch.Priority == nil || ch.Type != nftables.ChainTypeFilter:
		mc.Hook = "none"
	case ch.Policy != nil && *ch.Policy != nftables.ChainPolicyAccept:
		mc.Hook = "policy-drop"
	case *ch.Hooknum == *nftables.ChainHookInput:
		mc.Hook = rules.HookInput
	case *ch.Hooknum == *nftables.ChainHookOutput:
		mc.Hook = rules.HookOutput
	default:
		mc.Hook = rules.Hook(fmt.Sprintf("hook-%d", *ch.Hooknum))
	}
	if ch.Priority != nil {
		mc.Priority = int32(*ch.Priority)
	}
	return mc
}
