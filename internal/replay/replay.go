// Package replay applies frozen generations of a change log onto plain
// files, one per disk, the way a target applies them to a replica. Tests use
// it as the oracle for "the log holds every change": replaying generations
// 1..N onto a copy of the disks as they were at mount time must give the
// disks as they were when generation N was frozen.
package replay

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/tracker"
)

// Generation applies generation gen of vm onto the files under dir, each
// disk at dir/<disk name>. Missing files are created. Records arrive in disk
// then block order, a disk's final size last.
func Generation(log *tracker.Log, vm string, gen uint64, dir string, blockSize int) error {
	var (
		name string
		f    *os.File
	)
	closeFile := func() error {
		if f == nil {
			return nil
		}
		err := f.Close()
		f = nil
		return err
	}
	err := log.ReadGeneration(vm, gen, func(r tracker.Record) error {
		if f == nil || r.Disk != name {
			if err := closeFile(); err != nil {
				return err
			}
			path := filepath.Join(dir, filepath.FromSlash(r.Disk))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			var err error
			if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644); err != nil {
				return err
			}
			name = r.Disk
		}
		bs := int64(blockSize)
		switch r.Kind {
		case tracker.KindData:
			_, err := f.WriteAt(r.Data, int64(r.Block)*bs)
			return err
		case tracker.KindZero:
			return zero(f, int64(r.Block)*bs, int64(r.Blocks)*bs)
		case tracker.KindSize:
			return f.Truncate(r.Size)
		default:
			return fmt.Errorf("replay: %s/%s: unknown record kind %v", vm, r.Disk, r.Kind)
		}
	})
	if cerr := closeFile(); err == nil {
		err = cerr
	}
	return err
}

// zero makes [off, off+n) of f read as zeros without growing f.
func zero(f *os.File, off, n int64) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if off >= st.Size() {
		return nil
	}
	n = min(n, st.Size()-off)
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.WriteAt(buf[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}
