package tracker

import "golang.org/x/sys/unix"

const prefetchSupported = true

// willNeed starts reading [off, off+n) of the file into the page cache and
// returns without waiting. It is only a hint: an error is ignored, the
// reads that follow then go to the disk themselves.
func willNeed(fd uintptr, off, n int64) {
	_ = unix.Fadvise(int(fd), off, n, unix.FADV_WILLNEED)
}
