package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/target"
)

type restoreCmd struct {
	Target string `required:"" placeholder:"URL" help:"Target: dir:///path or https://host:port."`
	VM     string `arg:"" help:"VM to restore."`
	Point  string `default:"latest" placeholder:"ID|latest" help:"Recovery point: its number (drfs points), or latest for the newest crash-consistent one."`
	To     string `required:"" placeholder:"DIR" type:"path" help:"Directory to write the VM's disks into; it must not exist or be empty."`
	Force  bool   `help:"Restore a point that is only a fuzzy copy (initial replication or resync)."`
	targets.TLS
}

func (c *restoreCmd) Run() error {
	if entries, err := os.ReadDir(c.To); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s is not empty: restore into a new or empty directory", c.To)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	store, err := targets.Open(c.Target, c.TLS)
	if err != nil {
		return err
	}
	defer store.Close()
	ctx := context.Background()
	points, err := store.Points(ctx, c.VM)
	if err != nil {
		return fmt.Errorf("points of %s on %s: %w", c.VM, c.Target, err)
	}
	p, err := choosePoint(points, c.Point)
	if err != nil {
		return fmt.Errorf("%s: %w", c.VM, err)
	}
	if p.Kind != target.KindGeneration && !c.Force {
		return fmt.Errorf("%s point %s is a fuzzy copy (%s), not a consistent state: restore a later point, or add --force", c.VM, p.ID(), p.Kind)
	}
	if err := os.MkdirAll(c.To, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "drfs: restoring %s point %s (cut %s) into %s\n", c.VM, p.ID(), p.Frozen.Local().Format(time.RFC3339), c.To)
	for _, d := range p.Disks {
		if err := restoreDisk(ctx, store, c.VM, p.Generation, d, filepath.Join(c.To, filepath.FromSlash(d.Name))); err != nil {
			return fmt.Errorf("restoring %s/%s: %w", c.VM, d.Name, err)
		}
	}
	fmt.Fprintf(os.Stderr, "drfs: %s restored: %d disk(s) in %s\n", c.VM, len(p.Disks), c.To)
	return nil
}

// choosePoint finds the point named by id: a generation number, or latest
// for the newest crash-consistent point.
func choosePoint(points []target.Point, id string) (target.Point, error) {
	if id == "latest" {
		for i := len(points) - 1; i >= 0; i-- {
			if points[i].Kind == target.KindGeneration {
				return points[i], nil
			}
		}
		return target.Point{}, errors.New("no crash-consistent recovery point yet: the initial copy is finalised by the next interval's point")
	}
	gen, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		return target.Point{}, fmt.Errorf("point %q: give a point number from drfs points, or latest", id)
	}
	for _, p := range points {
		if p.Generation == gen {
			return p, nil
		}
	}
	return target.Point{}, fmt.Errorf("no recovery point %d (it may have expired): %w", gen, target.ErrNotFound)
}

// restoreDisk copies one disk of a point into a sparse file, showing progress.
func restoreDisk(ctx context.Context, store target.Store, vm string, gen uint64, d target.DiskInfo, path string) error {
	r, err := store.Open(ctx, vm, gen, d.Name)
	if err != nil {
		return err
	}
	defer r.Close()
	extents, err := r.Extents()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(r.Size()); err != nil {
		return err
	}
	var total, done int64
	for _, e := range extents {
		total += e.Len
	}
	progress := newProgress(fmt.Sprintf("%s/%s", vm, d.Name), total)
	buf := make([]byte, 4<<20)
	for _, e := range extents {
		for off := e.Off; off < e.Off+e.Len; {
			n := min(int64(len(buf)), e.Off+e.Len-off)
			got, err := r.ReadAt(buf[:n], off)
			if err != nil && !(err == io.EOF && int64(got) == n) {
				return err
			}
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += n
			done += n
			progress.update(done)
		}
	}
	progress.finish()
	return f.Sync()
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
	return &progress{tty: err == nil, name: name, total: total, start: time.Now()}
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
	clearLine := ""
	if p.tty {
		clearLine = "\r\033[K"
	}
	fmt.Fprintf(os.Stderr, "%s  %s: %s of data in %v\n", clearLine, p.name, bytesString(p.total), time.Since(p.start).Round(time.Millisecond))
}
