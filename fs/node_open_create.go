package fs

import (
	"context"
	"path"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// backingFlags turns the flags of an OPEN or CREATE into those of the
// backing open. The kernel sends absolute offsets, so O_APPEND goes.
// O_DIRECT goes too: the kernel already bypasses its page cache for the
// file (FOPEN_DIRECT_IO), and O_DIRECT on the backing file costs about 9x
// on 4 KiB random writes. O_TRUNC goes because the file handle truncates
// itself, to report it (see truncateOnOpen). A regular file opened
// write-only is opened read-write, because the recorder reads changed
// blocks back through the same descriptor.
func backingFlags(flags uint32, regular bool) int {
	f := int(flags &^ (syscall.O_APPEND | fuse.FMODE_EXEC | syscall.O_DIRECT | syscall.O_TRUNC))
	if regular && f&syscall.O_ACCMODE == syscall.O_WRONLY {
		f = f&^syscall.O_ACCMODE | syscall.O_RDWR
	}
	return f
}

// openFlags returns the FOPEN flags for an open with flags. An O_DIRECT
// open is served in direct-io mode with parallel direct writes: the kernel
// then sends concurrent WRITEs of one file instead of serializing them on
// the inode lock, and the block lock keeps them apart only where they
// overlap.
func openFlags(flags uint32) uint32 {
	if flags&syscall.O_DIRECT != 0 {
		return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	return 0
}

var _ = (gofs.NodeOpener)((*node)(nil))

// Open opens the backing file and returns a tracked file handle. On the
// first open of a regular file it asks the Recorder for the disk.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	rel, errno := n.rel()
	if errno != 0 {
		return nil, 0, errno
	}
	fd, err := n.m.openat(rel, backingFlags(flags, n.isRegular()), 0)
	if err != nil {
		return nil, 0, gofs.ToErrno(err)
	}
	f, errno := n.newFile(ctx, fd, rel, flags)
	if errno != 0 {
		unix.Close(fd)
		return nil, 0, errno
	}
	return f, openFlags(flags), 0
}

var _ = (gofs.NodeCreater)((*node)(nil))

// Create creates (or opens) the file name and returns its inode and a
// tracked file handle.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	dir, errno := n.rel()
	if errno != 0 {
		return nil, nil, 0, errno
	}
	rel := path.Join(dir, name)
	// O_EXCL first, so that only a file made here is given to the caller;
	// the kernel sends CREATE for names it believes absent, so the
	// second open is for a file created behind its back.
	fd, err := n.m.openat(rel, backingFlags(flags, true)|unix.O_CREAT|unix.O_EXCL, mode)
	if err == nil {
		chownToCaller(ctx, fd)
	} else if err == unix.EEXIST && flags&syscall.O_EXCL == 0 {
		fd, err = n.m.openat(rel, backingFlags(flags, true), 0)
	}
	if err != nil {
		return nil, nil, 0, gofs.ToErrno(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, nil, 0, gofs.ToErrno(err)
	}
	// The loopback's Lookup gives the inode the same ID that a later
	// lookup of the name gives; one inode must never get two nodes (and
	// two disks with two block locks).
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, 0, errno
	}
	if out.Attr.Ino != st.Ino {
		// The name was replaced between our open and the lookup.
		unix.Close(fd)
		return nil, nil, 0, syscall.EBUSY
	}
	child, ok := ch.Operations().(*node)
	if !ok {
		unix.Close(fd)
		return nil, nil, 0, syscall.EIO
	}
	f, errno := child.newFile(ctx, fd, rel, flags)
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, 0, errno
	}
	if flags&syscall.O_TRUNC != 0 && syscall.Fstat(fd, &st) == nil {
		out.Attr.FromStat(&st)
	}
	return ch, f, openFlags(flags), 0
}

var _ = (gofs.NodeTmpfiler)((*node)(nil))

// Tmpfile creates an unnamed file (O_TMPFILE). It is not tracked: it has no
// path to report, and the mount cannot give it one (LINK of an inode that
// is in no directory fails with EXDEV).
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	dir, errno := n.rel()
	if errno != 0 {
		return nil, nil, 0, errno
	}
	fd, err := n.m.openat(dir, backingFlags(flags, true)|unix.O_TMPFILE, mode)
	if err != nil {
		return nil, nil, 0, gofs.ToErrno(err)
	}
	chownToCaller(ctx, fd)
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &stx); err != nil {
		unix.Close(fd)
		return nil, nil, 0, gofs.ToErrno(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, nil, 0, gofs.ToErrno(err)
	}
	ch := n.NewInode(ctx, n.m.newNode(n.RootData, n.EmbeddedInode(), "", &st), tmpfileID(n.RootData, &st, &stx))
	out.Attr.FromStat(&st)
	return ch, &file{fd: fd, src: backingReader{fd: fd}}, openFlags(flags), 0
}

// tmpfileID is the inode ID of an unnamed file, made as the loopback makes
// IDs (device mixed into the inode number, birth time as generation). No
// lookup can find the file, so it only has to be unique.
func tmpfileID(root *gofs.LoopbackRoot, st *syscall.Stat_t, stx *unix.Statx_t) gofs.StableAttr {
	swapped := uint64(st.Dev)<<32 | uint64(st.Dev)>>32
	swappedRoot := root.Dev<<32 | root.Dev>>32
	gen := uint64(1)
	if stx.Mask&unix.STATX_BTIME != 0 && (stx.Btime.Sec != 0 || stx.Btime.Nsec != 0) {
		gen = uint64(stx.Btime.Sec)*1e9 + uint64(stx.Btime.Nsec)
	}
	return gofs.StableAttr{
		Mode: uint32(st.Mode),
		Gen:  gen,
		Ino:  swapped ^ swappedRoot ^ st.Ino,
	}
}

// chownToCaller gives a file the daemon (root) created to the user who
// asked for it, as a local create would.
func chownToCaller(ctx context.Context, fd int) {
	if unix.Geteuid() != 0 {
		return
	}
	if caller, ok := fuse.FromContext(ctx); ok {
		unix.Fchown(fd, int(caller.Uid), int(caller.Gid))
	}
}

// newFile makes the file handle of fd, the backing file of n opened for an
// OPEN or CREATE with flags, and applies its O_TRUNC.
func (n *node) newFile(ctx context.Context, fd int, rel string, flags uint32) (*file, syscall.Errno) {
	f := &file{fd: fd, src: backingReader{fd: fd}}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, gofs.ToErrno(err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		// O_TRUNC means nothing to a FIFO or a device.
		return f, 0
	}
	d, errno := n.diskFor(rel, &st)
	if errno != 0 {
		return nil, errno
	}
	f.disk = d
	if flags&syscall.O_TRUNC != 0 {
		if errno := f.truncateOnOpen(ctx, n, rel, flags); errno != 0 {
			return nil, errno
		}
	}
	return f, 0
}
