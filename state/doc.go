// Package state owns nftpol's state directory (/var/lib/nftpol): what the
// last successful apply recorded, and all that restore needs at boot — the
// ruleset itself with numeric UIDs (no policy, no NSS), the policy's
// digest, the kernel's identity right after the commit (so that the next
// plan can trust the record instead of reading 50,000 elements back), and
// a sha256 that catches a truncated or edited file.
//
// It holds the file format (Load, and the ruleset's JSON), its writing while
// the kernel commits (Prepare, Pending.Seal and Commit: temporary file, the
// header with the identity the commit will leave, sync, then after the
// commit rename and directory sync), the large sets kept in section files of their
// own, the read ahead of the lock (StartPrefetch), the directory's lock
// (Acquire) and Purge. It knows nothing of the kernel but the identity it
// records; the reconcile engine decides when to read and write it.
package state
