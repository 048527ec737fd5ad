package fs

import (
	"errors"
	"io"
	"syscall"

	"golang.org/x/sys/unix"
)

// disk is a tracked file as the mount sees it: its DiskRecorder and the
// block lock that every change of the file holds while it changes the
// backing file and reports the change. One disk per inode, shared by all
// file handles of the inode.
type disk struct {
	rec  DiskRecorder
	lock *blockLock
}

func newDisk(rec DiskRecorder) *disk {
	return &disk{rec: rec, lock: newBlockLock(rec.BlockSize())}
}

// backingReader reads the backing file through a descriptor with pread. It
// is the src handed to a DiskRecorder; it is valid only during the call.
type backingReader struct {
	fd int
}

// ReadAt implements io.ReaderAt.
func (r *backingReader) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Pread(r.fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &readError{err: err}
		}
		if n == 0 {
			return done, io.EOF
		}
		done += n
	}
	return done, nil
}

// readError is a failed read of the backing file.
type readError struct{ err error }

func (e *readError) Error() string { return "read backing file: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// pwrite writes all of data at off, or returns how much it wrote and why it
// stopped.
func pwrite(fd int, data []byte, off int64) (int, error) {
	done := 0
	for done < len(data) {
		n, err := unix.Pwrite(fd, data[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			return done, unix.EIO
		}
		done += n
	}
	return done, nil
}

// errnoOf turns an error of a Recorder into the errno for the kernel: the
// errno it carries, else EIO.
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return syscall.EIO
}
