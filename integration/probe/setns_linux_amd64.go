package main

// sysSetns is setns(2) in arch/x86/entry/syscalls/syscall_64.tbl.
const sysSetns = 308
