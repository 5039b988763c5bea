package policies

// reservedTableNames are the words nft's scanner reads as keywords where a
// table name is expected, so that `table inet counter { ... }` and `nft list
// table inet counter` are syntax errors. The kernel would take such a table
// over netlink, but nftpol's export could not be loaded with nft -f and an
// operator could not list the table, so the loader refuses these names.
//
// The list is the union of the words nft 1.0.6 refuses as a table name
// (each keyword of its scanner.l tried with nft -c) and the keywords that
// nftables' scanner.l (master, February 2026) defines outside any scanner
// state, so that it holds for newer nft releases too. nft matches keywords
// case-sensitively: "Counter" is a valid table name.
var reservedTableNames = map[string]bool{}

func init() {
	for _, w := range []string{
		"accept", "add", "ah", "all", "and", "arp", "bridge", "cgroup",
		"chain", "comment", "comp", "constant", "continue", "counter", "cpu",
		"create", "ct", "day", "dccp", "define", "delete", "describe",
		"destroy", "device", "devices", "dnat", "drop", "dst", "dup",
		"dynamic", "ecn", "element", "elements", "eq", "esp", "ether",
		"exists", "expires", "export", "exthdr", "fib", "flags", "flow",
		"flowtable", "flush", "frag", "fwd", "ge", "geneve", "get", "goto",
		"gre", "gretap", "gt", "handle", "hbh", "hook", "hour", "ibriport",
		"ibrname", "icmp", "icmpv6", "igmp", "iif", "iifgroup", "iifname",
		"iiftype", "import", "include", "index", "inet", "insert",
		"interval", "ip", "ip6", "ipsec", "jhash", "jump", "last", "le",
		"limit", "list", "log", "lshift", "lt", "map", "mark", "masquerade",
		"meta", "meter", "mh", "missing", "monitor", "ne", "netdev",
		"nftrace", "not", "notrack", "numgen", "obriport", "obrname",
		"offload", "oif", "oifgroup", "oifname", "oiftype", "or", "osf",
		"pkttype", "policy", "position", "priority", "queue", "quota",
		"random", "redefine", "redirect", "reject", "rename", "replace",
		"reset", "return", "rshift", "rt", "rt0", "rt2", "rtclassid", "rule",
		"ruleset", "sctp", "secmark", "set", "size", "skgid", "skuid",
		"snat", "socket", "srh", "symhash", "synproxy", "table", "tcp", "th",
		"time", "timeout", "tproxy", "tunnel", "type", "typeof", "udp",
		"udplite", "undefine", "update", "vlan", "vmap", "vni", "vxlan",
		"xor", "xt",
	} {
		reservedTableNames[w] = true
	}
}
