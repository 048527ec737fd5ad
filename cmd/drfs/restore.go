package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/recovery"
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
func newCopyReport(vm string, p target.Point, dir string, m recovery.Result) copyReport {
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
	p, err := recovery.SelectPoint(points, c.Point, time.Now(), c.Force)
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
	m, err := recovery.Materialize(ctx, store, c.VM, p, c.To, recovery.Options{Replicas: recovery.ReflinkSource(c.Target, c.VM, points), Progress: newProgress(c.VM).report})
	if err != nil {
		if created {
			os.RemoveAll(c.To)
		}
		return err
	}
	fmt.Fprintf(os.Stderr, "drfs: %s restored: %d disk(s) in %s (%s)\n", c.VM, len(p.Disks), c.To, m.Method())
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

// choosePoint finds the point named by spec, as recovery.SelectPoint does
// now.
func choosePoint(points []target.Point, spec string) (target.Point, error) {
	return recovery.SelectPoint(points, spec, time.Now(), false)
}

// progress prints a line of progress per disk to stderr, at most every half
// second, for recovery.Options.Progress.
type progress struct {
	vm    string
	tty   bool
	disk  string
	last  time.Time
	start time.Time
}

func newProgress(vm string) *progress {
	_, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS)
	// In the agent (a planned failover), no progress between its log lines.
	return &progress{vm: vm, tty: err == nil && !daemonLog.Load()}
}

// report is a recovery.Options.Progress.
func (p *progress) report(disk string, done, total int64, finished bool) {
	if disk != p.disk {
		p.disk, p.start, p.last = disk, time.Now(), time.Time{}
	}
	name := p.vm + "/" + disk
	if finished {
		took := time.Since(p.start).Round(time.Millisecond)
		if daemonLog.Load() {
			say(slog.LevelInfo, fmt.Sprintf("%s: %s of data in %v", name, bytesString(total), took))
			return
		}
		clearLine := ""
		if p.tty {
			clearLine = "\r\033[K"
		}
		fmt.Fprintf(os.Stderr, "%s  %s: %s of data in %v\n", clearLine, name, bytesString(total), took)
		return
	}
	if !p.tty || time.Since(p.last) < 500*time.Millisecond {
		return
	}
	p.last = time.Now()
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(done) / float64(total)
	}
	rate := float64(done) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(os.Stderr, "\r  %s: %5.1f%% of %s, %s/s   ", name, pct, bytesString(total), bytesString(int64(rate)))
}
