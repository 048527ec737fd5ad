//go:build unix

package dirstore

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// Lock modes of flock.
const (
	lockShared    = unix.LOCK_SH
	lockExclusive = unix.LOCK_EX
	lockRelease   = unix.LOCK_UN
)

// errWouldBlock is what a non-blocking flock returns when another open
// file holds a conflicting lock.
var errWouldBlock = errors.New("locked by another process or Store")

// flock applies flock(2) mode to f, without waiting if nowait
// (errWouldBlock when another open file holds a conflicting lock). A
// lock belongs to the open file, so two Stores of one process exclude each
// other as two processes do.
func flock(f *os.File, mode int, nowait bool) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if nowait {
		mode |= unix.LOCK_NB
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if lerr = unix.Flock(int(fd), mode); lerr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if errors.Is(lerr, unix.EWOULDBLOCK) {
		return errWouldBlock
	}
	return lerr
}
