package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// replicationFlags are the mount's flags for shipping to a target.
type replicationFlags struct {
	Target    string            `placeholder:"URL" help:"Replicate to this target: dir:///path (a directory, local or mounted) or https://host:port (a drfs target serve). Without it the mount only records."`
	Interval  time.Duration     `default:"5m" help:"Replication interval: every VM is rotated and shipped this often (30s, 5m, 15m, or any duration from 1s)."`
	Retention time.Duration     `default:"24h" help:"Keep recovery points this long on the target (the newest is always kept)."`
	MaxPoints int               `name:"max-points" default:"0" help:"Keep at most this many recovery points per VM as well (0: no limit but --retention)."`
	Bandwidth shipper.Bandwidth `default:"0" help:"Upload limit, e.g. 50MiB/s; 0 means unlimited."`
	SourceID  string            `name:"source-id" placeholder:"NAME" help:"Identity of this source host on the target; a target refuses VMs of another source (default: the host name)."`
	targets.TLS
}

func (f *replicationFlags) validate() error {
	if f.Target == "" {
		return nil
	}
	if f.Interval < time.Second {
		return fmt.Errorf("--interval %v is too short: use at least 1s (30s, 5m and 15m are the usual choices)", f.Interval)
	}
	if f.MaxPoints < 0 {
		return fmt.Errorf("--max-points %d: give 0 (no limit) or a positive count", f.MaxPoints)
	}
	if f.Retention < f.Interval {
		return fmt.Errorf("--retention %v is shorter than --interval %v: no older point would ever be kept", f.Retention, f.Interval)
	}
	if f.SourceID == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --source-id given and the host name is unknown: %w", err)
		}
		f.SourceID = h
	}
	return nil
}

// replication ships a mounted source's change log to a target, continuously.
type replication struct {
	flags  *replicationFlags
	source string
	state  string
	log    *tracker.Log
	store  targets.Store
	loop   *shipper.Loop

	mu struct {
		sync.Mutex
		// unverified: disks the log did not know before this mount although
		// the target may hold them: their replica may predate changes made
		// while nobody tracked them, so they are copied whole once.
		unverified map[string]bool // "vm\x00disk"
	}
}

// openTarget opens and checks the target before anything is mounted: a
// permanent error (bad URL, refused certificate, a store of another kind)
// stops the mount; an unreachable target only warns, as the workload must
// run and the log keeps every change until the target is back.
func openTarget(f *replicationFlags) (targets.Store, error) {
	store, err := targets.Open(f.Target, f.TLS)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := store.VMs(ctx); err != nil {
		if target.IsPermanent(err) {
			store.Close()
			return nil, fmt.Errorf("target %s: %w", f.Target, err)
		}
		fmt.Fprintf(os.Stderr, "drfs: warning: target %s is not reachable now (%v); changes are kept in the log and shipped when it is\n", f.Target, err)
	}
	return store, nil
}

// startReplication registers every disk of the source with the log and
// starts shipping.
func startReplication(ctx context.Context, f *replicationFlags, source, state string, log *tracker.Log, store targets.Store, blockSize int) (*replication, error) {
	r := &replication{flags: f, source: source, state: state, log: log, store: store}
	r.mu.unverified = map[string]bool{}
	known := map[string]bool{}
	for _, vm := range log.Status() {
		for _, d := range vm.Disks {
			known[vm.Name+"\x00"+d.Name] = true
		}
	}
	// The log learns of a disk when it is first opened through the mount;
	// tell it of all of them now so that each VM is replicated whole.
	err := walkDisks(source, func(vm, disk, path string, size int64) error {
		d, err := log.OpenDisk(relPath(source, path), size)
		if err != nil {
			return err
		}
		if d != nil {
			d.Release()
		}
		if !known[vm+"\x00"+disk] {
			r.mu.unverified[vm+"\x00"+disk] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("registering the disks of %s: %w", source, err)
	}
	var st target.Store = store
	if f.Bandwidth > 0 {
		st = shipper.RateLimit(st, f.Bandwidth)
	}
	st = shipper.Retry(st, shipper.DefaultPolicy, nil)
	sh := shipper.New(shipper.FromLog(log, blockSize), st, shipper.Options{Source: f.SourceID})
	r.loop = shipper.NewLoop(sh, log, shipper.LoopOptions{
		Interval: f.Interval,
		Copies:   r.copies,
		Prepare:  r.prepare,
		OnShip:   r.shipped,
	})
	return r, nil
}

// run replicates until ctx is done.
func (r *replication) run(ctx context.Context) { r.loop.Run(ctx) }

// states reports the replication of every VM for the control socket.
func (r *replication) states() []control.Replication {
	var out []control.Replication
	for _, s := range r.loop.States() {
		c := control.Replication{VM: s.VM, Target: r.flags.Target, LastGeneration: s.LastGeneration, LastShipped: s.LastShipped,
			Pending: s.Pending, Failures: s.Failures, Stopped: s.Stopped, BytesRaw: s.RawBytes, BytesSent: s.WireBytes}
		if s.LastError != nil {
			c.LastError = s.LastError.Error()
		}
		out = append(out, c)
	}
	return out
}

// final rotates and ships every VM once more, after the mount is gone, so
// the target holds the source's last state.
func (r *replication) final(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r.loop.Round(ctx)
	// If that round was a whole copy, its point is fuzzy by kind although
	// nothing wrote during it: one more (empty) generation makes the
	// consistent point.
	r.loop.Round(ctx)
}

// copies says which disks of vm must be sent whole: all of them when the
// target does not hold the VM, those it lacks, those flagged for
// resynchronization, and those the log did not know before this mount.
func (r *replication) copies(vm string) (map[string]shipper.CopyDisk, target.PointKind, func(error)) {
	none := func(error) {}
	disks := map[string]string{}
	walkVM(r.source, vm, func(_, disk, path string, _ int64) error {
		disks[disk] = path
		return nil
	})
	if len(disks) == 0 {
		return nil, "", none
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	points, err := r.store.Points(ctx, vm)
	if errors.Is(err, target.ErrNotFound) || err == nil && len(points) == 0 {
		fmt.Fprintf(os.Stderr, "drfs: %s: initial replication of %d disk(s) to %s\n", vm, len(disks), r.flags.Target)
		whole := map[string]shipper.CopyDisk{}
		for name, path := range disks {
			whole[name] = shipper.CopyDisk{Path: path}
		}
		return whole, target.KindInitial, r.afterCopy(vm, whole, nil)
	}
	if err != nil {
		return nil, "", none // the ship that follows reports the target's error
	}
	onTarget := map[string]bool{}
	for _, d := range points[len(points)-1].Disks {
		onTarget[d.Name] = true
	}
	// A disk the target holds is resynchronized by chunks: only what
	// differs from its replica travels. One it lacks is sent whole.
	files := map[string]shipper.CopyDisk{}
	reasons := map[string]string{}
	kind := target.KindInitial
	for _, st := range r.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Resync && disks[d.Name] != "" && onTarget[d.Name] {
				files[d.Name] = shipper.CopyDisk{Path: disks[d.Name], Partial: true}
				reasons[d.Name], kind = d.Reason, target.KindResync
			}
		}
	}
	r.mu.Lock()
	for disk, path := range disks {
		switch {
		case !onTarget[disk]:
			files[disk] = shipper.CopyDisk{Path: path}
		case r.mu.unverified[vm+"\x00"+disk]:
			files[disk], kind = shipper.CopyDisk{Path: path, Partial: true}, target.KindResync
		}
	}
	r.mu.Unlock()
	if len(files) == 0 {
		return nil, "", none
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	fmt.Fprintf(os.Stderr, "drfs: %s: %s of %v to %s\n", vm, kind, names, r.flags.Target)
	// Clear the flags before the copy: a tracking loss during it must
	// flag the disk again, not be wiped by this copy's success.
	for disk := range reasons {
		r.log.ClearResync(vm, disk)
	}
	return files, kind, r.afterCopy(vm, files, reasons)
}

// afterCopy returns the callback of a copy of files of vm: on success the
// disks are verified; on failure their resync flags are set again.
func (r *replication) afterCopy(vm string, files map[string]shipper.CopyDisk, reasons map[string]string) func(error) {
	return func(err error) {
		if err != nil {
			for disk, why := range reasons {
				r.log.MarkResync(vm, disk, why)
			}
			return
		}
		r.mu.Lock()
		for disk := range files {
			delete(r.mu.unverified, vm+"\x00"+disk)
			os.Remove(r.cursorPath(vm, disk))
		}
		r.mu.Unlock()
	}
}

// cursorPath is where the resync cursor of a disk is kept, so that a
// resync cut by an outage or a restart goes on from where it stopped.
func (r *replication) cursorPath(vm, disk string) string {
	return filepath.Join(r.state, "resync", url.PathEscape(vm), url.PathEscape(disk)+".cursor")
}

// prepare compares each partial disk with the target's newest point and
// keeps only the ranges that differ.
func (r *replication) prepare(ctx context.Context, vm string, disks map[string]shipper.CopyDisk) (map[string]shipper.CopyDisk, error) {
	var newest uint64
	for _, d := range disks {
		if !d.Partial {
			continue
		}
		if newest == 0 {
			points, err := r.store.Points(ctx, vm)
			if err != nil {
				return nil, fmt.Errorf("resync of %s: %w", vm, err)
			}
			newest = points[len(points)-1].Generation
		}
	}
	out := map[string]shipper.CopyDisk{}
	for name, d := range disks {
		if d.Partial {
			res, err := r.diff(ctx, vm, name, d.Path, newest)
			if err != nil {
				return nil, err
			}
			d.Ranges, d.Against = res.Ranges, newest
		}
		out[name] = d
	}
	return out, nil
}

// diff runs resync.Diff of one disk against point gen, resuming from and
// saving its cursor, and reports what it found.
func (r *replication) diff(ctx context.Context, vm, disk, path string, gen uint64) (resync.Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return resync.Result{}, fmt.Errorf("resync of %s/%s: %w", vm, disk, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return resync.Result{}, err
	}
	cpath := r.cursorPath(vm, disk)
	opts := resync.Options{}
	if b, err := os.ReadFile(cpath); err == nil {
		var c resync.Cursor
		if c.Unmarshal(b) == nil {
			opts.Resume = &c
		}
	}
	var saved time.Time
	opts.Progress = func(p resync.Progress) {
		if time.Since(saved) < 2*time.Second && p.Offset < p.Size {
			return
		}
		saved = time.Now()
		writeFileAtomic(cpath, p.Cursor.Marshal())
		fmt.Fprintf(os.Stderr, "drfs: %s/%s: resync compared %s of %s, %s differ, ETA %v\n", vm, disk,
			bytesString(p.Offset), bytesString(p.Size), bytesString(p.SendBytes), p.ETA.Round(time.Second))
	}
	res, err := resync.Diff(ctx, f, st.Size(), r.store, vm, gen, disk, opts)
	if err != nil {
		writeFileAtomic(cpath, res.Cursor.Marshal())
		return res, fmt.Errorf("resync of %s/%s (resumes from %s next time): %w", vm, disk, bytesString(res.Cursor.Offset), err)
	}
	fmt.Fprintf(os.Stderr, "drfs: %s/%s: resync against point %d: %d chunks compared, %d differ: sending %s (checksums %s up, %s down) in %v\n",
		vm, disk, gen, res.Compared(), res.Differing(), bytesString(res.SendBytes()),
		bytesString(res.SumBytesUp), bytesString(res.SumBytesDown), res.Duration.Round(time.Millisecond))
	return res, nil
}

// writeFileAtomic replaces the file at path with data (temp file, rename).
func writeFileAtomic(path string, data []byte) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err == nil {
		os.Rename(tmp, path)
	}
}

// shipped reports a round and expires old points.
func (r *replication) shipped(s shipper.VMState) {
	switch {
	case s.LastError != nil && s.Stopped:
		fmt.Fprintf(os.Stderr, "drfs: %s: replication STOPPED: %v\n", s.VM, s.LastError)
	case s.LastError != nil:
		fmt.Fprintf(os.Stderr, "drfs: %s: shipping failed (%d in a row, retried next interval): %v\n", s.VM, s.Failures, s.LastError)
	case s.Last.DataBlocks+s.Last.ZeroBlocks > 0:
		fmt.Fprintf(os.Stderr, "drfs: %s: recovery point %d on target: %d block(s), %s raw, %s sent (LZ4 %.2fx) in %v\n",
			s.VM, s.LastGeneration, s.Last.DataBlocks, bytesString(int64(s.Last.RawBytes)), bytesString(int64(s.Last.WireBytes)),
			s.Last.Ratio(), s.Last.Duration.Round(time.Millisecond))
	}
	// Even a point with no change moves the RPO on, and ages the others.
	if s.LastError == nil && s.Last.Generations > 0 {
		r.expire(s.VM)
	}
}

// expire drops the points of vm older than the retention, and beyond
// --max-points the oldest ones.
func (r *replication) expire(vm string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := time.Now().Add(-r.flags.Retention)
	if n := r.flags.MaxPoints; n > 0 {
		points, err := r.store.Points(ctx, vm)
		if err != nil {
			fmt.Fprintf(os.Stderr, "drfs: %s: listing points to expire: %v\n", vm, err)
			return
		}
		if len(points) > n {
			// Everything cut before the n-th newest point goes.
			if cut := points[len(points)-n].Frozen; cut.After(before) {
				before = cut
			}
		}
	}
	if err := r.store.Expire(ctx, vm, before, 1); err != nil {
		fmt.Fprintf(os.Stderr, "drfs: %s: expiring old points: %v\n", vm, err)
	}
}

// walkDisks calls fn for every disk of the source directory: every
// regular file in a top-level folder (a VM) and every top-level regular
// file (a VM of one disk).
func walkDisks(source string, fn func(vm, disk, path string, size int64) error) error {
	entries, err := os.ReadDir(source)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := walkVM(source, e.Name(), fn); err != nil {
			return err
		}
	}
	return nil
}

// walkVM calls fn for every disk of vm.
func walkVM(source, vm string, fn func(vm, disk, path string, size int64) error) error {
	root := filepath.Join(source, vm)
	st, err := os.Lstat(root)
	if err != nil {
		return nil
	}
	if st.Mode().IsRegular() {
		return fn(vm, vm, root, st.Size())
	}
	if !st.IsDir() {
		return nil
	}
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		return fn(vm, filepath.ToSlash(rel), path, info.Size())
	})
}

func relPath(source, path string) string {
	rel, _ := filepath.Rel(source, path)
	return filepath.ToSlash(rel)
}
