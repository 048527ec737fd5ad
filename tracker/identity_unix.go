//go:build unix

package tracker

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
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

// statFile returns the size, mtime, ctime and inode of the file at path.
func statFile(path string) (fileState, bool) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fileState{}, false
	}
	return fileState{
		size:  st.Size,
		mtime: st.Mtim.Nano(),
		ctime: st.Ctim.Nano(),
		inode: uint64(st.Ino),
	}, true
}
