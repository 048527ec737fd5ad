package fs

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// disk is a tracked file as the mount sees it: its DiskRecorder and the
// block lock that every change of the file holds while it changes the
// backing file and reports the change. One disk per inode, shared by all
// file handles of the inode.
//
// Every change of the file goes through begin (the quiesce gate), then
// takes the block lock, calls preserve (the copy-on-write of a snapshot)
// before it changes the backing file, reports the change, unlocks and
// calls end.
type disk struct {
	rec  DiskRecorder
	lock *blockLock
	// key identifies the backing file, for snapshots, which outlive the
	// disk (a disk lives as long as the kernel keeps its inode).
	key fileKey
	// node is the inode of the disk, for the paths a per-set quiesce
	// matches.
	node *node
	// gate holds the changes of the disk while a quiesce covers it.
	gate gate
	// snap is the snapshot of the disk, nil without one. Stored with the
	// whole file locked (lockFile), loaded under the block lock.
	snap atomic.Pointer[diskSnap]
}

// newDisk makes an unregistered disk of rec, for tests of the file
// handle on its own.
func newDisk(rec DiskRecorder) *disk {
	return &disk{rec: rec, lock: newBlockLock(rec.BlockSize())}
}

// fileKey identifies a backing file: device and inode number.
type fileKey struct {
	dev, ino uint64
}

// begin waits until no quiesce holds the disk and counts the change in
// flight. A nil error must be matched by end. It fails only when ctx ends
// (the caller was interrupted) while the change is held.
func (d *disk) begin(ctx context.Context) syscall.Errno {
	if err := d.gate.enter(ctx); err != nil {
		return syscall.EINTR
	}
	return 0
}

// end ends what begin started.
func (d *disk) end() { d.gate.leave() }

// touched tells the recorder, if it wants to know, that the file's
// metadata changed through the mount (MetadataRecorder). Call it after the
// change.
func (d *disk) touched() {
	if m, ok := d.rec.(MetadataRecorder); ok {
		m.Touched()
	}
}

// preserve saves the before-image of the blocks of [off, off+n) for the
// snapshot of the disk, if it has one and they are not saved yet. The
// caller holds the block lock of the range (or the whole file) and has not
// changed it yet. n < 0 means up to the end of the file. Without a
// snapshot it costs an atomic load.
// intend tells an InFlightRecorder that [off, off+n) of the backing file is
// about to change (n < 0: to its end), and returns the token for done.
func (d *disk) intend(off, n int64) uint32 {
	if r, ok := d.rec.(InFlightRecorder); ok {
		return r.Begin(off, n)
	}
	return 0
}

// done ends what intend began.
func (d *disk) done(token uint32) {
	if r, ok := d.rec.(InFlightRecorder); ok {
		r.End(token)
	}
}

func (d *disk) preserve(off, n int64) {
	if s := d.snap.Load(); s != nil {
		s.preserve(off, n)
	}
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
