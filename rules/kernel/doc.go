// Package kernel connects nftpol's ruleset model to the kernel's nf_tables
// through netlink. It is the only package that imports google/nftables; the
// rest of nftpol sees rules.Ruleset and rules.Plan.
//
// It does three things. It encodes the model into netlink messages: the
// table, its base chains (chain.go), sets (set.go), set elements
// (element.go) and rules, each rule statement by a pair encodeX/decodeX in
// a stmt_*.go file that mirrors what nft 1.0.6 writes for the same text. It
// decodes nftpol's table back into the model (Read), so that a plan is the
// difference between what the kernel holds and what the policy wants. And
// it sends one plan as one batch (Apply: batch.go builds it, commit.go
// sends it), which the kernel commits as one transaction, all of it or
// nothing, optionally only if the ruleset generation is still the one the
// plan was computed from (identity.go).
//
// google/nftables encodes most messages; nftpol sends them itself (its
// Flush neither says which message the kernel refused nor carries the
// generation) and writes the element messages itself (the bulk of a large
// batch, without its per-element allocations). Reading goes the other way
// round: the table, sets, elements and rules come from raw netlink dumps
// parsed here (dump.go, expr.go), because google/nftables v0.3.0 silently
// skips the rule expressions it cannot unmarshal (byteorder, which nftpol
// writes, among them) so that a rule read through it could look like ours
// while the kernel runs something else, reads a table's flags in the wrong
// byte order (a dormant table would read as active), decodes neither a
// set's comment nor its expressions, and builds a dozen-field struct per
// element, most of a full read's time at 50,000 accounts. What does not
// decode becomes rules.Unknown, which equals nothing, so the plan rewrites
// it. Chains, named objects and flowtables are still listed through
// google/nftables.
//
// kernel.go holds the Kernel, its options and sockets; hits.go reads the
// dynamic violation sets; owner.go makes a long-lived Kernel own its table
// (NFT_TABLE_F_OWNER|PERSIST: WithOwnership, Own, TableOwner, CanOwn), and
// portid.go finds the process behind an owner's netlink port; monitor.go
// watches the kernel's notifications of committed transactions (Watch), for
// an agent that keeps the table. All of it is Linux only.
package kernel
