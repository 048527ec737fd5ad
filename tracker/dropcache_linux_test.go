package tracker

import (
	"os"

	"golang.org/x/sys/unix"
)

const dropCacheSupported = true

// dropCache writes a file back and drops it from the page cache.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}
