package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
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

// restoreResult is the JSON of drfs restore.
type restoreResult struct {
	recovery.CopyReport
	ElapsedSeconds float64 `json:"elapsed_seconds"`
}

func (c *restoreCmd) Run() error {
	if err := recovery.CheckEmptyDir(c.To); err != nil {
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
	created, err := recovery.MakeDir(c.To)
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
		return printJSON(restoreResult{CopyReport: recovery.NewCopyReport(c.VM, p, c.To, m), ElapsedSeconds: m.Took.Seconds()})
	}
	return nil
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
			slog.Info(fmt.Sprintf("%s: %s of data in %v", name, bytesString(total), took))
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
