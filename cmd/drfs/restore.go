package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/target"
)

type restoreCmd struct {
	Target string `required:"" env:"DRFS_TARGET" placeholder:"URL" help:"Target: dir:///path or https://host:port."`
	VM     string `arg:"" help:"VM to restore."`
	Point  string `default:"latest" placeholder:"ID|latest|latest-processed|TIME" help:"Recovery point: its number (drfs points), latest for the newest crash-consistent one, latest-processed for the newest of any kind, or a time (RFC 3339, or relative as -1h) for the newest consistent one cut at or before it."`
	To     string `required:"" placeholder:"DIR" type:"path" help:"Directory to write the VM's disks into; it must not exist or be empty."`
	Force  bool   `help:"Restore a point that is only a fuzzy copy (initial replication or resync)."`
	JSON   bool   `help:"Print what was restored as JSON (progress goes to stderr)."`
	targets.TLS
}

// pointRef is a recovery point in the JSON of the commands that choose
// one.
type pointRef struct {
	Generation    uint64           `json:"generation"`
	Cut           time.Time        `json:"cut"`
	Kind          target.PointKind `json:"kind"`
	AppConsistent bool             `json:"app_consistent"`
}

func refOf(p target.Point) pointRef {
	return pointRef{Generation: p.Generation, Cut: p.Frozen, Kind: p.Kind, AppConsistent: p.AppConsistent}
}

// diskCopy is a disk written from a recovery point.
type diskCopy struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// copyReport is what materialising a point into a directory did, in the
// JSON of drfs restore and drfs failover.
type copyReport struct {
	VM             string     `json:"vm"`
	Point          pointRef   `json:"point"`
	Dir            string     `json:"dir"`
	Disks          []diskCopy `json:"disks"`
	BytesWritten   int64      `json:"bytes_written"`
	BytesShared    int64      `json:"bytes_shared"` // with the replica, by reflink
	DisksReflinked int        `json:"disks_reflinked"`
	DisksCopied    int        `json:"disks_copied"`
}

// newCopyReport says what materialising point p of vm into dir did (m is
// zero for a dry run).
func newCopyReport(vm string, p target.Point, dir string, m materialized) copyReport {
	r := copyReport{VM: vm, Point: refOf(p), Dir: dir, Disks: []diskCopy{}, BytesWritten: m.Written,
		BytesShared: m.Cloned, DisksReflinked: m.Reflinks, DisksCopied: m.Copies}
	for _, d := range p.Disks {
		r.Disks = append(r.Disks, diskCopy{Name: d.Name, Path: filepath.Join(dir, filepath.FromSlash(d.Name)), Size: d.Size})
	}
	return r
}

// restoreResult is the JSON of drfs restore.
type restoreResult struct {
	copyReport
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

func (c *restoreCmd) Run() error {
	if err := checkEmptyDir(c.To); err != nil {
		return err
	}
	store, err := targets.OpenExisting(c.Target, c.TLS)
	if err != nil {
		return err
	}
	defer store.Close()
	ctx := context.Background()
	points, err := vmPoints(ctx, store, c.Target, c.VM)
	if err != nil {
		return err
	}
	p, err := selectPoint(points, c.Point, time.Now(), c.Force)
	if err != nil {
		return fmt.Errorf("%s: %w", c.VM, err)
	}
	if !p.Kind.Consistent() && !c.Force {
		return fmt.Errorf("%s point %s is a fuzzy copy (%s), not a consistent state: restore a later point, or add --force", c.VM, p.ID(), p.Kind)
	}
	fmt.Fprintf(os.Stderr, "drfs: restoring %s point %s (cut %s) into %s\n", c.VM, p.ID(), p.Frozen.Local().Format(time.RFC3339), c.To)
	created, err := makeDir(c.To)
	if err != nil {
		return err
	}
	m, err := materialize(ctx, store, c.VM, p, c.To, reflinkSource(c.Target, c.VM, points, p))
	if err != nil {
		if created {
			os.RemoveAll(c.To)
		}
		return err
	}
	fmt.Fprintf(os.Stderr, "drfs: %s restored: %d disk(s) in %s (%s)\n", c.VM, len(p.Disks), c.To, m.method())
	if c.JSON {
		return printJSON(restoreResult{copyReport: newCopyReport(c.VM, p, c.To, m), ElapsedSeconds: m.Took.Seconds()})
	}
	return nil
}

// checkEmptyDir accepts a directory that does not exist or is empty.
func checkEmptyDir(dir string) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s is not empty: use a new or empty directory", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// makeDir creates dir if it does not exist, and says whether it did.
func makeDir(dir string) (bool, error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	return true, os.MkdirAll(dir, 0o755)
}

// vmPoints lists the points of vm, saying clearly when the target does not
// hold it.
func vmPoints(ctx context.Context, store target.Store, url, vm string) ([]target.Point, error) {
	points, err := store.Points(ctx, vm)
	if errors.Is(err, target.ErrNotFound) {
		return nil, fmt.Errorf("VM %s is not on %s (not protected there, or a name typed wrong: see drfs points): %w", vm, url, target.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("points of %s on %s: %w", vm, url, err)
	}
	if len(points) == 0 {
		return nil, fmt.Errorf("VM %s has no recovery point on %s yet", vm, url)
	}
	return points, nil
}

// choosePoint finds the point named by spec, as selectPoint does now.
func choosePoint(points []target.Point, spec string) (target.Point, error) {
	return selectPoint(points, spec, time.Now(), false)
}

// selectPoint finds the point named by spec among points (oldest first):
//   - latest: the newest crash-consistent point (kind generation or snapshot);
//   - latest-processed: the newest point of any kind, which may be a fuzzy
//     initial or resync copy: the replica as the target holds it;
//   - a number: that generation;
//   - a time, RFC 3339 or relative to now ("-1h", "-90m"): the newest
//     crash-consistent point cut at or before it (of any kind with anyKind).
func selectPoint(points []target.Point, spec string, now time.Time, anyKind bool) (target.Point, error) {
	consistent := func(p target.Point) bool { return anyKind || p.Kind.Consistent() }
	switch {
	case spec == "latest":
		for i := len(points) - 1; i >= 0; i-- {
			if points[i].Kind.Consistent() {
				return points[i], nil
			}
		}
		return target.Point{}, errors.New("no crash-consistent recovery point yet: the initial copy is finalised by the next interval's point (latest-processed takes the fuzzy copy)")
	case spec == "latest-processed":
		if len(points) == 0 {
			return target.Point{}, fmt.Errorf("no recovery point: %w", target.ErrNotFound)
		}
		return points[len(points)-1], nil
	}
	if gen, err := strconv.ParseUint(spec, 10, 64); err == nil {
		for _, p := range points {
			if p.Generation == gen {
				return p, nil
			}
		}
		return target.Point{}, fmt.Errorf("no recovery point %d (it may have expired): %w", gen, target.ErrNotFound)
	}
	at, err := parsePointTime(spec, now)
	if err != nil {
		return target.Point{}, err
	}
	for i := len(points) - 1; i >= 0; i-- {
		if !points[i].Frozen.After(at) && consistent(points[i]) {
			return points[i], nil
		}
	}
	if len(points) > 0 && points[0].Frozen.After(at) {
		return target.Point{}, fmt.Errorf("no recovery point cut at or before %s: the oldest, %s, was cut at %s: %w",
			at.Local().Format(time.RFC3339), points[0].ID(), points[0].Frozen.Local().Format(time.RFC3339), target.ErrNotFound)
	}
	return target.Point{}, fmt.Errorf("no crash-consistent recovery point cut at or before %s (only fuzzy copies; --force takes one): %w", at.Local().Format(time.RFC3339), target.ErrNotFound)
}

// parsePointTime reads an RFC 3339 time or a negative duration from now.
func parsePointTime(spec string, now time.Time) (time.Time, error) {
	if strings.HasPrefix(spec, "-") {
		d, err := time.ParseDuration(spec)
		if err == nil {
			return now.Add(d), nil
		}
	} else if t, err := time.Parse(time.RFC3339Nano, spec); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("point %q: give a point number from drfs points, latest, latest-processed, an RFC 3339 time (2026-11-23T09:00:00Z) or a time before now (-1h)", spec)
}

// materialized is what materialize did.
type materialized struct {
	Disks    []string // paths of the disks written
	Written  int64    // bytes of data written
	Cloned   int64    // bytes shared with the replica by reflink
	Reflinks int      // disks cloned
	Copies   int      // disks copied
	Took     time.Duration
}

// method says how the disks were made.
func (m materialized) method() string {
	switch {
	case m.Reflinks > 0 && m.Copies > 0:
		return fmt.Sprintf("%d by reflink, %d by sparse copy", m.Reflinks, m.Copies)
	case m.Reflinks > 0:
		return "reflink"
	}
	return "sparse copy"
}

// materialize writes the disks of point p of vm into dir. Where replicas
// names the directory of the VM's replica files (the point is the newest
// and the store a local directory, see reflinkSource), each disk is first
// cloned from its replica (FICLONE: O(1), blocks shared until written);
// otherwise, or where the file system cannot clone, it is copied sparse
// from the store. On error the disks it wrote are removed.
func materialize(ctx context.Context, store target.Store, vm string, p target.Point, dir, replicas string) (m materialized, err error) {
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
		if replicas != "" {
			cloned, cerr := cloneDisk(filepath.Join(replicas, filepath.FromSlash(d.Name)), path, d.Size)
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
		n, err := restoreDisk(ctx, store, vm, p.Generation, d, path, func() { m.Disks = append(m.Disks, path) })
		m.Written += n
		if err != nil {
			return m, fmt.Errorf("restoring %s/%s: %w", vm, d.Name, err)
		}
		m.Copies++
	}
	return m, nil
}

// reflinkSource returns the directory of vm's replica files where p can be
// cloned from them: a local directory store (the replica file holds the
// newest point as it is, and an older one is the replica with undo data
// written over it: docs/dirstore-format.md). The store stays open, and so
// locked, while the caller clones.
func reflinkSource(targetURL, vm string, points []target.Point, p target.Point) string {
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

// restoreDisk copies one disk of a point into a new sparse file at path,
// showing progress, and returns the bytes of data it wrote. created is
// called once the file exists.
func restoreDisk(ctx context.Context, store target.Store, vm string, gen uint64, d target.DiskInfo, path string, created func()) (int64, error) {
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
	progress := newProgress(fmt.Sprintf("%s/%s", vm, d.Name), total)
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
			progress.update(done)
		}
	}
	progress.finish()
	return done, f.Sync()
}

// progress prints a line of progress to stderr at most every half second.
type progress struct {
	tty   bool
	name  string
	total int64
	start time.Time
	last  time.Time
}

func newProgress(name string, total int64) *progress {
	_, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS)
	// In the agent (a planned failover), no progress between its log lines.
	return &progress{tty: err == nil && !daemonLog.Load(), name: name, total: total, start: time.Now()}
}

func (p *progress) update(done int64) {
	if !p.tty || time.Since(p.last) < 500*time.Millisecond {
		return
	}
	p.last = time.Now()
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(done) / float64(p.total)
	}
	rate := float64(done) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(os.Stderr, "\r  %s: %5.1f%% of %s, %s/s   ", p.name, pct, bytesString(p.total), bytesString(int64(rate)))
}

func (p *progress) finish() {
	if daemonLog.Load() {
		say(slog.LevelInfo, fmt.Sprintf("%s: %s of data in %v", p.name, bytesString(p.total), time.Since(p.start).Round(time.Millisecond)))
		return
	}
	clearLine := ""
	if p.tty {
		clearLine = "\r\033[K"
	}
	fmt.Fprintf(os.Stderr, "%s  %s: %s of data in %v\n", clearLine, p.name, bytesString(p.total), time.Since(p.start).Round(time.Millisecond))
}
