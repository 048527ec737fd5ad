package fs

import (
	"context"
	"os"
	"syscall"
	"unsafe"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"
)

// file is a file handle of the mount: a descriptor of the backing file,
// opened without O_DIRECT, and the disk of its inode when the file is
// tracked. Every change made through it is reported to the disk's
// DiskRecorder under the disk's block lock, before the reply to the kernel.
//
// It never offers kernel passthrough (PassthroughFd), so every WRITE reaches
// it (invariant 1). go-fuse calls its methods concurrently; fd and disk do
// not change after open, and the kernel sends RELEASE only after every other
// request of the handle has been answered.
type file struct {
	fd   int
	disk *disk // nil: not tracked
	// src reads the backing file for the recorder. A field, so that
	// handing it over as an io.ReaderAt does not allocate per write.
	src backingReader
}

// PassthroughFd refuses kernel passthrough: with it, reads and writes would
// go from the kernel straight to the backing file, and the recorder would
// never see the writes.
func (f *file) PassthroughFd() (int, bool) {
	return -1, false
}

// smallRead is the size up to which a read is a plain pread into the
// request buffer: below it, splicing through a pipe costs more than the
// copy (measured: 4 KiB random reads 16-22% faster).
const smallRead = 32 << 10

// spliceMax is the largest read go-fuse can splice: its pipe holds the
// reply header, the data and one more page, within fs.pipe-max-size (1 MiB
// by default, room for a read of maxRequest; an administrator may lower
// it). go-fuse would log a larger read's failed splice on every request.
var spliceMax = splice.MaxPipeSize() - os.Getpagesize() - int(unsafe.Sizeof(fuse.OutHeader{}))

// Read reads from the backing file; go-fuse splices the reads between
// smallRead and spliceMax to the kernel. Reads take no lock: a read racing
// a write may see either, as on any file.
func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if len(dest) <= smallRead || len(dest) > spliceMax {
		// A vector, not ReadResultData: go-fuse writes a vector with one
		// writev to /dev/fuse, but tries to splice every other result.
		// For ReadResultData that costs three wasted system calls per
		// READ (the header written into a pipe, then drained to
		// /dev/null and FIONREAD); above spliceMax it fails and logs.
		n, err := unix.Pread(f.fd, dest, off)
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
		return fuse.ReadResultVector([][]byte{dest[:n]}), 0
	}
	return fuse.ReadResultFd(uintptr(f.fd), off, len(dest)), 0
}

// Write writes data at off and reports Written with the blocks of the
// range locked (after saving their before-images for a snapshot). It waits
// first while a quiesce holds the disk.
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	d := f.disk
	if d == nil || len(data) == 0 {
		n, err := pwrite(f.fd, data, off)
		return uint32(n), gofs.ToErrno(err)
	}
	if errno := d.begin(ctx); errno != 0 {
		return 0, errno
	}
	defer d.end()
	held := d.lock.lockRange(off, int64(len(data)))
	d.preserve(off, int64(len(data)))
	token := d.intend(off, int64(len(data)))
	n, err := pwrite(f.fd, data, off)
	if n > 0 {
		d.rec.Written(off, data[:n], &f.src)
	}
	d.done(token)
	d.lock.unlockRange(held)
	return uint32(n), gofs.ToErrno(err)
}

// Flush is called on every close(2) of a descriptor of the handle. Closing a
// duplicate of the backing descriptor gives the backing file system its
// close too (NFS, for one, flushes then).
func (f *file) Flush(ctx context.Context) syscall.Errno {
	dup, err := unix.Dup(f.fd)
	if err != nil {
		return gofs.ToErrno(err)
	}
	return gofs.ToErrno(unix.Close(dup))
}

// fsyncDataOnly is FUSE_FSYNC_FDATASYNC in the flags of FSYNC.
const fsyncDataOnly = 1

// Fsync syncs the backing file and then the change log of the disk
// (DiskRecorder.Sync), and returns once both are durable (invariant 3).
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	var err error
	if flags&fsyncDataOnly != 0 {
		err = unix.Fdatasync(f.fd)
	} else {
		err = unix.Fsync(f.fd)
	}
	if err != nil {
		return gofs.ToErrno(err)
	}
	if f.disk == nil {
		return 0
	}
	return errnoOf(f.disk.rec.Sync())
}

// Release closes the backing descriptor. The disk stays with the inode.
func (f *file) Release(ctx context.Context) syscall.Errno {
	return gofs.ToErrno(unix.Close(f.fd))
}

// Getattr stats the backing file.
func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st syscall.Stat_t
	if err := syscall.Fstat(f.fd, &st); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStat(&st)
	return 0
}

// Statx statxes the backing file.
func (f *file) Statx(ctx context.Context, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	var stx unix.Statx_t
	if err := unix.Statx(f.fd, "", int(flags)|unix.AT_EMPTY_PATH, int(mask), &stx); err != nil {
		return gofs.ToErrno(err)
	}
	out.FromStatx(&stx)
	return 0
}

// Lseek serves SEEK_DATA and SEEK_HOLE from the backing file.
func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(f.fd, int64(off), int(whence))
	return uint64(n), gofs.ToErrno(err)
}

// Setattr changes mode, owner, size and times through the descriptor. A
// size change is a truncate, reported as Resized (see truncate); the other
// changes are reported as Touched (MetadataRecorder).
func (f *file) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if f.disk != nil {
		defer f.disk.touched()
	}
	if mode, ok := in.GetMode(); ok {
		if err := unix.Fchmod(f.fd, mode); err != nil {
			return gofs.ToErrno(err)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := unix.Fchown(f.fd, u, g); err != nil {
			return gofs.ToErrno(err)
		}
	}
	// Truncate before the times, so that an explicit mtime is not
	// overwritten by the truncate's.
	if size, ok := in.GetSize(); ok {
		if errno := f.truncate(ctx, int64(size)); errno != 0 {
			return errno
		}
	}
	mtime, mok := in.GetMTime()
	atime, aok := in.GetATime()
	if mok || aok {
		ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if aok {
			ts[0] = unix.NsecToTimespec(atime.UnixNano())
		}
		if mok {
			ts[1] = unix.NsecToTimespec(mtime.UnixNano())
		}
		if err := futimens(f.fd, &ts); err != nil {
			return gofs.ToErrno(err)
		}
	}
	return f.Getattr(ctx, out)
}

// futimens sets the times of fd (utimensat with a NULL path, which
// x/sys/unix does not offer).
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
