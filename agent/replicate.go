package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/wrap"
	"github.com/drfs-project/drfs/tracker"
)

// ReplicationOptions shape the replication of a mounted source to a
// target (drfs mount --target, and the agent for each protected VM).
type ReplicationOptions struct {
	Target    string // URL of the target
	TLS       targets.TLS
	Interval  time.Duration // every VM is rotated and shipped this often
	Retention time.Duration // points are kept this long (the newest always)
	MaxPoints int           // and at most this many (0: no limit)
	Bandwidth shipper.Bandwidth
	Compress  string // LZ4: auto, lz4 or none (targets.Compresses)
	SourceID  string // this host's identity on the target
	// Window is when automatic resynchronizations run; the zero Window is
	// the default one (orchestrator.DefaultWindow) in local time.
	Window orchestrator.Window
	// ResyncThreshold is the share of a disk's size (in percent, a disk
	// under 1 GiB counted as 1 GiB) its change log may reach before the
	// VM's log is dropped and its disks compared instead.
	ResyncThreshold int
	// Clock is the time of the resync window and of the retries; nil:
	// the system's.
	Clock clock.Clock
	// Retry is how a call to the target that fails is retried within a
	// round; zero: wrap.DefaultPolicy.
	Retry wrap.Policy

	// Set by the agent, which runs one replication per protected VM: only
	// vms are replicated (nil: every VM of the log), and wrapCopies, if
	// set, wraps the choice of the disks to copy (to follow its progress).
	vms        []string
	wrapCopies func(copiesFunc) copiesFunc
	// Set by the agent when it limits the upload: the store the shipper
	// stages through, which the VMs replicating to one target share (one
	// limit per target); Bandwidth is then not applied again.
	shipVia target.Store
	// Set by the agent when it cuts generations as they fill up: a ship
	// also sends the generations cut while it runs, for up to follow and
	// while keepFollowing (if set) says so, and onCommit hears of each
	// point as the target commits it.
	follow        time.Duration
	keepFollowing func(vm string) bool
	onCommit      func(target.Point)
	whileShipping func(ctx context.Context, vm string) (stop func())
}

// replication ships a mounted source's change log to a target, continuously.
//
// Resynchronization. A disk flagged "resynchronization required" (a failed
// log write, an unclean stop, a change outside the mount, a log over the
// resync threshold, a disk the log did not know, or drfs resync) is
// compared with the target's newest point by chunk checksums and what
// differs is sent (see docs/resync.md). An automatic one starts only inside
// the resync window (--resync-window), or at once when asked for with drfs
// resync --now; once started it goes on, from its cursor, whatever the
// window. While a disk waits, its VM is replicated as usual (other disks
// keep their RPO and the log does not grow), but if the disk's tracking was
// lost, every point committed until its resync commits is of kind resync:
// not crash-consistent, so restore --point latest skips it.
type replication struct {
	flags  *ReplicationOptions
	source string
	state  string
	log    *tracker.Log
	store  targets.Store
	loop   *shipper.Loop
	sh     *shipper.Shipper // the loop's
	clock  clock.Clock      // the time of the resync window
	// mount is the tracking mount, whose snapshots make the copies of a
	// round consistent (see cut); set before the loop runs.
	mount Mount

	mu struct {
		sync.Mutex
		// unverified: disks the log did not know before this mount although
		// the target may hold them: their replica may predate changes made
		// while nobody tracked them, so they are resynchronized once.
		unverified map[string]bool // "vm\x00disk"
		// copiedWhole: VMs this replication began to copy whole because
		// the target held no point of them: a point found later is of
		// that copy (its commit may have landed although the ship was cut
		// short), so their disks are verified.
		copiedWhole map[string]bool
		// fuzzy: VMs whose points are not faithful until a resync of
		// theirs commits (a disk's tracking was lost).
		fuzzy map[string]bool
		// now: VMs whose resync was asked for now (drfs resync --now).
		now map[string]bool
		// waitLogged: when the window opens, as last logged per waiting VM.
		waitLogged map[string]time.Time
		// appConsistent: generations cut while an application-consistency
		// hook held the VM's writes (the agent's), not shipped yet.
		appConsistent map[string]map[uint64]bool
		// consistent: the newest crash-consistent point committed, per VM.
		consistent map[string]target.Point
		// retention and maxPoints: how long and how many points are kept
		// (the flags', until setKeep changes them).
		retention time.Duration
		maxPoints int
	}
}

// thresholdReason starts the reason of a disk flagged because its change
// log reached the resync threshold: its tracking is intact, so the points
// shipped while it waits for its window are faithful.
const thresholdReason = "change log reached "

// lostTracking reports whether a disk flagged for reason may differ from
// what its log says.
func lostTracking(reason string) bool { return !strings.HasPrefix(reason, thresholdReason) }

// OpenTarget opens and checks the target before anything is mounted: a
// permanent error (bad URL, refused certificate, a store of another kind)
// stops the mount; an unreachable target only warns, as the workload must
// run and the log keeps every change until the target is back.
func OpenTarget(f *ReplicationOptions) (targets.Store, error) {
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
		slog.Warn(fmt.Sprintf("target %s is not reachable now (%v); changes are kept in the log and shipped when it is", f.Target, err))
	}
	return store, nil
}

// startReplication registers every disk of the source with the log and
// starts shipping.
func startReplication(ctx context.Context, f *ReplicationOptions, source, state string, log *tracker.Log, store targets.Store, blockSize int) (*replication, error) {
	r := &replication{flags: f, source: source, state: state, log: log, store: store, clock: f.Clock}
	if r.clock == nil {
		r.clock = clock.System{}
	}
	r.mu.unverified, r.mu.copiedWhole = map[string]bool{}, map[string]bool{}
	r.mu.fuzzy, r.mu.now, r.mu.waitLogged = map[string]bool{}, map[string]bool{}, map[string]time.Time{}
	r.mu.consistent = map[string]target.Point{}
	r.mu.retention, r.mu.maxPoints = f.Retention, f.MaxPoints
	known := map[string]bool{}
	for _, vm := range log.Status() {
		for _, d := range vm.Disks {
			known[vm.Name+"\x00"+d.Name] = true
		}
	}
	// The log learns of a disk when it is first opened through the mount;
	// tell it of all of them now so that each VM is replicated whole.
	err := recovery.WalkDisks(source, func(vm, disk, path string, size int64) error {
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
	switch {
	case f.shipVia != nil:
		st = f.shipVia
	case f.Bandwidth > 0:
		st = wrap.RateLimit(st, int64(f.Bandwidth))
	}
	st = wrap.Retry(st, f.Retry, f.Clock)
	lz4, err := targets.Compresses(f.Target, f.Compress)
	if err != nil {
		return nil, err
	}
	sh := shipper.New(pointKinds{shipper.FromLog(log, blockSize), r}, st, shipper.Options{Source: f.SourceID, NoCompression: !lz4,
		Follow: f.follow, KeepFollowing: f.keepFollowing, OnCommit: r.committed})
	r.sh = sh
	copies := copiesFunc(r.copies)
	if f.wrapCopies != nil {
		copies = f.wrapCopies(copies)
	}
	r.loop = shipper.NewLoop(sh, checkingRotator{r}, shipper.LoopOptions{
		Interval: f.Interval,
		VMs:      f.vms,
		Copies:   copies,
		Prepare:  r.prepare,
		Cut:      r.cut,
		OnShip:   r.shipped,

		WhileShipping: f.whileShipping,
	})
	return r, nil
}

// copiesFunc is the type of replication.copies.
type copiesFunc = func(vm string) (map[string]shipper.CopyDisk, target.PointKind, func(error), error)

// run replicates until ctx is done.
func (r *replication) run(ctx context.Context) { r.loop.Run(ctx) }

// states reports the replication of every VM for the control socket.
func (r *replication) states() []control.Replication {
	var out []control.Replication
	for _, s := range r.loop.States() {
		c := control.Replication{VM: s.VM, Target: r.flags.Target, LastGeneration: s.LastGeneration, LastShipped: s.LastShipped,
			Pending: s.Pending, Failures: s.Failures, Stopped: s.Stopped, BytesRaw: s.RawBytes, BytesSent: s.WireBytes}
		if p, ok := r.newestConsistent(s.VM); ok {
			c.LastConsistent, c.LastConsistentCut = p.Generation, p.Frozen
		}
		if s.LastError != nil {
			c.LastError = s.LastError.Error()
		}
		c.ResyncWindow = r.window().String()
		c.Resync = r.resyncStates(s.VM)
		if sp := r.log.Space(); sp.Full {
			c.StateFull, c.StateFullSince = sp.FullReason(), sp.Since
		}
		out = append(out, c)
	}
	return out
}

// final rotates and ships every VM once more, after the mount is gone, so
// the target holds the source's last state. A copy in that round reads
// disks nothing writes to any more, so its point is consistent too (see
// cut).
func (r *replication) final(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r.loop.Round(ctx)
}

// committed records each point the target commits: the newest consistent
// one is what the RPO is measured from. The agent's onCommit hears of it.
func (r *replication) committed(p target.Point) {
	if p.Kind.Consistent() {
		r.mu.Lock()
		if old, ok := r.mu.consistent[p.VM]; !ok || p.Generation > old.Generation {
			r.mu.consistent[p.VM] = p
		}
		r.mu.Unlock()
	}
	if r.flags.onCommit != nil {
		r.flags.onCommit(p)
	}
}

// newestConsistent returns the newest crash-consistent point of vm that
// this replication committed.
func (r *replication) newestConsistent(vm string) (target.Point, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.mu.consistent[vm]
	return p, ok
}

// cut freezes vm's active generation for a round that copies disks, with
// the disks read from a snapshot of the mount taken at that cut (the VM's
// writes held for the instant between the two), so that the copy's point
// is the disks as they were at the cut: consistent (kind snapshot), not a
// fuzzy copy of disks that changed while they were read. Once the mount
// has stopped nothing writes to the disks any more, and their files are
// the disks at a cut made then. The snapshot's before-images live in the
// state directory until the copy ends.
func (r *replication) cut(ctx context.Context, vm string, disks map[string]shipper.CopyDisk, kind target.PointKind) (uint64, map[string]shipper.CopyDisk, target.PointKind, func(), error) {
	none := func() {}
	if r.mount == nil {
		gen, err := r.rotate(vm)
		return gen, disks, kind, none, err
	}
	copied := func(disk string) bool { _, ok := disks[disk]; return ok }
	if r.mount.Stopped() {
		gen, behind, err := r.rotateChecked(vm, copied)
		if len(behind) > 0 {
			// A disk the copy does not cover changed behind the back:
			// the point holds its log, which misses that change.
			return gen, disks, target.KindResync, none, err
		}
		return gen, disks, target.KindSnapshot, none, err
	}
	rels := make([]string, 0, len(disks))
	for _, d := range disks {
		rels = append(rels, relPath(r.source, d.Path))
	}
	slices.Sort(rels)
	dir := filepath.Join(r.state, "snapshots", url.PathEscape(vm)+".cut")
	gen, snap, behind, err := cutWithSnapshot(ctx, r.mount, r.log, vm, rels, dir, copied)
	r.reportOutside(vm, behind)
	// The copy read from the snapshot makes a consistent point, unless a
	// disk it does not cover changed behind the back: the point holds
	// that disk's log, which misses the change.
	consistent := target.KindSnapshot
	if len(behind) > 0 {
		consistent = target.KindResync
	}
	switch {
	case err != nil && gen != 0 && !errors.Is(err, drfsfs.ErrClosed):
		// Cut, but no snapshot (a disk the mount does not track, say):
		// the copy reads the live disks, and its point says it is fuzzy.
		// (A mount being unmounted fails the round instead: the next
		// one, after it stopped, reads disks nothing writes to.)
		slog.Warn(fmt.Sprintf("%s: %v: copying from the live disks instead (the point will be a fuzzy copy)", vm, err))
		return gen, disks, kind, none, nil
	case err != nil:
		return 0, nil, "", nil, err
	}
	release := func() {
		if err := snap.Delete(); err != nil {
			slog.Warn(fmt.Sprintf("%s: deleting the snapshot of its copy: %v", vm, err))
		}
		os.RemoveAll(dir)
	}
	out := make(map[string]shipper.CopyDisk, len(disks))
	for name, d := range disks {
		v, err := snap.View(relPath(r.source, d.Path))
		if err != nil {
			release()
			return 0, nil, "", nil, fmt.Errorf("snapshot of %s: %w", vm, err)
		}
		view := v
		if c, ok := d.View.(countingView); ok {
			view = countingView{view, c.n} // the agent follows the copy's progress
		}
		d.View = view
		out[name] = d
	}
	return gen, out, consistent, release, nil
}

// cutWithSnapshot freezes the active generation of vm and starts a
// snapshot of its disks (paths relative to the source) in dir, while the
// VM's writes are held, so that the snapshot is the disks exactly at the
// generation's cut. Leftovers in dir (a snapshot does not survive the
// mount) are removed first. The caller deletes the snapshot. When the
// generation was cut but the snapshot failed, it returns the generation
// with the error.
//
// Under the same hold it checks the VM's disks for changes made behind
// the mount's back (tracker.Log.CheckOutside), except those copied says
// the copy from this snapshot covers, and returns those it flagged.
func cutWithSnapshot(ctx context.Context, m Mount, log *tracker.Log, vm string, rels []string, dir string, copied func(disk string) bool) (uint64, Snapshot, []tracker.OutsideChange, error) {
	os.RemoveAll(dir)
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	release, err := m.QuiescePaths(qctx, rels)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("holding the writes of %s for its snapshot: %w", vm, err)
	}
	gen, err := log.Rotate(vm)
	if err != nil {
		release()
		return 0, nil, nil, fmt.Errorf("cutting the generation of %s for its snapshot: %w", vm, err)
	}
	// The other disks of the VM are not held: hold them too for the
	// check (holds nest).
	var behind []tracker.OutsideChange
	if others, err := checkOutside(qctx, m, log, vm, copied); err == nil {
		behind = others
	}
	snap, err := m.Snapshot(rels, dir)
	release()
	if err != nil {
		os.RemoveAll(dir)
		return gen, nil, behind, fmt.Errorf("snapshot of %s: %w", vm, err)
	}
	return gen, snap, behind, nil
}

// checkingRotator is the log as the loop rotates it: each cut is checked
// for changes made behind the mount's back (replication.rotate).
type checkingRotator struct{ r *replication }

func (c checkingRotator) VMs() []string                    { return c.r.log.VMs() }
func (c checkingRotator) Rotate(vm string) (uint64, error) { return c.r.rotate(vm) }

// rotate cuts vm's generation and then checks its disks for changes made
// behind the mount's back since the last cut (checkOutside), before
// anything ships the generation: a disk changed so is flagged for
// resynchronization, and the points from this one are fuzzy until its
// resync commits. Every cut of a replicated VM goes through it.
func (r *replication) rotate(vm string) (uint64, error) {
	gen, _, err := r.rotateChecked(vm, nil)
	return gen, err
}

// rotateChecked is rotate with the disks that covered names (see
// tracker.Log.CheckOutside) only looked at again; it returns the disks it
// flagged.
func (r *replication) rotateChecked(vm string, covered func(disk string) bool) (uint64, []tracker.OutsideChange, error) {
	gen, err := r.log.Rotate(vm)
	if err != nil {
		return gen, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	behind, err := checkOutside(ctx, r.mount, r.log, vm, covered)
	if err != nil && !errors.Is(err, drfsfs.ErrClosed) {
		slog.Warn(fmt.Sprintf("%s: %v", vm, err))
	}
	r.reportOutside(vm, behind)
	return gen, behind, nil
}

// reportOutside says which disks of vm a check found changed behind the
// mount's back.
func (r *replication) reportOutside(vm string, behind []tracker.OutsideChange) {
	for _, c := range behind {
		slog.Warn(fmt.Sprintf("%s/%s: resynchronization required: %s", vm, c.Disk, c.Reason))
	}
}

// copies says which disks of vm must be sent from their files: all of them
// whole when the target does not hold the VM, whole those it lacks, and by
// chunks those flagged for resynchronization (or whose resync started)
// when their resync is due.
func (r *replication) copies(vm string) (map[string]shipper.CopyDisk, target.PointKind, func(error), error) {
	none := func(error) {}
	r.checkThreshold(vm)
	disks := map[string]string{}
	recovery.WalkVM(r.source, vm, func(_, disk, path string, _ int64) error {
		disks[disk] = path
		return nil
	})
	if len(disks) == 0 {
		return nil, "", none, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	points, err := r.store.Points(ctx, vm)
	if errors.Is(err, target.ErrNotFound) || err == nil && len(points) == 0 {
		slog.Info(fmt.Sprintf("%s: initial replication of %d disk(s) to %s", vm, len(disks), r.flags.Target))
		r.mu.Lock()
		r.mu.copiedWhole[vm] = true
		r.mu.Unlock()
		whole := map[string]shipper.CopyDisk{}
		for name, path := range disks {
			whole[name] = shipper.CopyDisk{Path: path}
		}
		// The copy supersedes what the log holds already (an outage of
		// the target, a failed copy): shipped first, those generations
		// would make points of changes without their base.
		for _, gen := range r.log.Frozen(vm) {
			if err := r.log.Drop(vm, gen); err != nil {
				slog.Warn(fmt.Sprintf("%s: dropping generation %d before the initial copy: %v", vm, gen, err))
			}
		}
		// A whole copy repairs any flagged disk too.
		reasons := r.flagged(vm, disks)
		for disk := range reasons {
			r.log.ClearResync(vm, disk)
		}
		return whole, target.KindInitial, r.afterCopy(vm, whole, reasons, true), nil
	}
	if err != nil {
		return nil, "", none, fmt.Errorf("listing the points of %s on %s: %w", vm, r.flags.Target, err)
	}
	onTarget := map[string]bool{}
	for _, d := range points[len(points)-1].Disks {
		onTarget[d.Name] = true
	}
	files := map[string]shipper.CopyDisk{}
	r.mu.Lock()
	for disk, path := range disks {
		key := vm + "\x00" + disk
		switch {
		case !onTarget[disk]:
			// One the target lacks is sent whole.
			files[disk] = shipper.CopyDisk{Path: path}
		case r.mu.unverified[key] && r.mu.copiedWhole[vm]:
			delete(r.mu.unverified, key)
		case r.mu.unverified[key]:
			delete(r.mu.unverified, key)
			r.mu.Unlock()
			r.log.MarkResync(vm, disk, "the change log did not know this disk before this mount: its replica may predate changes made while nothing tracked it")
			r.mu.Lock()
		}
	}
	r.mu.Unlock()
	// A disk the target holds is resynchronized by chunks: only what
	// differs from its replica travels.
	reasons := r.flagged(vm, disks)
	for disk := range reasons {
		if !onTarget[disk] {
			delete(reasons, disk) // sent whole
		}
	}
	started := r.started(vm, reasons)
	kind := target.KindInitial
	if len(reasons) > 0 {
		r.mu.Lock()
		for _, why := range reasons {
			if lostTracking(why) {
				r.mu.fuzzy[vm] = true
			}
		}
		r.mu.Unlock()
		if due, _ := r.resyncDue(vm, reasons); !due {
			r.logWaiting(vm, reasons, r.clock.Now())
			reasons = nil
		}
	}
	if over := overThreshold(reasons); over != "" {
		// The log is dropped rather than shipped, to give its space back,
		// and every disk the target holds is compared instead: read from
		// a snapshot at the copy's cut, the point is consistent again.
		// Until it commits, the disks' tracking is lost (their log is
		// gone), and a point shipped from the log would be fuzzy.
		gens := r.log.Frozen(vm)
		for _, gen := range gens {
			if err := r.log.Drop(vm, gen); err != nil {
				return nil, "", none, fmt.Errorf("dropping generation %d of %s at the resync threshold: %w", gen, vm, err)
			}
		}
		why := fmt.Sprintf("its change log was dropped (%d generation(s)) when the log of %s", len(gens), over)
		slog.Warn(fmt.Sprintf("%s: %s: every disk is compared with the target instead", vm, why))
		for disk := range disks {
			// A disk to compare by its hot extents is compared whole:
			// the dropped log held changes anywhere in it.
			if was, ok := reasons[disk]; onTarget[disk] && (!ok || !lostTracking(was) || tracker.IsHotReason(was)) {
				reasons[disk] = why
			}
		}
	}
	for disk := range reasons {
		files[disk], kind = shipper.CopyDisk{Path: disks[disk], Partial: true, Only: r.resyncRanges(vm, disk, reasons[disk])}, target.KindResync
	}
	if len(files) == 0 {
		return nil, "", none, nil
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	verb := string(kind)
	if started {
		verb = "resumed resync"
	}
	slog.Info(fmt.Sprintf("%s: %s of %v to %s", vm, verb, names, r.flags.Target))
	r.mu.Lock()
	delete(r.mu.now, vm)
	delete(r.mu.waitLogged, vm)
	r.mu.Unlock()
	// Mark the resync started (it then goes on whatever the window, and
	// survives a restart), then clear the flags before the copy: a tracking
	// loss during it must flag the disk again, not be wiped by this copy's
	// success.
	for disk, why := range reasons {
		writeFileAtomic(r.pendingPath(vm, disk), encodePending(why, files[disk].Only))
		r.log.ClearResync(vm, disk)
	}
	return files, kind, r.afterCopy(vm, files, reasons, len(reasons) > 0), nil
}

// started reports whether the resync of a disk among reasons started
// (and so goes on whatever the window).
func (r *replication) started(vm string, reasons map[string]string) bool {
	for disk := range reasons {
		if _, ok := r.pending(vm, disk); ok {
			return true
		}
	}
	return false
}

// resyncDue reports whether the resync of reasons (disks of vm) may run
// now: it started already, was asked for now, or the resync window is
// open; otherwise it says when the window opens (zero: never).
func (r *replication) resyncDue(vm string, reasons map[string]string) (bool, time.Time) {
	r.mu.Lock()
	asked := r.mu.now[vm]
	r.mu.Unlock()
	now := r.clock.Now()
	if asked || r.window().InWindow(now) || r.started(vm, reasons) || allHot(reasons) {
		return true, time.Time{}
	}
	return false, r.window().NextOpen(now)
}

// allHot reports whether every disk among reasons only has its hot extents
// to compare after a crash of the host: a small resync that does not wait
// for the resync window.
func allHot(reasons map[string]string) bool {
	for _, why := range reasons {
		if !tracker.IsHotReason(why) {
			return false
		}
	}
	return len(reasons) > 0
}

// waitsForWindow reports whether a resync of vm's flagged disks is due but
// waits for the resync window, and when that opens (zero: never).
func (r *replication) waitsForWindow(vm string) (bool, time.Time) {
	disks := map[string]string{}
	recovery.WalkVM(r.source, vm, func(_, disk, path string, _ int64) error {
		disks[disk] = path
		return nil
	})
	reasons := r.flagged(vm, disks)
	if len(reasons) == 0 {
		return false, time.Time{}
	}
	due, opens := r.resyncDue(vm, reasons)
	return !due, opens
}

// overThreshold returns the first (by disk name) of reasons that is a log
// over the resync threshold, as "DISK reached …", or "" if none is.
func overThreshold(reasons map[string]string) string {
	for _, disk := range slices.Sorted(maps.Keys(reasons)) {
		if why := reasons[disk]; !lostTracking(why) {
			return disk + " " + strings.TrimPrefix(why, "change log ")
		}
	}
	return ""
}

// flagged returns the disks of vm (among disks) that need a resync, with
// the reason: flagged in the log, or whose resync started and did not
// commit.
func (r *replication) flagged(vm string, disks map[string]string) map[string]string {
	out := map[string]string{}
	for _, st := range r.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Removed || disks[d.Name] == "" {
				continue
			}
			if why, ok := r.pending(vm, d.Name); ok {
				out[d.Name] = why
			}
			if d.Resync {
				out[d.Name] = d.Reason
			}
		}
	}
	return out
}

// checkThreshold flags the disks of vm whose change log (the generations
// not yet shipped) reached the resync threshold.
func (r *replication) checkThreshold(vm string) {
	p := orchestrator.Policy{ResyncThreshold: r.flags.ResyncThreshold, ResyncMinLog: testHooks.minLog}
	for _, st := range r.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Removed || d.Resync || !p.LogOverThreshold(d.LogBytes, d.Size) {
				continue
			}
			why := fmt.Sprintf("%s%d%% of the disk (%s of %s)", thresholdReason, p.Threshold(), units.Bytes(d.LogBytes), units.Bytes(p.ThresholdBase(d.Size)))
			slog.Warn(fmt.Sprintf("%s/%s: resynchronization required: %s", vm, d.Name, why))
			r.log.MarkResync(vm, d.Name, why)
		}
	}
}

// window returns the resync window.
func (r *replication) window() orchestrator.Window {
	if r.flags.Window.String() == "" {
		return orchestrator.DefaultWindow().In(time.Local)
	}
	return r.flags.Window
}

// logWaiting says, once per opening of the window, that vm's resync waits.
func (r *replication) logWaiting(vm string, reasons map[string]string, now time.Time) {
	opens := r.window().NextOpen(now)
	r.mu.Lock()
	last, seen := r.mu.waitLogged[vm]
	r.mu.waitLogged[vm] = opens
	fuzzy := r.mu.fuzzy[vm]
	r.mu.Unlock()
	if seen && last.Equal(opens) {
		return
	}
	names := make([]string, 0, len(reasons))
	for n := range reasons {
		names = append(names, n)
	}
	slices.Sort(names)
	msg := fmt.Sprintf("%s: resync of %v waits for the resync window %s (%s; drfs resync --now runs it at once)", vm, names, r.window(), OpensString(opens))
	if fuzzy {
		msg += "; until it commits, the VM's points are not crash-consistent (kind resync)"
	}
	slog.Info(msg)
}

// OpensString says when a window opens.
func OpensString(t time.Time) string {
	if t.IsZero() {
		return "it never opens"
	}
	return "opens " + t.Format("Mon 2006-01-02 15:04 MST")
}

// resyncStates describes the disks of vm that need a resync.
func (r *replication) resyncStates(vm string) []control.DiskResync {
	var out []control.DiskResync
	now := r.clock.Now()
	r.mu.Lock()
	asked := r.mu.now[vm]
	r.mu.Unlock()
	for _, st := range r.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Removed {
				continue
			}
			why, started := r.pending(vm, d.Name)
			if !started && !d.Resync {
				continue
			}
			s := control.DiskResync{Disk: d.Name, Reason: d.Reason, Since: d.Since, Running: started, Now: asked}
			if s.Reason == "" {
				s.Reason = why
			}
			if !started {
				s.WindowOpens = r.window().NextOpen(now)
			}
			out = append(out, s)
		}
	}
	return out
}

// resyncHook answers drfs resync: now asks for the VM's resync at the
// next round; otherwise it runs in the window.
func (r *replication) resyncHook(vm string, now bool) (control.ResyncAnswer, error) {
	t := r.clock.Now()
	if now {
		r.mu.Lock()
		r.mu.now[vm] = true
		r.mu.Unlock()
	}
	w := r.window()
	return control.ResyncAnswer{Now: now || w.InWindow(t), ResyncWindow: w.String(), WindowOpens: w.NextOpen(t), Replicating: true}, nil
}

// untrusted reports whether a generation of vm shipped now would make a
// point that is not faithful: a disk of vm lost its tracking and its
// resync has not committed yet.
func (r *replication) untrusted(vm string) bool {
	r.mu.Lock()
	fuzzy := r.mu.fuzzy[vm]
	r.mu.Unlock()
	if fuzzy {
		return true
	}
	for _, st := range r.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Resync && lostTracking(d.Reason) {
				return true
			}
			if why, ok := r.pending(vm, d.Name); ok && lostTracking(why) {
				return true
			}
		}
	}
	return false
}

// pointKinds is the change log as the shipper's source, with the points of
// a VM whose tracking was lost committed as kind resync: fuzzy, never
// taken for a crash-consistent state.
type pointKinds struct {
	*shipper.LogSource
	r *replication
}

func (s pointKinds) Generation(vm string, gen uint64) (shipper.Generation, error) {
	g, err := s.LogSource.Generation(vm, gen)
	if err == nil && (g.Kind == "" || g.Kind == target.KindGeneration) && s.r.untrusted(vm) {
		g.Kind = target.KindResync
	}
	if err == nil && g.Kind != target.KindResync {
		s.r.mu.Lock()
		g.AppConsistent = s.r.mu.appConsistent[vm][gen]
		s.r.mu.Unlock()
	}
	return g, err
}

// markAppConsistent records that generation gen of vm was cut while an
// application-consistency hook held the VM's writes: its point is marked
// so. The mark lives in memory only; lost in a restart, the point is
// crash-consistent, which is true too.
func (r *replication) markAppConsistent(vm string, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mu.appConsistent == nil {
		r.mu.appConsistent = map[string]map[uint64]bool{}
	}
	if r.mu.appConsistent[vm] == nil {
		r.mu.appConsistent[vm] = map[uint64]bool{}
	}
	r.mu.appConsistent[vm][gen] = true
}

// afterCopy returns the callback of a copy of files of vm: on failure the
// resync flags are set again; on success the disks are verified, their
// resync state removed, and, if complete (no resync of vm was left
// waiting), the VM's next point is consistent.
func (r *replication) afterCopy(vm string, files map[string]shipper.CopyDisk, reasons map[string]string, complete bool) func(error) {
	return func(err error) {
		if err != nil {
			for disk, why := range reasons {
				r.log.MarkResyncRanges(vm, disk, why, fromTargetExtents(files[disk].Only))
			}
			return
		}
		r.mu.Lock()
		for disk := range files {
			delete(r.mu.unverified, vm+"\x00"+disk)
			os.Remove(r.cursorPath(vm, disk))
			os.Remove(r.pendingPath(vm, disk))
		}
		if complete {
			delete(r.mu.fuzzy, vm)
		}
		r.mu.Unlock()
	}
}

// pendingPath marks a resync that started and has not committed: it goes
// on at the next round whatever the window, after a restart too. It holds
// the reason.
func (r *replication) pendingPath(vm, disk string) string {
	return filepath.Join(r.state, "resync", url.PathEscape(vm), url.PathEscape(disk)+".pending")
}

// pending returns the reason of a started resync of a disk.
func (r *replication) pending(vm, disk string) (string, bool) {
	why, _, ok := r.readPending(vm, disk)
	return why, ok
}

// readPending returns the reason of a started resync of a disk and the
// byte ranges it is limited to (nil: the whole disk).
func (r *replication) readPending(vm, disk string) (string, []target.Extent, bool) {
	b, err := os.ReadFile(r.pendingPath(vm, disk))
	if err != nil {
		return "", nil, false
	}
	why, only := decodePending(b)
	if why == "" {
		why = "a resynchronization was under way"
	}
	return why, only, true
}

// resyncRanges returns the byte ranges that the resync of a disk of vm
// flagged for why compares: for a crash of the host, its hot extents (from
// its pending resync, or from the log), otherwise nil, the whole disk.
func (r *replication) resyncRanges(vm, disk, why string) []target.Extent {
	if !tracker.IsHotReason(why) {
		return nil
	}
	if _, only, ok := r.readPending(vm, disk); ok {
		return only
	}
	var out []target.Extent
	for _, e := range r.log.ResyncRanges(vm, disk) {
		out = append(out, target.Extent{Off: e.Off, Len: e.Len})
	}
	return out
}

// encodePending is the content of a pending file: the reason, then, when
// the resync is limited to some byte ranges, a line "only" and a line
// "OFFSET LENGTH" per range.
func encodePending(why string, only []target.Extent) []byte {
	b := []byte(why)
	if only != nil {
		b = append(b, "\nonly"...)
		for _, e := range only {
			b = fmt.Appendf(b, "\n%d %d", e.Off, e.Len)
		}
	}
	return b
}

func decodePending(b []byte) (string, []target.Extent) {
	why, rest, ok := strings.Cut(string(b), "\nonly")
	if !ok {
		return why, nil
	}
	only := []target.Extent{}
	for _, line := range strings.Split(strings.TrimPrefix(rest, "\n"), "\n") {
		var e target.Extent
		if _, err := fmt.Sscanf(line, "%d %d", &e.Off, &e.Len); err != nil {
			return why, nil // unreadable: compare the whole disk
		}
		only = append(only, e)
	}
	return why, only
}

// fromTargetExtents converts byte ranges for the log (nil stays nil).
func fromTargetExtents(es []target.Extent) []tracker.Extent {
	if es == nil {
		return nil
	}
	out := make([]tracker.Extent, len(es))
	for i, e := range es {
		out[i] = tracker.Extent{Off: e.Off, Len: e.Len}
	}
	return out
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
			res, err := r.diff(ctx, vm, name, d, newest)
			if err != nil {
				return nil, err
			}
			d.Ranges, d.Against = res.Ranges, newest
		}
		out[name] = d
	}
	return out, nil
}

// diff runs resync.Diff of one disk (its view, if it has one: the
// snapshot at the copy's cut) against point gen, resuming from and saving
// its cursor, and reports what it found.
func (r *replication) diff(ctx context.Context, vm, disk string, d shipper.CopyDisk, gen uint64) (resync.Result, error) {
	src := d.View
	if src == nil {
		f, err := shipper.OpenFileView(d.Path)
		if err != nil {
			return resync.Result{}, fmt.Errorf("resync of %s/%s: %w", vm, disk, err)
		}
		defer f.Close()
		src = f
	}
	size := src.Size()
	cpath := r.cursorPath(vm, disk)
	opts := resync.Options{}
	if b, err := os.ReadFile(cpath); err == nil {
		var c resync.Cursor
		if c.Unmarshal(b) == nil {
			// A cursor of an older point of this disk still holds: the
			// points after it came from the log (the disk's resync is
			// pending, so no copy changed its replica), which holds every
			// write since the comparison began (the precondition of any
			// resume); their blocks are sent again from the file anyway.
			if c.VM == vm && c.Disk == disk && c.Gen < gen {
				slog.Info(fmt.Sprintf("%s/%s: resync cursor of point %d carried to point %d (the points between came from the log)", vm, disk, c.Gen, gen))
				c.Gen = gen
			}
			opts.Resume = &c
		}
	}
	opts.Window = testHooks.window
	opts.Only = d.Only
	var saved time.Time
	opts.Progress = func(p resync.Progress) {
		time.Sleep(testHooks.pace)
		if time.Since(saved) < 2*time.Second && p.Offset < p.Size {
			return
		}
		saved = time.Now()
		writeFileAtomic(cpath, p.Cursor.Marshal())
		slog.Info(fmt.Sprintf("%s/%s: resync compared %s of %s, %s differ, ETA %v", vm, disk,
			units.Bytes(p.Offset), units.Bytes(p.Size), units.Bytes(p.SendBytes), p.ETA.Round(time.Second)))
	}
	res, err := resync.Diff(ctx, src, size, r.store, vm, gen, disk, opts)
	switch {
	case opts.Resume != nil && res.Restarted != "":
		slog.Warn(fmt.Sprintf("%s/%s: resync started over: its cursor was not usable (%s)", vm, disk, res.Restarted))
	case opts.Resume != nil:
		slog.Info(fmt.Sprintf("%s/%s: resync resumed from its cursor at %s of %s", vm, disk, units.Bytes(res.ResumedAt), units.Bytes(size)))
	}
	if err != nil {
		writeFileAtomic(cpath, res.Cursor.Marshal())
		return res, fmt.Errorf("resync of %s/%s (resumes from %s next time): %w", vm, disk, units.Bytes(res.Cursor.Offset), err)
	}
	slog.Info(fmt.Sprintf("%s/%s: resync against point %d: %d chunks compared, %d differ: sending %s (checksums %s up, %s down) in %v",
		vm, disk, gen, res.Compared(), res.Differing(), units.Bytes(res.SendBytes()),
		units.Bytes(res.SumBytesUp), units.Bytes(res.SumBytesDown), res.Duration.Round(time.Millisecond)))
	return res, nil
}

// testHooks slow the comparison down so that end-to-end tests can cut it
// in the middle: DRFS_TEST_RESYNC_WINDOW (bytes compared per window) and
// DRFS_TEST_RESYNC_PACE (a pause after each window, a duration); and
// DRFS_TEST_RESYNC_MIN_LOG (bytes) lowers the smallest size the resync
// threshold is taken of, so that small test disks reach it. Not for use
// outside tests.
var testHooks = func() (h struct {
	window int64
	pace   time.Duration
	minLog int64
}) {
	h.window, _ = strconv.ParseInt(os.Getenv("DRFS_TEST_RESYNC_WINDOW"), 10, 64)
	h.minLog, _ = strconv.ParseInt(os.Getenv("DRFS_TEST_RESYNC_MIN_LOG"), 10, 64)
	h.pace, _ = time.ParseDuration(os.Getenv("DRFS_TEST_RESYNC_PACE"))
	return h
}()

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
	r.mu.Lock()
	for gen := range r.mu.appConsistent[s.VM] {
		if gen <= s.LastGeneration {
			delete(r.mu.appConsistent[s.VM], gen)
		}
	}
	r.mu.Unlock()
	switch {
	case s.LastError != nil && s.Stopped:
		slog.Error(fmt.Sprintf("%s: replication STOPPED: %v", s.VM, s.LastError))
	case s.LastError != nil:
		slog.Warn(fmt.Sprintf("%s: shipping failed (%d in a row, retried next interval): %v", s.VM, s.Failures, s.LastError))
	case s.Last.Generations > 0 && s.Last.DataBlocks+s.Last.ZeroBlocks > 0:
		// (A ship cut short by a stop committed nothing: no point to
		// report.) The LZ4 ratio only of data that went compressed: a
		// dir:// target gets raw blocks with --compress auto.
		how := ""
		switch lz4, _ := targets.Compresses(r.flags.Target, r.flags.Compress); {
		case s.Last.RawBytes == 0: // zero extents only: nothing to compress
		case lz4:
			how = fmt.Sprintf(" (LZ4 %.2fx)", s.Last.Ratio())
		default:
			how = " (uncompressed)"
		}
		slog.Info(fmt.Sprintf("%s: recovery point %d on target: %d block(s), %s raw, %s sent%s in %v",
			s.VM, s.LastGeneration, s.Last.DataBlocks, units.Bytes(int64(s.Last.RawBytes)), units.Bytes(int64(s.Last.WireBytes)),
			how, s.Last.Duration.Round(time.Millisecond)))
	}
	// Even a point with no change moves the RPO on, and ages the others.
	if s.LastError == nil && s.Last.Generations > 0 {
		r.expire(s.VM)
	}
}

// setKeep changes how long and how many recovery points are kept, from
// the next expiry on (a protected VM's new settings).
func (r *replication) setKeep(retention time.Duration, maxPoints int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.retention, r.mu.maxPoints = retention, maxPoints
}

// keep returns how long and how many recovery points are kept.
func (r *replication) keep() (time.Duration, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.retention, r.mu.maxPoints
}

// expire drops the points of vm older than the retention, and beyond
// --max-points the oldest ones.
func (r *replication) expire(vm string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	retention, maxPoints := r.keep()
	before := time.Now().Add(-retention)
	if n := maxPoints; n > 0 {
		points, err := r.store.Points(ctx, vm)
		if err != nil {
			slog.Warn(fmt.Sprintf("%s: listing points to expire: %v", vm, err))
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
		slog.Warn(fmt.Sprintf("%s: expiring old points: %v", vm, err))
	}
}

func relPath(source, path string) string {
	rel, _ := filepath.Rel(source, path)
	return filepath.ToSlash(rel)
}
