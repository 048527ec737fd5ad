package dirstore

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// punchHole makes [off, off+n) of f read as zeros and frees its blocks,
// keeping the file size. Where the file system cannot punch holes it writes
// zeros.
func punchHole(f *os.File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	if err := rc.Control(func(fd uintptr) {
		perr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	}); err != nil {
		return err
	}
	if errors.Is(perr, unix.EOPNOTSUPP) || errors.Is(perr, unix.ENOSYS) {
		return writeZeros(f, off, n)
	}
	if perr != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: perr}
	}
	return nil
}

// dataExtents returns the ranges of [off, end) of f that hold data (the
// rest are holes), by SEEK_DATA and SEEK_HOLE. Where the file system has no
// holes it returns the whole range.
func dataExtents(f *os.File, off, end int64) ([]extent, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var out []extent
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for off < end {
			data, err := unix.Seek(int(fd), off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) || (err == nil && data >= end) {
				return
			}
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				out = append(out, extent{off, end - off})
				return
			}
			if err != nil {
				serr = &os.PathError{Op: "seek data", Path: f.Name(), Err: err}
				return
			}
			hole, err := unix.Seek(int(fd), data, unix.SEEK_HOLE)
			if err != nil {
				serr = &os.PathError{Op: "seek hole", Path: f.Name(), Err: err}
				return
			}
			hole = min(hole, end)
			out = append(out, extent{data, hole - data})
			off = hole
		}
	}); err != nil {
		return nil, err
	}
	return out, serr
}

// copyRange copies n bytes at from in src to off in dst in the kernel
// (copy_file_range: a reflink where the file system shares blocks, else a
// page-cache copy with no trip through user space). Where the kernel
// cannot, it copies through a buffer.
func copyRange(src *os.File, from int64, dst *os.File, off, n int64) error {
	sc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	dc, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	roff, woff, end := from, off, from+n
	err = sc.Control(func(sfd uintptr) {
		err := dc.Control(func(dfd uintptr) {
			for roff < end {
				m, err := unix.CopyFileRange(int(sfd), &roff, int(dfd), &woff, int(min(end-roff, 1<<30)), 0)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					cerr = err
					return
				}
				if m == 0 {
					cerr = io.ErrUnexpectedEOF
					return
				}
			}
		})
		if err != nil {
			cerr = err
		}
	})
	if err != nil {
		return err
	}
	switch {
	case cerr == nil:
		return nil
	case errors.Is(cerr, unix.EXDEV), errors.Is(cerr, unix.ENOSYS), errors.Is(cerr, unix.EOPNOTSUPP), errors.Is(cerr, unix.EINVAL):
		return copyBuffered(src, roff, dst, woff, end-roff)
	}
	return &os.PathError{Op: "copy_file_range", Path: dst.Name(), Err: cerr}
}

// startWriteback asks the kernel to start writing f's dirty pages to disk
// without waiting (sync_file_range SYNC_FILE_RANGE_WRITE), so that the fsync
// at the end of a large write finds little left to do. It is only a hint:
// errors are ignored, and durability still comes from fsync.
func startWriteback(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SyncFileRange(int(fd), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
		})
	}
}

// nextData returns the offset of the first data at or after off in f
// (SEEK_DATA), or -1 if there is none before the end of the file. ok is
// false where the file system cannot say: then treat everything as data.
func nextData(f *os.File, off int64) (at int64, ok bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { at, serr = unix.Seek(int(fd), off, unix.SEEK_DATA) }); err != nil {
		return 0, false
	}
	switch {
	case errors.Is(serr, unix.ENXIO):
		return -1, true
	case serr != nil:
		return 0, false
	}
	return at, true
}
