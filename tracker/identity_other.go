//go:build !unix

package tracker

import "os"

// statIdentity returns the size and mtime of the file at path; other
// systems have no inode number to compare.
func statIdentity(path string) (identity, bool) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return identity{}, false
	}
	return identity{size: fi.Size(), mtime: fi.ModTime().UnixNano()}, true
}

// statFile returns the size and mtime of the file at path; other systems
// give no ctime or inode number to compare.
func statFile(path string) (fileState, bool) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return fileState{}, false
	}
	return fileState{size: fi.Size(), mtime: fi.ModTime().UnixNano()}, true
}
