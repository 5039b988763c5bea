// Package durable holds what makes a file written by nftpol survive a
// crash whole: a file is written to a temporary name, synced and renamed,
// and then the directory that holds it is synced (SyncDir), so that the
// rename itself is on disk.
package durable

import (
	"fmt"
	"os"
)

// SyncDir syncs the directory dir, making the renames and removals in it
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}
