package pointfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/target"
)

// overlay keeps the writes made to one disk of a point, so that the point
// can be booted for a test without a copy and without ever writing to the
// target. It is a sparse file of the disk's size whose allocated units are
// exactly the units written: a unit (the file system's block, at least
// 4 KiB) is filled whole, from the point, the first time any byte of it is
// written. A directory used again finds its writes with SEEK_DATA.
type overlay struct {
	f    *os.File
	base target.DiskReader
	unit int64
	size int64

	mu      sync.RWMutex
	written []bool // by unit
}

// openOverlay opens (creating it) the overlay file at path for a disk of
// size bytes read from base.
func openOverlay(path string, base target.DiskReader) (*overlay, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	o := &overlay{f: f, base: base, size: base.Size()}
	if err := o.load(); err != nil {
		f.Close()
		return nil, fmt.Errorf("overlay %s: %w", path, err)
	}
	return o, nil
}

// load sizes a new overlay file, or checks a used one, and finds its
// written units.
func (o *overlay) load() error {
	fi, err := o.f.Stat()
	if err != nil {
		return err
	}
	fresh := fi.Size() == 0
	switch {
	case fresh:
		if err := o.f.Truncate(o.size); err != nil {
			return err
		}
	case fi.Size() != o.size:
		return fmt.Errorf("%d bytes, but the disk is %d: the overlay of another disk or point", fi.Size(), o.size)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(o.f.Fd()), &st); err != nil {
		return err
	}
	o.unit = max(4096, int64(st.Bsize))
	o.written = make([]bool, (o.size+o.unit-1)/o.unit)
	fd := int(o.f.Fd())
	for off := int64(0); off < o.size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return fmt.Errorf("finding its writes: %w", err)
		}
		if fresh {
			return errors.New("its file system does not report holes (SEEK_DATA): put the overlay on ext4, xfs, btrfs or tmpfs")
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("finding its writes: %w", err)
		}
		for u := data / o.unit; u*o.unit < hole && u < int64(len(o.written)); u++ {
			o.written[u] = true
		}
		off = hole
	}
	return nil
}

// ReadAt reads the disk as written: each unit from the overlay if it was
// written, else from the point.
func (o *overlay) ReadAt(p []byte, off int64) (int, error) {
	if off >= o.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), o.size-off)]
	o.mu.RLock()
	defer o.mu.RUnlock()
	for done := int64(0); done < int64(len(p)); {
		at := off + done
		u := at / o.unit
		w := o.written[u]
		end := (u + 1) * o.unit // extend over the units in the same state
		for end < off+int64(len(p)) && o.written[end/o.unit] == w {
			end += o.unit
		}
		chunk := p[done:min(int64(len(p)), end-off)]
		var err error
		if w {
			_, err = o.f.ReadAt(chunk, at)
		} else {
			_, err = o.base.ReadAt(chunk, at)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return int(done), err
		}
		done += int64(len(chunk))
	}
	return len(p), nil
}

// WriteAt writes p at off into the overlay; writes past the disk's end
// are refused (a point's disk keeps its size).
func (o *overlay) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > o.size {
		return 0, fmt.Errorf("write of %d bytes at %d: the disk is %d bytes: %w", len(p), off, o.size, unix.EFBIG)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var buf []byte
	for u := off / o.unit; u*o.unit < off+int64(len(p)); u++ {
		if o.written[u] {
			continue
		}
		// First write to the unit: fill it whole from the point, so that
		// its allocation says it is the overlay's.
		start := u * o.unit
		n := min(o.unit, o.size-start)
		if buf == nil {
			buf = make([]byte, o.unit)
		}
		if _, err := o.base.ReadAt(buf[:n], start); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		// The bytes of p over the unit are written below anyway.
		if _, err := o.f.WriteAt(buf[:n], start); err != nil {
			return 0, err
		}
		o.written[u] = true
	}
	return o.f.WriteAt(p, off)
}

func (o *overlay) Sync() error  { return o.f.Sync() }
func (o *overlay) Close() error { return o.f.Close() }
