package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Allocate serves fallocate(2) and reports what it changed (every mode but
// a plain KEEP_SIZE reservation waits first while a quiesce holds the
// disk, and saves the before-images of what it changes for a snapshot):
//
//   - PUNCH_HOLE, and ZERO_RANGE or WRITE_ZEROES with KEEP_SIZE: Zeroed over
//     the part of the range inside the file, with its blocks locked;
//   - ZERO_RANGE or WRITE_ZEROES without KEEP_SIZE: Zeroed, and Resized if
//     the file grew, with the whole file locked;
//   - plain allocation: nothing with KEEP_SIZE; without it, Resized if the
//     file grew past its end, with the whole file locked;
//   - anything else (COLLAPSE_RANGE, INSERT_RANGE shift the data after off):
//     Changed from off to the end, and Resized if the size changed, with the
//     whole file locked.
func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	d := f.disk
	o, n := int64(off), int64(size)
	if d == nil {
		return gofs.ToErrno(fallocate(f.fd, mode, o, n))
	}
	const zeroing = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_WRITE_ZEROES
	keepSize := mode&unix.FALLOC_FL_KEEP_SIZE != 0

	// Whatever the mode, the file's ctime moves (and its mtime, on most
	// file systems), also where no byte or size changes.
	defer d.touched()
	if mode == unix.FALLOC_FL_KEEP_SIZE {
		// Reserves space; neither contents nor size change.
		return gofs.ToErrno(fallocate(f.fd, mode, o, n))
	}
	if errno := d.begin(ctx); errno != 0 {
		return errno
	}
	defer d.end()

	if mode&zeroing != 0 && keepSize {
		held := d.lock.lockRange(o, n)
		defer d.lock.unlockRange(held)
		d.preserve(o, n)
		defer d.done(d.intend(o, n))
		if err := fallocate(f.fd, mode, o, n); err != nil {
			return gofs.ToErrno(err)
		}
		// KEEP_SIZE: what lies past the end is not part of the file.
		if end, err := f.size(); err == nil && min(o+n, end) > o {
			d.rec.Zeroed(o, min(o+n, end)-o, &f.src)
		}
		return 0
	}

	d.lock.lockFile()
	defer d.lock.unlockFile()
	defer d.done(d.intend(o, -1))
	before, err := f.size()
	if err != nil {
		return gofs.ToErrno(err)
	}
	switch {
	case mode&zeroing != 0:
		d.preserve(o, n)
	case mode&^unix.FALLOC_FL_KEEP_SIZE == 0:
		// Plain allocation changes no byte of the file.
	default:
		// Collapse or insert: everything from off may move.
		d.preserve(o, -1)
	}
	if err := fallocate(f.fd, mode, o, n); err != nil {
		return gofs.ToErrno(err)
	}
	after, err := f.size()
	if err != nil {
		// The change is made but its extent unknown: report the
		// whole range, which is always right.
		d.rec.Changed(o, n, &f.src)
		return 0
	}
	switch {
	case mode&zeroing != 0:
		if end := min(o+n, after); end > o {
			d.rec.Zeroed(o, end-o, &f.src)
		}
	case mode&^unix.FALLOC_FL_KEEP_SIZE == 0:
		// Plain allocation: new space reads as zeros, and only a size
		// change tells a replica about it.
	default:
		if end := max(before, after); end > o {
			d.rec.Changed(o, end-o, &f.src)
		}
	}
	if after != before {
		d.rec.Resized(after, &f.src)
	}
	return 0
}

// size returns the current size of the backing file.
func (f *file) size() (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(f.fd, &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

func fallocate(fd int, mode uint32, off, n int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, n)
		if err != unix.EINTR {
			return err
		}
	}
}

// truncate sets the size of the backing file and reports Resized, with the
// whole file locked. It waits first while a quiesce holds the disk, and
// saves the before-images of what it cuts for a snapshot.
func (f *file) truncate(ctx context.Context, size int64) syscall.Errno {
	d := f.disk
	if d == nil {
		return gofs.ToErrno(unix.Ftruncate(f.fd, size))
	}
	if errno := d.begin(ctx); errno != 0 {
		return errno
	}
	defer d.end()
	d.lock.lockFile()
	defer d.lock.unlockFile()
	d.preserve(size, -1)
	defer d.done(d.intend(size, -1))
	if err := unix.Ftruncate(f.fd, size); err != nil {
		return gofs.ToErrno(err)
	}
	d.rec.Resized(size, &f.src)
	return 0
}

// truncateOnOpen applies the O_TRUNC of an open. The backing file was opened
// without it, so that the disk was opened with the size before the
// truncate; the truncate is then reported as Resized(0), unless the file
// was empty already.
func (f *file) truncateOnOpen(ctx context.Context, n *node, rel string, flags uint32) syscall.Errno {
	if f.disk != nil {
		if errno := f.disk.begin(ctx); errno != 0 {
			return errno
		}
		defer f.disk.end()
		f.disk.lock.lockFile()
		defer f.disk.lock.unlockFile()
	}
	before, err := f.size()
	if err != nil {
		return gofs.ToErrno(err)
	}
	if f.disk != nil {
		f.disk.preserve(0, -1)
		defer f.disk.done(f.disk.intend(0, -1))
	}
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		err = unix.Ftruncate(f.fd, 0)
	} else {
		// O_RDONLY|O_TRUNC truncates too (Linux), but a read-only
		// descriptor cannot: truncate through a writable one.
		var wfd int
		wfd, err = n.m.openat(rel, unix.O_WRONLY|unix.O_TRUNC, 0)
		if err == nil {
			unix.Close(wfd)
		}
	}
	if err != nil {
		return gofs.ToErrno(err)
	}
	switch {
	case f.disk != nil && before != 0:
		f.disk.rec.Resized(0, &f.src)
	case f.disk != nil:
		f.disk.touched() // no byte changed, but the times did
	}
	return 0
}

var _ = (gofs.NodeSetattrer)((*node)(nil))

// Setattr serves SETATTR. With a file handle, the handle does it all. A size
// change without one (truncate(2) by path) opens the backing file, so that
// the disk is known (and opened on first use) and the truncate is reported
// like one through a handle. Anything else goes to the loopback, which also
// serves symlinks and directories.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if f, ok := fh.(*file); ok {
		return f.Setattr(ctx, in, out)
	}
	if _, ok := in.GetSize(); !ok || n.m.rec == nil || !n.isRegular() {
		errno := n.LoopbackNode.Setattr(ctx, fh, in, out)
		if errno == 0 {
			n.metadataChanged()
		}
		return errno
	}
	rel, errno := n.rel()
	if errno != 0 {
		return errno
	}
	fd, err := n.m.openat(rel, unix.O_RDWR, 0)
	if err != nil {
		return gofs.ToErrno(err)
	}
	defer unix.Close(fd)
	f, errno := n.newFile(ctx, fd, rel, 0)
	if errno != 0 {
		return errno
	}
	return f.Setattr(ctx, in, out)
}
