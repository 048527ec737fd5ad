package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/target/wrap"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// agent holds the protection of the VMs of one source directory: the
// lifecycle of each protected VM (an orchestrator.VM), its replication, and
// the jobs that carry out the long steps. Its state is kept in STATE/agent
// and survives a restart; VMs nobody protects are tracked by the mount but
// their change log is dropped as it forms.
type agent struct {
	cfg    *orchestrator.Config
	mount  Mount // the tracking mount; set before start
	log    *tracker.Log
	bs     int
	stores storeCache
	jobs   *orchestrator.Jobs
	clock  clock.Clock
	file   string // the persisted state
	// version is drfs's, as drfs version says it, for the metrics.
	version string
	// retry is how the calls to a target are retried within a round
	// (zero: wrap.DefaultPolicy); the rounds' back-off is the
	// orchestrator's.
	retry wrap.Policy

	ctx    context.Context // ends when the agent stops
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu struct {
		sync.Mutex
		vms map[string]*protection // every VM that is not Unprotected
	}
	persistMu sync.Mutex
}

// protection is one protected VM. Its supervisor goroutine runs the VM's
// rounds and jobs; the API goroutines read its status.
type protection struct {
	name   string
	target string
	// The target's store and the replication, once the prerequisites
	// are checked: set by setReplication, read by replication and store.
	// reverse is the target at this site that the recovery site
	// replicates back into, while the VM is ReverseReplicating; set under mu.
	reverse string
	wake    chan struct{} // a round is wanted now (resume, resync --now)

	cancel context.CancelFunc
	done   chan struct{} // closed when the supervisor returns

	// copied and toCopy count the bytes of a running whole copy, for its
	// job's progress.
	copied, toCopy atomic.Int64

	mu struct {
		sync.Mutex
		vm *orchestrator.VM
		// over: the settings drfs protect gave, over the configuration's;
		// a later drfs protect of the VM changes them (changeSettings).
		over      Overrides
		lastRound time.Time
		job       uint64 // the job the VM's current stage runs as; 0 if none
		// lastApp is when the last app-consistent cut was made, appErr why
		// the last attempt failed ("" if it did not).
		lastApp time.Time
		appErr  string
		// snap is the snapshot of the initial replication, until the VM
		// finalizes.
		snap Snapshot
		// hold releases the writes of a VM failed over by a planned
		// failover; nil when they are not held.
		hold func()
		// store and repl: see setReplication.
		store targets.Store
		repl  *replication
	}
}

// setReplication sets the store of p's target and its replication, which
// its supervisor and the API's goroutines then read.
func (p *protection) setReplication(store targets.Store, r *replication) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.store, p.mu.repl = store, r
}

// replication returns p's replication; nil until its prerequisites are
// checked.
func (p *protection) replication() *replication {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.repl
}

// store returns the store of p's target; nil until its prerequisites are
// checked.
func (p *protection) store() targets.Store {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.store
}

// Overrides is the policy given to drfs protect, over the configuration's.
type Overrides struct {
	Interval  time.Duration `json:"interval,omitempty"`
	Retention time.Duration `json:"retention,omitempty"`
	MaxPoints int           `json:"max_points,omitempty"`
	// AppHook, if set, is run around a rotation every AppEvery to make
	// an app-consistent point (see appConsistentCut).
	AppHook  string        `json:"app_consistent_hook,omitempty"`
	AppEvery time.Duration `json:"app_consistent_every,omitempty"`
}

func (a *agent) policy(vm string, o Overrides) orchestrator.Policy {
	p := a.cfg.PolicyFor(vm)
	if o.Interval > 0 {
		p.Interval = o.Interval
		if a.cfg.PolicyFor(vm).Retention < o.Interval {
			p.Retention = o.Interval
		}
	}
	if o.Retention > 0 {
		p.Retention = o.Retention
	}
	if o.MaxPoints > 0 {
		p.MaxPoints = o.MaxPoints
	}
	return p
}

// newAgent returns the agent of cfg's source, its state loaded, its
// change log log (of block size bs); clk is its time. Set its mount, then
// start it.
func newAgent(cfg *orchestrator.Config, tlsFiles targets.TLS, log *tracker.Log, bs int, clk clock.Clock) (*agent, error) {
	a := &agent{cfg: cfg, log: log, bs: bs, clock: clk, stores: storeCache{tls: tlsFiles, bandwidth: cfg.Bandwidth},
		file: agentStateFile(cfg.State)}
	a.jobs = orchestrator.NewJobs(a.clock)
	a.mu.vms = map[string]*protection{}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	if err := a.load(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *agent) closeStores() { a.stores.closeAll() }

// start launches the supervisors of the protected VMs and the loop that
// drops the change log of the others.
func (a *agent) start() {
	// Finished jobs are kept a week for drfs jobs --all.
	a.jobs.Prune(a.clock.Now().Add(-7 * 24 * time.Hour))
	a.mu.Lock()
	for _, p := range a.mu.vms {
		a.launchLocked(p)
	}
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.discardLoop()
	}()
}

// stop ends every VM's work, then ships the last generation of each
// Protected VM (the mount is gone, so that is the source's final state).
func (a *agent) stop(timeout time.Duration) {
	a.cancel()
	a.wg.Wait()
	for _, j := range a.jobs.List("") {
		if !j.State.Done() {
			a.jobs.Cancel(j.ID, "the agent stopped; the work goes on when it starts again")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, p := range a.protections() {
		a.deleteSnapshot(p) // the next start takes a new one
		if r := p.replication(); p.state() == orchestrator.Protected && r != nil {
			slog.Info(p.name + ": shipping the last generation")
			r.loop.Round(ctx)
			a.afterRound(p, 0, loopResult(p))
		}
	}
	a.persist()
}

func (a *agent) protections() []*protection {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*protection, 0, len(a.mu.vms))
	for _, p := range a.mu.vms {
		out = append(out, p)
	}
	slices.SortFunc(out, func(x, y *protection) int { return strings.Compare(x.name, y.name) })
	return out
}

func (a *agent) protection(vm string) *protection {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mu.vms[vm]
}

func (p *protection) state() orchestrator.State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.vm.State()
}

// launchLocked starts the supervisor of p. a.mu is held.
func (a *agent) launchLocked(p *protection) {
	ctx, cancel := context.WithCancel(a.ctx)
	p.cancel, p.done, p.wake = cancel, make(chan struct{}), make(chan struct{}, 1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer close(p.done)
		a.supervise(ctx, p)
	}()
}

// poke makes p's supervisor run a round now.
func (p *protection) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// disksOf lists the disks of vm in the source, name → path and size.
func (a *agent) disksOf(vm string) (map[string]string, int64) {
	disks := map[string]string{}
	var total int64
	recovery.WalkVM(a.cfg.Source, vm, func(_, disk, path string, size int64) error {
		disks[disk] = path
		total += size
		return nil
	})
	return disks, total
}

// vmNames lists the VMs of the source directory.
func (a *agent) vmNames() []string {
	seen := map[string]bool{}
	recovery.WalkDisks(a.cfg.Source, func(vm, _, _ string, _ int64) error {
		seen[vm] = true
		return nil
	})
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ProtectRequest is what drfs protect asks for.
type ProtectRequest struct {
	VM     string    `json:"vm"`
	Target string    `json:"target,omitempty"`
	Policy Overrides `json:"policy"`
	// Reset names settings (Settings) of a VM protected already that go
	// back to the agent's configuration.
	Reset []string `json:"reset,omitempty"`
}

// protect enables the protection of a VM: it checks the prerequisites (an
// enable-protection job), and on success the VM enters its initial
// replication, which its supervisor runs. A failed check leaves the VM
// unprotected and says which check failed.
func (a *agent) protect(req ProtectRequest) (orchestrator.Job, error) {
	vm := req.VM
	if err := target.CheckVM(vm); err != nil {
		return orchestrator.Job{}, err
	}
	if len(req.Reset) > 0 {
		return orchestrator.Job{}, fmt.Errorf("%s is not protected: --reset gives the settings of a protected VM back to the agent's configuration", vm)
	}
	disks, _ := a.disksOf(vm)
	if len(disks) == 0 {
		return orchestrator.Job{}, fmt.Errorf("unknown VM %q: %s has no folder or disk image of that name (VMs there: %s)",
			vm, a.cfg.Source, orNone(a.vmNames()))
	}
	url := req.Target
	if url == "" {
		url = a.cfg.Target
	}
	if url == "" {
		return orchestrator.Job{}, errors.New("no target: give --target URL, or set target in the agent's configuration")
	}
	if req.Policy.AppHook != "" && req.Policy.AppEvery <= 0 {
		req.Policy.AppEvery = time.Hour
	}
	pol := a.policy(vm, req.Policy)
	if err := pol.Validate(); err != nil {
		return orchestrator.Job{}, err
	}

	a.mu.Lock()
	if p := a.mu.vms[vm]; p != nil {
		a.mu.Unlock()
		return orchestrator.Job{}, fmt.Errorf("%s is protected already (%s, target %s)", vm, p.state(), p.target)
	}
	p := &protection{name: vm, target: url}
	p.mu.vm, p.mu.over = orchestrator.NewVM(vm, pol), req.Policy
	now := a.clock.Now()
	p.mu.vm.Apply(now, orchestrator.Protect{})
	a.mu.vms[vm] = p // reserved: a second protect is refused, the log is kept
	a.mu.Unlock()

	job, err := a.jobs.Add(orchestrator.JobEnableProtection, vm)
	if err == nil {
		a.jobs.Start(job.ID)
		err = a.enable(p, job.ID)
	}
	if err != nil {
		a.jobs.Fail(job.ID, err)
		a.mu.Lock()
		delete(a.mu.vms, vm)
		a.mu.Unlock()
		a.persist()
		return a.jobLatest(job.ID), fmt.Errorf("cannot protect %s: %w", vm, err)
	}
	if err := a.save(); err != nil {
		// A protection a restart would forget is not made.
		err = fmt.Errorf("cannot protect %s: %w (free space in %s, then run drfs protect %s again)", vm, err, a.cfg.State, vm)
		a.jobs.Fail(job.ID, err)
		a.mu.Lock()
		delete(a.mu.vms, vm)
		a.mu.Unlock()
		a.deleteSnapshot(p)
		a.persist()
		return a.jobLatest(job.ID), err
	}
	a.mu.Lock()
	a.launchLocked(p)
	a.mu.Unlock()
	return a.jobLatest(job.ID), nil
}

func (a *agent) jobLatest(id uint64) orchestrator.Job {
	j, _ := a.jobs.Get(id)
	return j
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// minFreeState is the free space the state directory must have to protect
// a VM at all; the change log needs more as writes come.
const minFreeState = 64 << 20

// enable checks the prerequisites of protecting p (its job is id): its
// disks exist in the tracked source, the target is reachable and lets this
// host in, both sides have space. On success the VM is in its initial
// replication. Nothing is changed when a check fails.
func (a *agent) enable(p *protection, id uint64) error {
	vm := p.name
	disks, total := a.disksOf(vm)
	if len(disks) == 0 {
		return fmt.Errorf("VM not found: %s has no disk of %s", a.cfg.Source, vm)
	}
	a.jobs.Progress(id, 10, fmt.Sprintf("%d disk(s), %s, in the tracked source", len(disks), units.Bytes(total)))
	free, err := freeBytes(a.cfg.State)
	if err != nil {
		return fmt.Errorf("state directory %s: %w", a.cfg.State, err)
	}
	if free < minFreeState {
		return fmt.Errorf("low disk space: the state directory %s has %s free, at least %s needed for the change log: %w",
			a.cfg.State, units.Bytes(free), units.Bytes(minFreeState), orchestrator.ErrLowDisk)
	}
	store, err := a.stores.get(p.target)
	if err != nil {
		return err
	}
	a.jobs.Progress(id, 30, "checking the target "+p.target)
	ctx, cancel := context.WithTimeout(a.ctx, 20*time.Second)
	defer cancel()
	if _, err := store.VMs(ctx); err != nil {
		if target.IsPermanent(err) {
			return fmt.Errorf("target %s refuses this host: %w", p.target, err)
		}
		return fmt.Errorf("target %s is not reachable: %w", p.target, err)
	}
	if path, ok := strings.CutPrefix(p.target, "dir://"); ok {
		if tfree, err := freeBytes(path); err == nil && tfree < total {
			return fmt.Errorf("low disk space on the target: %s has %s free, %s's disks hold up to %s: %w",
				path, units.Bytes(tfree), vm, units.Bytes(total), orchestrator.ErrLowDisk)
		}
	}
	points, err := store.Points(ctx, vm)
	if err != nil && !errors.Is(err, target.ErrNotFound) {
		return fmt.Errorf("target %s: listing the points of %s: %w", p.target, vm, err)
	}
	// Register the disks with the log now, so that the round that copies
	// them knows all of them.
	for name, path := range disks {
		d, err := a.log.OpenDisk(relPath(a.cfg.Source, path), fileSize(path))
		if err != nil {
			return fmt.Errorf("change log: disk %s of %s: %w", name, vm, err)
		}
		if d != nil {
			d.Release()
		}
	}
	r, err := a.newReplication(p, store)
	if err != nil {
		return err
	}
	p.setReplication(store, r)
	// What the log holds of the VM predates its protection: the copy (or
	// the comparison) supersedes it, and shipping it first would make a
	// point of changes without their base.
	a.discard(vm)
	msg := fmt.Sprintf("prerequisites met: %d disk(s), %s; %s free for the change log", len(disks), units.Bytes(total), units.Bytes(free))
	if len(points) > 0 {
		// The target holds the VM from an earlier protection: its replica
		// may miss what changed since, so every disk is compared, and only
		// the chunks that differ travel.
		for name := range disks {
			a.log.MarkResync(vm, name, "protection enabled again: the replica on the target is compared with the disk")
		}
		msg += fmt.Sprintf("; the target holds %d point(s) of %s: its disks are compared with them, not copied", len(points), vm)
	}
	p.mu.Lock()
	err = p.mu.vm.Apply(a.clock.Now(), orchestrator.Enabled{})
	p.mu.Unlock()
	if err != nil {
		return err
	}
	a.jobs.Succeed(id, msg)
	return nil
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// newReplication returns the replication of p: a shipper loop of its own
// VM, at its interval, to its target, with its resync window and
// threshold.
func (a *agent) newReplication(p *protection, store targets.Store) (*replication, error) {
	p.mu.Lock()
	pol := p.mu.vm.Policy()
	p.mu.Unlock()
	f := &ReplicationOptions{Target: p.target, Interval: pol.Interval, Retention: pol.Retention, MaxPoints: pol.MaxPoints,
		SourceID: a.cfg.SourceID, Compress: a.cfg.Compress, TLS: a.stores.tls,
		Window:          pol.ResyncWindow, // in the configured time zone
		ResyncThreshold: pol.Threshold(), Clock: a.clock, Retry: a.retry,
		vms: []string{p.name}}
	f.wrapCopies = func(copies copiesFunc) copiesFunc {
		return func(vm string) (map[string]shipper.CopyDisk, target.PointKind, func(error), error) {
			disks, kind, done, err := copies(vm)
			if err != nil {
				return nil, "", nil, err
			}
			disks, kind, done = countCopies(p, disks, kind, done)
			return disks, kind, done, nil
		}
	}
	via, err := a.stores.shipping(p.target)
	if err != nil {
		return nil, err
	}
	f.shipVia = via
	f.onCommit = func(pt target.Point) { a.committed(p, pt) }
	if a.cfg.MaxGeneration > 0 {
		f.follow = max(pol.Interval, followAtLeast)
		f.keepFollowing = func(string) bool { return a.keepFollowing(p) }
		f.whileShipping = func(ctx context.Context, _ string) func() { return a.cutWhileShipping(ctx, p) }
	}
	r, err := startReplication(a.ctx, f, a.cfg.Source, a.cfg.State, a.log, store, a.bs)
	if err != nil {
		return nil, err
	}
	r.mount = a.mount
	return r, nil
}

// countCopies makes the whole copies among disks read through views that
// count the bytes, for the job's progress.
func countCopies(p *protection, disks map[string]shipper.CopyDisk, kind target.PointKind, done func(error)) (map[string]shipper.CopyDisk, target.PointKind, func(error)) {
	if len(disks) == 0 {
		return disks, kind, done
	}
	var views []*shipper.FileView
	var total int64
	for name, d := range disks {
		if d.Partial || d.View != nil {
			continue
		}
		v, err := shipper.OpenFileView(d.Path)
		if err != nil {
			continue // the copy itself reports it
		}
		views = append(views, v)
		if exts, err := v.Extents(); err == nil {
			for _, e := range exts {
				total += e.Len
			}
		}
		d.View = countingView{v, &p.copied}
		disks[name] = d
	}
	p.copied.Store(0)
	p.toCopy.Store(total)
	return disks, kind, func(err error) {
		for _, v := range views {
			v.Close()
		}
		p.toCopy.Store(0)
		done(err)
	}
}

// countingView adds the bytes read from a view to n.
type countingView struct {
	shipper.DiskView
	n *atomic.Int64
}

func (v countingView) ReadAt(b []byte, off int64) (int, error) {
	k, err := v.DiskView.ReadAt(b, off)
	v.n.Add(int64(k))
	return k, err
}

// discard drops what the change log holds of vm: its active generation is
// frozen and every frozen one dropped. It returns the generations and bytes
// dropped.
func (a *agent) discard(vm string) (gens int, bytes int64) {
	for _, st := range a.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, g := range st.Generations {
			for _, d := range g.Disks {
				bytes += d.Bytes
			}
		}
	}
	if _, err := a.log.Rotate(vm); err != nil {
		return 0, 0
	}
	for _, g := range a.log.Frozen(vm) {
		if a.log.Drop(vm, g) == nil {
			gens++
		}
	}
	return gens, bytes
}

// discardInterval is how often the change log of unprotected VMs is dropped.
const discardInterval = 30 * time.Second

func (a *agent) discardLoop() {
	for {
		a.mu.Lock()
		for _, vm := range a.log.VMs() {
			if a.mu.vms[vm] == nil {
				a.discard(vm)
			}
		}
		a.mu.Unlock()
		select {
		case <-a.ctx.Done():
			return
		case <-clock.After(a.clock, discardInterval):
		}
	}
}

// unprotect stops the protection of vm and says what it removed and what it
// left.
func (a *agent) unprotect(vm string) (UnprotectResult, error) {
	a.mu.Lock()
	p := a.mu.vms[vm]
	if p == nil {
		a.mu.Unlock()
		return UnprotectResult{}, fmt.Errorf("%s is not protected (protected: %s)", vm, orNone(a.protectedNames()))
	}
	delete(a.mu.vms, vm)
	a.mu.Unlock()
	// Saved first: an unprotect that a restart would undo is not done.
	if err := a.save(); err != nil {
		a.mu.Lock()
		a.mu.vms[vm] = p
		a.mu.Unlock()
		return UnprotectResult{}, fmt.Errorf("cannot unprotect %s: %w; it stays protected (free space in %s, then run drfs unprotect %s again)", vm, err, a.cfg.State, vm)
	}
	a.mu.Lock()
	cancel, done := p.cancel, p.done
	a.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	if j, ok := a.jobs.Active(vm); ok {
		a.jobs.Cancel(j.ID, "the VM was unprotected")
	}
	a.releaseHold(p)
	a.deleteSnapshot(p)
	p.mu.Lock()
	state := p.mu.vm.Describe()
	p.mu.vm.Apply(a.clock.Now(), orchestrator.Unprotect{})
	p.mu.Unlock()
	gens, bytes := a.discard(vm)
	a.persist()
	res := UnprotectResult{VM: vm, Was: state, Target: p.target, GenerationsDropped: gens, BytesDropped: bytes}
	if p.store() != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if points, err := p.store().Points(ctx, vm); err == nil {
			res.PointsKept = len(points)
		} else if !errors.Is(err, target.ErrNotFound) {
			res.PointsKept = -1
		}
	}
	return res, nil
}

func (a *agent) protectedNames() []string {
	names := make([]string, 0, len(a.mu.vms))
	for n := range a.mu.vms {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// stageJob is the job kind of the rounds of a state; "" for Protected,
// whose rounds are not jobs.
func stageJob(s orchestrator.State) orchestrator.JobKind {
	switch s {
	case orchestrator.InitialReplication:
		return orchestrator.JobInitialReplication
	case orchestrator.Finalizing:
		return orchestrator.JobFinalize
	case orchestrator.Resynchronizing:
		return orchestrator.JobResync
	}
	return ""
}

// supervise runs the rounds of p until ctx ends or p leaves the states
// where replication runs: at once in the initial replication and while
// finalizing, every interval when protected, and, after a failure, at the
// retry times of the orchestrator's back-off (a VM stopped by a permanent
// error waits for drfs resume).
func (a *agent) supervise(ctx context.Context, p *protection) {
	for {
		wait, early, ok := a.nextRound(p)
		if !ok {
			return
		}
		if wait > 0 {
			switch a.waitRound(ctx, p, wait, early) {
			case waitStop:
				return
			case waitAgain:
				continue // stopped: only drfs resume wakes it
			}
		}
		if ctx.Err() != nil {
			return
		}
		if p.replication() == nil {
			// Restarted before the prerequisites were checked: check again.
			if !a.reenable(ctx, p) {
				continue
			}
		}
		a.runRound(ctx, p)
	}
}

// What waitRound ended with.
const (
	waitRun   = iota // run a round now
	waitAgain        // ask nextRound again
	waitStop         // the agent is stopping
)

// cutPoll is how often a protected VM's active generation is measured
// against the agent's max-generation.
const cutPoll = time.Second

// waitRound waits up to wait for p's next round. A wake-up ends the wait
// early. So does, when early is set, the active generation reaching
// max-generation (a generation of an interval of heavy writes would take
// longer than the interval to ship and apply, and the RPO would grow with
// it), or a generation cut while the last round shipped that the round
// ended without: it would otherwise wait, whole, for the next cut.
func (a *agent) waitRound(ctx context.Context, p *protection, wait time.Duration, early bool) int {
	t := a.clock.NewTimer(wait)
	defer t.Stop()
	var poll clock.Timer
	var polled <-chan time.Time // nil: never ready
	if early && a.cfg.MaxGeneration > 0 {
		poll = a.clock.NewTimer(cutPoll)
		polled = poll.C()
		defer func() { poll.Stop() }()
	}
	for {
		select {
		case <-ctx.Done():
			return waitStop
		case <-p.wake:
			return waitRun
		case <-t.C():
			if wait == forever {
				return waitAgain
			}
			return waitRun
		case <-polled:
			if a.generationFull(p) || a.cutWaiting(p) {
				return waitRun
			}
			poll = a.clock.NewTimer(cutPoll)
			polled = poll.C()
		}
	}
}

// generationFull reports whether p's active generation holds
// max-generation of changed data.
func (a *agent) generationFull(p *protection) bool {
	n, err := a.log.ActiveBytes(p.name)
	return err == nil && a.cfg.MaxGeneration > 0 && n >= a.cfg.MaxGeneration
}

// followAtLeast is the shortest time a round of a protected VM follows
// the generations cut while it ships. Ending a round drains the pipeline:
// the last commit runs with nothing staged behind it, and a VM that keeps
// filling generations loses that time at every round. keepFollowing ends
// it sooner when the round's own work is due.
const followAtLeast = 5 * time.Minute

// keepFollowing reports whether a round of p may go on shipping the
// generations cut while it ships: not when p is no longer protected, a
// disk needs resynchronization, an application-consistent point is due,
// or a round was asked for (drfs resume, resync --now).
func (a *agent) keepFollowing(p *protection) bool {
	return p.state() == orchestrator.Protected && !a.anyFlagged(p.name) && !a.appConsistentDue(p) && len(p.wake) == 0
}

// cutWaiting reports whether a generation of p is frozen and not yet
// shipped: cut while a round shipped, after the round stopped following.
func (a *agent) cutWaiting(p *protection) bool {
	return len(a.log.Frozen(p.name)) > 0
}

// cutWhileShipping cuts the generation of p, if protected, whenever it
// reaches max-generation while a round ships it from the log, until the
// returned func is called: the shipper follows the new generations,
// staging each while the one before commits, so that the cuts keep their
// pace however long shipping takes.
func (a *agent) cutWhileShipping(ctx context.Context, p *protection) (stop func()) {
	if a.cfg.MaxGeneration <= 0 || p.state() != orchestrator.Protected {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			t := a.clock.NewTimer(cutPoll)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C():
			}
			if a.generationFull(p) {
				if _, err := p.replication().rotate(p.name); err != nil {
					slog.Warn(fmt.Sprintf("%s: cutting a full generation: %v", p.name, err))
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// committed records a point the target committed during a round of p, so
// that its RPO and health follow each point rather than each round. Only a
// consistent point moves the RPO: it is the age of the newest state of the
// VM that a failover can be trusted with.
func (a *agent) committed(p *protection, pt target.Point) {
	if !pt.Kind.Consistent() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.vm.State() == orchestrator.Protected {
		p.mu.vm.Succeeded(a.clock.Now(), pt.Frozen)
	}
}

// forever stands for "until woken".
const forever = 24 * time.Hour

// nextRound says how long p's supervisor waits before the next round,
// whether a cut generation may start the round sooner (protected and not
// retrying: a retry keeps to its back-off), and false if p no longer
// replicates.
func (a *agent) nextRound(p *protection) (wait time.Duration, early, ok bool) {
	now := a.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.mu.vm.Status(now)
	if !st.State.Replicating() {
		return 0, false, false
	}
	switch {
	case st.Stopped:
		return forever, false, true
	case st.Failures > 0:
		return st.NextRetry.Sub(now), false, true
	case st.State == orchestrator.Protected || st.State == orchestrator.Resynchronizing:
		if p.mu.lastRound.IsZero() {
			return 0, false, true
		}
		return p.mu.lastRound.Add(p.mu.vm.Policy().Interval).Sub(now), st.State == orchestrator.Protected, true
	}
	return 0, false, true
}

// reenable sets p's replication up after a restart of the agent: a VM
// whose prerequisite check the restart cut short is checked again, as a
// new enable-protection job.
func (a *agent) reenable(ctx context.Context, p *protection) bool {
	var err error
	var id uint64
	if p.state() == orchestrator.Enabling {
		job, jerr := a.jobs.Add(orchestrator.JobEnableProtection, p.name)
		if jerr != nil {
			return false
		}
		id = job.ID
		a.jobs.Start(id)
		err = a.enable(p, id)
	} else {
		err = a.attach(p)
	}
	if err != nil {
		if id != 0 {
			a.jobs.Fail(id, err)
		}
		slog.Error(fmt.Sprintf("%s: %v", p.name, err))
		p.mu.Lock()
		p.mu.vm.Failed(a.clock.Now(), err)
		p.mu.Unlock()
		a.persist()
		return false
	}
	a.persist()
	return ctx.Err() == nil
}

// attach opens the target and replication of a VM restored from the
// agent's state.
func (a *agent) attach(p *protection) error {
	store, err := a.stores.get(p.target)
	if err != nil {
		return err
	}
	r, err := a.newReplication(p, store)
	if err != nil {
		return err
	}
	p.setReplication(store, r)
	return nil
}

// runRound runs one round of p as the job of its stage and moves its
// lifecycle on by what happened.
func (a *agent) runRound(ctx context.Context, p *protection) {
	// The initial replication of a VM the target does not hold copies
	// every disk whole from a snapshot: that repairs any lost tracking.
	whole := p.state() == orchestrator.InitialReplication && a.mount != nil && !a.targetHolds(ctx, p)
	if reason := a.flagged(p.name); reason != "" && !whole {
		// Tracking was lost on a disk: this round (or the first in the
		// resync window; at once for hot extents) compares it.
		p.mu.Lock()
		p.mu.vm.Apply(a.clock.Now(), orchestrator.ResyncRequired{Reason: reason, Now: a.onlyHot(p.name)})
		p.mu.Unlock()
	}
	state := p.state()
	id := a.stageJob(p, state)
	if state == orchestrator.Protected {
		a.appConsistentCut(ctx, p)
	}
	if state == orchestrator.Finalizing {
		a.deleteSnapshot(p)
	}
	stopProgress := a.followCopy(p, id)
	p.mu.Lock()
	p.mu.lastRound = a.clock.Now() // rounds start every interval, however long they take
	p.mu.Unlock()
	var res roundResult
	if whole {
		res = a.snapshotCopy(ctx, p)
	} else {
		p.replication().loop.Round(ctx)
		res = loopResult(p)
	}
	stopProgress()
	if ctx.Err() != nil {
		return // stopping: the job is cancelled, and goes on at the next start
	}
	a.afterRound(p, id, res)
}

// stageJob returns the job of the stage p is in (state), 0 if the stage
// has none: the unfinished job of that kind, or a new one. It is running,
// or waiting while a resync waits for the resync window. It is saved at
// once, so that a kill -9 leaves it to be shown failed at the next start.
func (a *agent) stageJob(p *protection, state orchestrator.State) uint64 {
	kind := stageJob(state)
	if kind == "" {
		return 0
	}
	j, ok := a.jobs.Active(p.name)
	if !ok || j.Kind != kind {
		var err error
		if j, err = a.jobs.Add(kind, p.name); err != nil {
			return 0
		}
	}
	if state == orchestrator.Resynchronizing {
		if wait, opens := p.replication().waitsForWindow(p.name); wait {
			a.jobs.Wait(j.ID, fmt.Sprintf("waiting for the resync window %s (%s; drfs resync %s %s --now runs it at once)",
				p.replication().window(), OpensString(opens), a.cfg.State, p.name))
			a.persist()
			return j.ID
		}
	}
	if j.State != orchestrator.JobRunning {
		a.jobs.Start(j.ID)
	}
	if state == orchestrator.Resynchronizing {
		a.jobs.Progress(j.ID, j.Progress, "comparing the disks with the replica by chunk checksums")
	}
	a.persist()
	return j.ID
}

// roundResult is how a round went: its error, the newest point it made,
// and its bytes.
type roundResult struct {
	err       error
	gen       uint64
	raw, wire uint64
}

// loopResult is the result of p's last loop round.
func loopResult(p *protection) roundResult {
	st, ok := p.replication().loop.State(p.name)
	if !ok {
		return roundResult{err: errors.New("the round did not run")}
	}
	return roundResult{err: st.LastError, gen: st.LastGeneration, raw: st.Last.RawBytes, wire: st.Last.WireBytes}
}

// targetHolds reports whether p's target holds a point of its VM (or
// cannot say).
func (a *agent) targetHolds(ctx context.Context, p *protection) bool {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	points, err := p.store().Points(ctx, p.name)
	return err == nil && len(points) > 0 || err != nil && !errors.Is(err, target.ErrNotFound)
}

// snapshotCopy is the initial replication of p: with the VM's writes held
// for an instant, its generation is cut and a snapshot of its disks taken
// at that cut; the disks are then copied from the snapshot while the VM
// writes on (the snapshot keeps the before-images of what it overwrites),
// and the copy rides on the cut's generation. The point it makes is the
// VM at the cut: consistent, not a fuzzy copy. The snapshot is deleted when
// the VM finalizes (or at once if the copy fails: the next try takes a new
// one).
func (a *agent) snapshotCopy(ctx context.Context, p *protection) roundResult {
	vm := p.name
	disks, _ := a.disksOf(vm)
	names := make([]string, 0, len(disks))
	rels := make([]string, 0, len(disks))
	for name, path := range disks {
		names = append(names, name)
		rels = append(rels, relPath(a.cfg.Source, path))
	}
	slices.Sort(names)
	slices.Sort(rels)
	a.deleteSnapshot(p)
	// The whole copy supersedes any resync flag of these disks (a dirty
	// shutdown during an earlier try, say); one set from now on, a
	// tracking loss during the copy, still counts.
	for _, name := range names {
		a.log.ClearResync(vm, name)
	}
	// The copy covers whatever changed the disks behind the mount's back.
	all := func(string) bool { return true }
	gen, snap, _, err := cutWithSnapshot(ctx, a.mount, a.log, vm, rels, a.snapshotDir(vm), all)
	if err != nil {
		return roundResult{err: err}
	}
	p.mu.Lock()
	p.mu.snap = snap
	p.mu.Unlock()
	// The older generations are in the snapshot already.
	for _, g := range a.log.Frozen(vm) {
		if g < gen {
			a.log.Drop(vm, g)
		}
	}
	copies := map[string]shipper.CopyDisk{}
	var total int64
	for _, name := range names {
		v, err := snap.View(relPath(a.cfg.Source, disks[name]))
		if err != nil {
			a.deleteSnapshot(p)
			return roundResult{err: fmt.Errorf("snapshot of %s: %w", vm, err)}
		}
		sv := v
		if exts, err := sv.Extents(); err == nil {
			for _, e := range exts {
				total += e.Len
			}
		}
		copies[name] = shipper.CopyDisk{Path: disks[name], View: countingView{sv, &p.copied}}
	}
	p.copied.Store(0)
	p.toCopy.Store(total)
	slog.Info(fmt.Sprintf("%s: initial replication of %d disk(s) (%s allocated) from a snapshot at generation %d to %s",
		vm, len(names), units.Bytes(total), gen, p.target))
	st, err := p.replication().sh.ShipCopyDisks(ctx, vm, gen, copies, target.KindSnapshot)
	p.toCopy.Store(0)
	// What the copy sent counts in the VM's totals (drfs status, the
	// metrics) as the rounds' ships do, failed or not.
	p.replication().loop.Record(vm, st)
	if err != nil {
		a.deleteSnapshot(p)
		return roundResult{err: err}
	}
	slog.Info(fmt.Sprintf("%s: recovery point %d on target: the disks at the snapshot, %s sent in %v",
		vm, gen, units.Bytes(int64(st.WireBytes)), st.Duration.Round(time.Millisecond)))
	return roundResult{gen: gen, raw: st.RawBytes, wire: st.WireBytes}
}

func (a *agent) snapshotDir(vm string) string {
	return filepath.Join(a.cfg.State, "snapshots", url.PathEscape(vm))
}

// deleteSnapshot deletes p's snapshot, if it has one, and its files.
func (a *agent) deleteSnapshot(p *protection) {
	p.mu.Lock()
	snap := p.mu.snap
	p.mu.snap = nil
	p.mu.Unlock()
	if snap == nil {
		return
	}
	if err := snap.Delete(); err != nil {
		slog.Warn(fmt.Sprintf("%s: deleting its snapshot: %v", p.name, err))
	}
	os.RemoveAll(a.snapshotDir(p.name))
}

// progressSaveEvery is how often the progress of a running copy is saved
// in the agent's state.
const progressSaveEvery = 5 * time.Second

// followCopy reports the progress of a whole copy to job id while a round
// runs; the returned function stops it.
func (a *agent) followCopy(p *protection, id uint64) func() {
	if id == 0 {
		return func() {}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		saved := time.Now()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if total := p.toCopy.Load(); total > 0 {
					n := min(p.copied.Load(), total)
					a.jobs.Progress(id, int(n*99/total), fmt.Sprintf("copied %s of %s", units.Bytes(n), units.Bytes(total)))
					if time.Since(saved) >= progressSaveEvery {
						// A kill -9 then shows the job failed at the
						// progress it reached.
						a.persist()
						saved = time.Now()
					}
				}
			}
		}
	}()
	return func() { close(stop); <-done }
}

// afterRound tells p's VM how its last round went, moves its lifecycle on,
// and ends the job id of its stage when the stage is done.
func (a *agent) afterRound(p *protection, id uint64, res roundResult) {
	now := a.clock.Now()
	var newest time.Time
	if res.err == nil {
		newest = a.newestPoint(p)
	}
	flagged := a.flagged(p.name)

	p.mu.Lock()
	vm := p.mu.vm
	before := vm.State()
	err := res.err
	if err != nil {
		vm.Failed(now, err)
	} else {
		vm.Succeeded(now, newest)
		switch before {
		case orchestrator.InitialReplication:
			vm.Apply(now, orchestrator.InitialCopyDone{})
		case orchestrator.Finalizing:
			vm.Apply(now, orchestrator.Finalized{})
		case orchestrator.Resynchronizing:
			if flagged == "" {
				vm.Apply(now, orchestrator.ResyncDone{})
			}
		}
	}
	if flagged != "" {
		// Tracking was lost on a disk (or its log grew past the
		// threshold): the VM resynchronizes.
		// Hot extents after a crash of the host are compared at once,
		// whatever the resync window.
		vm.Apply(now, orchestrator.ResyncRequired{Reason: flagged, Now: a.onlyHot(p.name)})
	}
	status := vm.Status(now)
	after, desc := vm.State(), vm.Describe()
	p.mu.Unlock()

	if id != 0 {
		switch {
		case err != nil && status.Stopped:
			a.jobs.Fail(id, err)
		case err != nil:
			reached := 0 // a failed attempt keeps the progress the job reached
			if j, ok := a.jobs.Get(id); ok {
				reached = j.Progress
			}
			a.jobs.Progress(id, reached, fmt.Sprintf("attempt %d failed (%v); retrying at %s", status.Failures, err,
				status.NextRetry.Local().Format(time.TimeOnly)))
		case after != before:
			a.jobs.Succeed(id, fmt.Sprintf("recovery point %d on the target (%s of data, %s sent); %s",
				res.gen, units.Bytes(int64(res.raw)), units.Bytes(int64(res.wire)), desc))
		}
	}
	if after != before {
		slog.Info(fmt.Sprintf("%s: %s → %s", p.name, before, desc))
	}
	a.persist()
}

// flagged returns why a disk of vm lost its tracking and needs
// resynchronization, "" if none does. A disk flagged because its log
// reached the resync threshold lost nothing: its VM stays Protected, and
// the round that resynchronizes it (in the resync window) is one of its
// protected rounds.
func (a *agent) flagged(vm string) string {
	for _, st := range a.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Resync && !d.Removed && lostTracking(d.Reason) {
				return fmt.Sprintf("%s: %s", d.Name, d.Reason)
			}
		}
	}
	return ""
}

// onlyHot reports whether every disk of vm that lost its tracking has only
// its hot extents to compare after a crash of the host.
func (a *agent) onlyHot(vm string) bool {
	for _, st := range a.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Resync && !d.Removed && lostTracking(d.Reason) && !tracker.IsHotReason(d.Reason) {
				return false
			}
		}
	}
	return true
}

// anyFlagged reports whether a disk of vm is flagged for resynchronization
// for any reason.
func (a *agent) anyFlagged(vm string) bool {
	for _, st := range a.log.Status() {
		if st.Name != vm {
			continue
		}
		for _, d := range st.Disks {
			if d.Resync && !d.Removed {
				return true
			}
		}
	}
	return false
}

// newestPoint returns when the newest consistent point of p on its target
// was cut (zero if it has none): fuzzy points do not count for the RPO.
func (a *agent) newestPoint(p *protection) time.Time {
	ctx, cancel := context.WithTimeout(a.ctx, 20*time.Second)
	defer cancel()
	points, err := p.store().Points(ctx, p.name)
	if err != nil {
		return time.Time{}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if points[i].Kind.Consistent() {
			return points[i].Frozen
		}
	}
	return time.Time{}
}

// resume lets a VM stopped by a permanent error replicate again, at once.
func (a *agent) resume(vm string) error {
	p := a.protection(vm)
	if p == nil {
		return fmt.Errorf("%s is not protected", vm)
	}
	p.mu.Lock()
	err := p.mu.vm.Resume()
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if r := p.replication(); r != nil {
		r.loop.Resume(vm)
	}
	a.persist()
	p.poke()
	return nil
}

// resyncNow flags every disk of vm for a comparison with its replica and
// runs it at once, whatever the resync window.
func (a *agent) resyncNow(vm string) (control.ResyncAnswer, error) {
	if a.protection(vm) == nil {
		return control.ResyncAnswer{}, fmt.Errorf("%s is not protected", vm)
	}
	disks, _ := a.disksOf(vm)
	for name := range disks {
		a.log.MarkResync(vm, name, "resynchronization requested by the operator")
	}
	return a.onResync(vm, true)
}

// onResync is told that the disks of vm were flagged for resynchronization
// (drfs resync, on either socket); now runs it at once.
func (a *agent) onResync(vm string, now bool) (control.ResyncAnswer, error) {
	p := a.protection(vm)
	if p == nil {
		return control.ResyncAnswer{}, fmt.Errorf("%s is not protected: drfs protect %s first", vm, vm)
	}
	r := p.replication()
	if r == nil {
		return control.ResyncAnswer{}, fmt.Errorf("%s is %s: its replication has not started yet", vm, p.state())
	}
	ans, err := r.resyncHook(vm, now)
	if err != nil {
		return ans, err
	}
	p.mu.Lock()
	p.mu.vm.Apply(a.clock.Now(), orchestrator.ResyncRequired{Reason: "requested by the operator", Now: now})
	p.mu.Unlock()
	a.persist()
	if ans.Now {
		p.poke()
	}
	return ans, nil
}

// replicationStates reports the replication of every protected VM, for the
// change log's control socket (drfs status STATEDIR).
func (a *agent) replicationStates() []control.Replication {
	var out []control.Replication
	for _, p := range a.protections() {
		if r := p.replication(); r != nil {
			out = append(out, r.states()...)
		}
	}
	return out
}

// hookTimeout bounds each run of an application-consistency hook.
const hookTimeout = 2 * time.Minute

// appConsistentDue reports whether p has an application-consistency hook
// whose next run is due.
func (a *agent) appConsistentDue(p *protection) bool {
	now := a.clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.over.AppHook == "" {
		return false
	}
	return p.mu.lastApp.IsZero() || now.Sub(p.mu.lastApp) >= p.mu.over.AppEvery
}

// appConsistentCut makes an app-consistent point of p when its hook is due:
// the hook is run with DRFS_PHASE=freeze (e.g. virsh domfsfreeze), and if
// it succeeds the VM's generation is cut and the hook is run again with
// DRFS_PHASE=thaw; that generation's point is marked app-consistent. A
// failed freeze leaves the point crash-consistent and is shown in the
// status; thaw runs whatever happened after a freeze was attempted.
func (a *agent) appConsistentCut(ctx context.Context, p *protection) {
	if !a.appConsistentDue(p) {
		return
	}
	hook := p.overrides().AppHook
	now := a.clock.Now()
	disks, _ := a.disksOf(p.name)
	var paths []string
	for _, path := range disks {
		paths = append(paths, strings.Replace(path, a.cfg.Source, a.cfg.Mountpoint, 1))
	}
	slices.Sort(paths)
	run := func(phase string) error {
		hctx, cancel := context.WithTimeout(ctx, hookTimeout)
		defer cancel()
		cmd := exec.CommandContext(hctx, "/bin/sh", "-c", hook)
		cmd.Env = append(os.Environ(), "DRFS_VM="+p.name, "DRFS_PHASE="+phase, "DRFS_DISKS="+strings.Join(paths, " "))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("app-consistency hook (%s) failed: %v: %s", phase, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	ferr := run("freeze")
	var gen uint64
	if ferr == nil {
		var rerr error
		if gen, rerr = p.replication().rotate(p.name); rerr != nil {
			ferr = fmt.Errorf("rotating while frozen: %w", rerr)
		}
	}
	terr := run("thaw")
	p.mu.Lock()
	p.mu.lastApp = now
	switch {
	case ferr != nil:
		p.mu.appErr = ferr.Error()
	case terr != nil:
		// The cut was made while frozen: the point is app-consistent,
		// but the VM may still be frozen: say so loudly.
		p.mu.appErr = terr.Error()
	default:
		p.mu.appErr = ""
	}
	appErr := p.mu.appErr
	p.mu.Unlock()
	if ferr == nil {
		p.replication().markAppConsistent(p.name, gen)
	}
	switch {
	case ferr == nil && terr != nil:
		slog.Error(p.name + ": " + appErr) // the VM may still be frozen
	case appErr != "":
		slog.Warn(p.name + ": " + appErr)
	}
}
