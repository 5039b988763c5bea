// Package netns opens network namespaces by name, for the packages that
// talk netlink to a namespace other than the process's own (the kernel's
// nf_tables, sock_diag).
package netns
