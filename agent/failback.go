package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

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

// Failing back, in drfs, takes both sites' agents:
//
//  1. drfs reprotect VM --reverse URL --reverse-source-id ID (here, after a
//     commit): the VM's disks as they were at the failover are copied into
//     a target at this site (a local copy: nothing crosses the network),
//     as a point of the recovery site's identity ID. The VM is
//     ReverseReplicating.
//  2. At the recovery site: drfs protect VM --target (that target, served):
//     the target holds the VM already, so its disks are compared chunk by
//     chunk and only what changed since the failover crosses.
//  3. At the recovery site: drfs failover VM --type planned (no --to): its
//     writes are held and its last generation shipped and checked.
//  4. drfs failback VM (here): the newest point of the reverse target is
//     written into the VM's disks through the mount (only the chunks that
//     differ), checked, and the VM is protected again in the original
//     direction: a resynchronization against its old replica first, so
//     again only what changed crosses.

// ReprotectRequest is step 1.
type ReprotectRequest struct {
	VM       string `json:"vm"`
	Reverse  string `json:"reverse"`
	SourceID string `json:"source_id"`
}

// reprotect seeds the reverse target with the VM's disks and moves the VM
// to ReverseReplicating.
func (a *agent) reprotect(ctx context.Context, req ReprotectRequest) (string, error) {
	p := a.protection(req.VM)
	if p == nil {
		return "", fmt.Errorf("%s is not protected", req.VM)
	}
	if st := p.state(); st != orchestrator.Committed {
		return "", fmt.Errorf("cannot reprotect %s: it is %s, not Committed (fail over, commit, then reprotect)", req.VM, st)
	}
	if req.Reverse == "" || req.SourceID == "" {
		return "", errors.New("give the target the recovery site replicates back into (--reverse URL) and its identity there (--reverse-source-id)")
	}
	// Opened for this step only: the recovery site's agent opens it next.
	store, err := targets.Open(req.Reverse, a.stores.tls)
	if err != nil {
		return "", err
	}
	defer store.Close()
	lz4, _ := targets.Compresses(req.Reverse, a.cfg.Compress) // the mode was checked with the configuration
	st, gen, err := a.seed(ctx, p.name, store, req.SourceID, lz4)
	if err != nil {
		return "", fmt.Errorf("copying %s into %s: %w", p.name, req.Reverse, err)
	}
	now := a.clock.Now()
	p.mu.Lock()
	err = p.mu.vm.Apply(now, orchestrator.Reprotect{})
	if err == nil {
		// The comparison of the reverse direction is the recovery site's
		// to run, when it protects the VM against this copy.
		err = p.mu.vm.Apply(now, orchestrator.ResyncDone{})
	}
	p.reverse = req.Reverse
	p.mu.Unlock()
	a.persist()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s: its disks as failed over are point %d of %s (%s, a local copy, in %v); at the recovery site, run: drfs protect %s --target (this target, served to it): only the chunks changed since the failover will cross",
		p.name, gen, req.Reverse, units.Bytes(int64(st.RawBytes)), st.Duration.Round(time.Millisecond), p.name), nil
}

// seed copies the disks of vm, whole, into store as its newest point, of
// source id, LZ4-compressed if lz4. The disks' writes are held (the VM
// failed over), so the copy is the VM at the failover.
func (a *agent) seed(ctx context.Context, vm string, store target.Store, id string, lz4 bool) (shipper.Stats, uint64, error) {
	disks, _ := a.disksOf(vm)
	gen := uint64(1)
	if points, err := store.Points(ctx, vm); err == nil && len(points) > 0 {
		gen = points[len(points)-1].Generation + 1
	} else if err != nil && !errors.Is(err, target.ErrNotFound) {
		return shipper.Stats{}, 0, err
	}
	src := &seedSource{gen: gen, frozen: a.clock.Now(), bs: a.bs}
	copies := map[string]shipper.CopyDisk{}
	for name, path := range disks {
		src.disks = append(src.disks, shipper.DiskChange{Name: name, Size: fileSize(path)})
		copies[name] = shipper.CopyDisk{Path: path}
	}
	slices.SortFunc(src.disks, func(x, y shipper.DiskChange) int { return cmpString(x.Name, y.Name) })
	sh := shipper.New(src, wrap.Retry(store, wrap.DefaultPolicy, nil), shipper.Options{Source: id, NoCompression: !lz4})
	st, err := sh.ShipCopyDisks(ctx, vm, gen, copies, target.KindGeneration)
	return st, gen, err
}

func cmpString(x, y string) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// seedSource is a change log of one frozen generation with no records: a
// copy of whole disks rides on it.
type seedSource struct {
	gen    uint64
	frozen time.Time
	bs     int
	disks  []shipper.DiskChange
}

func (s *seedSource) Frozen(string) []uint64 { return []uint64{s.gen} }

func (s *seedSource) Generation(vm string, gen uint64) (shipper.Generation, error) {
	if gen != s.gen {
		return shipper.Generation{}, fmt.Errorf("no generation %d of %s: %w", gen, vm, tracker.ErrGeneration)
	}
	return shipper.Generation{Frozen: s.frozen, BlockSize: s.bs, Disks: s.disks}, nil
}

func (s *seedSource) ReadGeneration(string, uint64, func(tracker.Record) error) error { return nil }

func (s *seedSource) Drop(string, uint64) error { return nil }

// failback is step 4: the reverse target's newest point written into the
// VM's disks through the mount, only where they differ, then checked; the
// VM then resynchronizes with its old replica and is Protected again.
func (a *agent) failback(ctx context.Context, vm string) (string, error) {
	job, err := a.jobs.Add(orchestrator.JobFailback, vm)
	if err != nil {
		return "", err
	}
	a.jobs.Start(job.ID)
	msg, err := a.failbackSteps(ctx, vm, job.ID)
	if err != nil {
		a.jobs.Fail(job.ID, err)
		return "", err
	}
	a.jobs.Succeed(job.ID, msg)
	return msg, nil
}

// failbackSteps are the steps of failback (job id).
func (a *agent) failbackSteps(ctx context.Context, vm string, id uint64) (string, error) {
	p := a.protection(vm)
	if p == nil {
		return "", fmt.Errorf("%s is not protected", vm)
	}
	if st := p.state(); st != orchestrator.ReverseReplicating {
		return "", fmt.Errorf("cannot fail back %s: it is %s, not ReverseReplicating (drfs reprotect first)", vm, st)
	}
	if p.replication() == nil {
		// Restarted since the failover: the replication to the old
		// replica is set up again, to resume after the failback.
		if err := a.attach(p); err != nil {
			return "", err
		}
	}
	store, err := targets.Open(p.reverse, a.stores.tls)
	if err != nil {
		return "", fmt.Errorf("%w (the recovery site's agent must have let go of it: drfs unprotect or stop it there)", err)
	}
	defer store.Close()
	points, err := store.Points(ctx, vm)
	if err != nil || len(points) == 0 {
		return "", fmt.Errorf("points of %s on %s: %v", vm, p.reverse, err)
	}
	point := points[len(points)-1]
	if !point.Kind.Consistent() {
		return "", fmt.Errorf("the newest point %s of %s on %s is a fuzzy copy (%s): fail over the recovery site first (drfs failover %s --type planned there)", point.ID(), vm, p.reverse, point.Kind, vm)
	}
	disks, _ := a.disksOf(vm)
	for _, d := range point.Disks {
		if _, ok := disks[d.Name]; !ok {
			return "", fmt.Errorf("disk %s of point %s is not in %s: failing back a disk that was added is not supported", d.Name, point.ID(), a.cfg.Source)
		}
	}
	// The VM's writes go through the mount again: those of the failback
	// first, logged like any other.
	a.releaseHold(p)
	var written int64
	for i, d := range point.Disks {
		a.jobs.Progress(id, i*90/len(point.Disks), fmt.Sprintf("writing the chunks of %s that differ from point %s", d.Name, point.ID()))
		n, err := a.applyPoint(ctx, store, vm, point.Generation, d, disks[d.Name])
		written += n
		if err != nil {
			return "", fmt.Errorf("writing point %s of %s into disk %s: %w", point.ID(), vm, d.Name, err)
		}
		if r, err := recovery.VerifyFile(ctx, store, vm, point.Generation, d.Name, disks[d.Name]); err != nil || !r.InSync() {
			return "", fmt.Errorf("disk %s differs from point %s after the failback (%v)", d.Name, point.ID(), err)
		}
	}
	reverse := p.reverse
	now := a.clock.Now()
	p.mu.Lock()
	err = p.mu.vm.Apply(now, orchestrator.Failback{})
	if err == nil {
		err = p.mu.vm.Apply(now, orchestrator.Reprotect{})
	}
	p.reverse = ""
	p.mu.Unlock()
	if err != nil {
		return "", err
	}
	for name := range disks {
		a.log.MarkResync(vm, name, "failed back: compared with its replica")
	}
	p.replication().resyncHook(vm, true)
	a.mu.Lock()
	if a.mu.vms[vm] == p {
		a.launchLocked(p)
	}
	a.mu.Unlock()
	a.persist()
	return fmt.Sprintf("%s failed back: point %s of %s written into its disks (%s that differed), checked; replication to %s resumes after a comparison with its replica",
		vm, point.ID(), reverse, units.Bytes(written), p.target), nil
}

// applyPoint makes the disk at path (its file in the source) equal to disk
// d of point gen by writing, through the mount, the chunks that differ.
func (a *agent) applyPoint(ctx context.Context, store target.Store, vm string, gen uint64, d target.DiskInfo, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, err
	}
	res, err := resync.Diff(ctx, f, st.Size(), store, vm, gen, d.Name, resync.Options{})
	f.Close()
	if err != nil {
		return 0, err
	}
	r, err := store.Open(ctx, vm, gen, d.Name)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	mounted := filepath.Join(a.cfg.Mountpoint, filepath.FromSlash(relPath(a.cfg.Source, path)))
	out, err := os.OpenFile(mounted, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	if err := out.Truncate(d.Size); err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	var n int64
	for _, e := range res.Ranges {
		for off := e.Off; off < e.Off+e.Len && off < d.Size; {
			k := min(int64(len(buf)), e.Off+e.Len-off, d.Size-off)
			if got, err := r.ReadAt(buf[:k], off); err != nil && !(errors.Is(err, io.EOF) && int64(got) == k) {
				return n, err
			}
			if _, err := out.WriteAt(buf[:k], off); err != nil {
				return n, err
			}
			off += k
			n += k
		}
	}
	return n, out.Sync()
}
