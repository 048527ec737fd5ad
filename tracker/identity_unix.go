//go:build unix

package tracker

import (
	"os"
	"syscall"
)

// statIdentity returns the size, mtime and inode of the file at path.
func statIdentity(path string) (identity, bool) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return identity{}, false
	}
	id := identity{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.inode = uint64(st.Ino)
	}
	return id, true
}
