package recovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/target"
)

// Result is what Materialize did.
type Result struct {
	Disks    []string // paths of the disks written
	Written  int64    // bytes of data written
	Cloned   int64    // bytes shared with the replica by reflink
	Reflinks int      // disks cloned
	Copies   int      // disks copied
	Took     time.Duration
}

// Method says how the disks were made.
func (m Result) Method() string {
	switch {
	case m.Reflinks > 0 && m.Copies > 0:
		return fmt.Sprintf("%d by reflink, %d by sparse copy", m.Reflinks, m.Copies)
	case m.Reflinks > 0:
		return "reflink"
	}
	return "sparse copy"
}

// Options shape Materialize.
type Options struct {
	// Replicas is the directory of the VM's replica files to clone the
	// disks from (ReflinkSource), or "".
	Replicas string
	// Progress, if set, hears how the copy of each disk goes: done of
	// total bytes of data, and once more with finished set.
	Progress func(disk string, done, total int64, finished bool)
}

// Materialize writes the disks of point p of vm into dir. Where
// o.Replicas names the directory of the VM's replica files (a local
// directory store, see ReflinkSource), each disk is first cloned from its
// replica (FICLONE: O(1), blocks shared until written) and the undo data
// of the later generations written over it; otherwise, or where the file
// system cannot clone, it is copied sparse from the store. On error the
// disks it wrote are removed.
func Materialize(ctx context.Context, store target.Store, vm string, p target.Point, dir string, o Options) (m Result, err error) {
	start := time.Now()
	defer func() {
		if err != nil {
			for _, d := range m.Disks {
				os.Remove(d)
			}
			m.Disks = nil
		}
		m.Took = time.Since(start)
	}()
	for _, d := range p.Disks {
		path := filepath.Join(dir, filepath.FromSlash(d.Name))
		if o.Replicas != "" {
			cloned, cerr := cloneDisk(filepath.Join(o.Replicas, filepath.FromSlash(d.Name)), path, d.Size)
			if cloned {
				m.Disks = append(m.Disks, path)
			}
			if cerr == nil {
				// An older point is the replica with the undo data of
				// the generations after it written over.
				n, oerr := overlayPoint(ctx, store, vm, p.Generation, d.Name, path)
				m.Written += n
				if oerr != nil {
					return m, fmt.Errorf("%s/%s: writing the undo data over the clone: %w", vm, d.Name, oerr)
				}
				m.Reflinks++
				m.Cloned += d.Size - n
				continue
			}
			if cloned || !errors.Is(cerr, errors.ErrUnsupported) {
				return m, fmt.Errorf("cloning %s/%s: %w", vm, d.Name, cerr)
			}
		}
		n, err := copyDisk(ctx, store, vm, p.Generation, d, path, o.Progress, func() { m.Disks = append(m.Disks, path) })
		m.Written += n
		if err != nil {
			return m, fmt.Errorf("restoring %s/%s: %w", vm, d.Name, err)
		}
		m.Copies++
	}
	return m, nil
}

// ReflinkSource returns the directory of vm's replica files where a point
// can be cloned from them: a local directory store (the replica file holds
// the newest point as it is, and an older one is the replica with undo
// data written over it: docs/dirstore-format.md). The caller keeps the
// store open while it clones: its readers hold the point.
func ReflinkSource(targetURL, vm string, points []target.Point) string {
	u, err := url.Parse(targetURL)
	if err != nil || u.Scheme != "dir" || len(points) == 0 {
		return ""
	}
	return filepath.Join(u.Path, vm, "replica")
}

// overlayPoint writes over the clone at path the ranges where disk of
// point gen differs from the replica (target.Overlayer): nothing for the
// newest point, the undo data of the later generations for an older one.
// It returns the bytes written.
func overlayPoint(ctx context.Context, store target.Store, vm string, gen uint64, disk, path string) (int64, error) {
	r, err := store.Open(ctx, vm, gen, disk)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	o, ok := r.(target.Overlayer)
	if !ok {
		return 0, fmt.Errorf("%w: the store cannot say how a point differs from its replica", errors.ErrUnsupported)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	err = o.Overlay(func(off, size int64, data []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if data == nil {
			return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, size)
		}
		_, err := f.WriteAt(data, off)
		n += size
		return err
	})
	if err != nil {
		return n, err
	}
	return n, f.Sync()
}

// cloneDisk makes dst a reflink copy of src, of size bytes (cut or
// extended). It reports whether it created dst (then dst is removed by the
// caller on error). An error wrapping errors.ErrUnsupported means the file
// system cannot clone and nothing was created.
func cloneDisk(src, dst string, size int64) (created bool, err error) {
	sf, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("%w: replica: %v", errors.ErrUnsupported, err)
	}
	defer sf.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	df, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return false, err
	}
	defer df.Close()
	if err := unix.IoctlFileClone(int(df.Fd()), int(sf.Fd())); err != nil {
		os.Remove(dst)
		switch {
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EXDEV), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOTTY), errors.Is(err, unix.ENOSYS):
			return false, fmt.Errorf("%w: FICLONE: %v", errors.ErrUnsupported, err)
		}
		return false, &os.PathError{Op: "FICLONE", Path: dst, Err: err}
	}
	// An older point may be of another size than the replica is now.
	if err := df.Truncate(size); err != nil {
		return true, err
	}
	return true, df.Sync()
}

// copyDisk copies one disk of a point into a new sparse file at path,
// telling progress, and returns the bytes of data it wrote. created is
// called once the file exists.
func copyDisk(ctx context.Context, store target.Store, vm string, gen uint64, d target.DiskInfo, path string, progress func(disk string, done, total int64, finished bool), created func()) (int64, error) {
	r, err := store.Open(ctx, vm, gen, d.Name)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	extents, err := r.Extents()
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	created()
	if err := f.Truncate(r.Size()); err != nil {
		return 0, err
	}
	var total, done int64
	for _, e := range extents {
		total += e.Len
	}
	if progress == nil {
		progress = func(string, int64, int64, bool) {}
	}
	progress(d.Name, 0, total, false)
	buf := make([]byte, 4<<20)
	for _, e := range extents {
		for off := e.Off; off < e.Off+e.Len; {
			if err := ctx.Err(); err != nil {
				return done, err
			}
			n := min(int64(len(buf)), e.Off+e.Len-off)
			got, err := r.ReadAt(buf[:n], off)
			if err != nil && !(err == io.EOF && int64(got) == n) {
				return done, err
			}
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return done, err
			}
			off += n
			done += n
			progress(d.Name, done, total, false)
		}
	}
	progress(d.Name, total, total, true)
	return done, f.Sync()
}
