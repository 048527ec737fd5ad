package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// maxCopy bounds one COPY_FILE_RANGE: the reply carries a 32-bit count, and
// copy_file_range(2) may copy less than asked (callers loop).
const maxCopy = 1 << 30

var _ = (gofs.NodeCopyFileRanger)((*node)(nil))

// CopyFileRange copies between two files of the mount with
// copy_file_range(2) on the backing files (which may share extents instead
// of copying). fs does not see the data, so it reports Changed on the
// destination, with the destination blocks locked (after saving their
// before-images for a snapshot, and waiting first while a quiesce holds the
// destination); the source is only read.
func (n *node) CopyFileRange(ctx context.Context, fhIn gofs.FileHandle, offIn uint64, out *gofs.Inode, fhOut gofs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	in, ok := fhIn.(*file)
	if !ok {
		return 0, syscall.ENOTSUP
	}
	dst, ok := fhOut.(*file)
	if !ok {
		return 0, syscall.ENOTSUP
	}
	length = min(length, maxCopy)
	oi, oo := int64(offIn), int64(offOut)
	d := dst.disk
	if d == nil {
		count, err := unix.CopyFileRange(in.fd, &oi, dst.fd, &oo, int(length), int(flags))
		return uint32(max(count, 0)), gofs.ToErrno(err)
	}
	if errno := d.begin(ctx); errno != 0 {
		return 0, errno
	}
	defer d.end()
	held := d.lock.lockRange(int64(offOut), int64(length))
	defer d.lock.unlockRange(held)
	d.preserve(int64(offOut), int64(length))
	defer d.done(d.intend(int64(offOut), int64(length)))
	count, err := unix.CopyFileRange(in.fd, &oi, dst.fd, &oo, int(length), int(flags))
	if count > 0 {
		d.rec.Changed(int64(offOut), int64(count), &dst.src)
	}
	return uint32(max(count, 0)), gofs.ToErrno(err)
}
