package resync

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/target"
)

// fileExtents returns the ranges of [off, end) of f that hold data, by
// SEEK_DATA and SEEK_HOLE; the rest are holes. Where the file system does
// not report holes it returns the whole range.
func fileExtents(f *os.File, off, end int64) ([]target.Extent, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	out := []target.Extent{}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for off < end {
			data, err := unix.Seek(int(fd), off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) || (err == nil && data >= end) {
				return
			}
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				out = append(out, target.Extent{Off: off, Len: end - off})
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
			out = append(out, target.Extent{Off: data, Len: hole - data})
			off = hole
		}
	}); err != nil {
		return nil, err
	}
	return out, serr
}
