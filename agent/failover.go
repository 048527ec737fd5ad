package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/resync"
)

// FailoverRequest is a planned failover asked of the agent.
type FailoverRequest struct {
	VM string `json:"vm"`
	// To is the empty directory the replica is materialised in; without
	// it the point is only made and checked (failing back: the other site
	// materialises it).
	To string `json:"to"`
	// StopHook, if set, is run first (DRFS_VM, DRFS_DISKS set) to stop the
	// VM, e.g. virsh shutdown; Hook after materialising, as in an
	// unplanned failover.
	StopHook string `json:"stop_hook,omitempty"`
	Hook     string `json:"hook,omitempty"`
}

// plannedFailover fails vm over with no data lost: its writes are held
// (after the stop hook, if any), its last generation is shipped, the
// target's newest point is compared with the disks chunk by chunk (the
// failover stops if anything differs), and the point is materialised in
// the directory. The VM is then FailedOver and its writes stay held while
// the agent runs: the source disks must not move on from the replica. It
// runs as a failover job, and returns it.
func (a *agent) plannedFailover(ctx context.Context, req FailoverRequest) (orchestrator.Job, error) {
	p := a.protection(req.VM)
	if p == nil {
		return orchestrator.Job{}, fmt.Errorf("%s is not protected: nothing to fail over", req.VM)
	}
	if st := p.state(); st != orchestrator.Protected {
		return orchestrator.Job{}, fmt.Errorf("cannot fail over %s: it is %s, not Protected (a planned failover needs its replication in step)", req.VM, st)
	}
	if req.To != "" {
		if err := recovery.CheckEmptyDir(req.To); err != nil {
			return orchestrator.Job{}, err
		}
	}
	job, err := a.jobs.Add(orchestrator.JobFailover, req.VM)
	if err != nil {
		return orchestrator.Job{}, err
	}
	a.jobs.Start(job.ID)
	// The VM's rounds stop: from here on this job ships it.
	a.mu.Lock()
	cancel, done := p.cancel, p.done
	a.mu.Unlock()
	cancel()
	<-done
	msg, err := a.failoverSteps(ctx, p, req, job.ID)
	if err != nil {
		a.releaseHold(p)
		a.jobs.Fail(job.ID, err)
		a.mu.Lock()
		if a.mu.vms[p.name] == p {
			a.launchLocked(p)
		}
		a.mu.Unlock()
		a.persist()
		return a.jobLatest(job.ID), fmt.Errorf("planned failover of %s: %w (replication goes on as before)", req.VM, err)
	}
	a.jobs.Succeed(job.ID, msg)
	a.persist()
	return a.jobLatest(job.ID), nil
}

// failoverSteps are the steps of a planned failover of p (job id).
func (a *agent) failoverSteps(ctx context.Context, p *protection, req FailoverRequest, id uint64) (string, error) {
	vm := p.name
	disks, _ := a.disksOf(vm)
	var rels, paths []string
	for _, path := range disks {
		rels = append(rels, relPath(a.cfg.Source, path))
		paths = append(paths, strings.Replace(path, a.cfg.Source, a.cfg.Mountpoint, 1))
	}
	slices.Sort(rels)
	slices.Sort(paths)
	if req.StopHook != "" {
		a.jobs.Progress(id, 5, "stopping the VM: "+req.StopHook)
		if _, err := recovery.RunHook(ctx, req.StopHook, []string{"DRFS_VM=" + vm, "DRFS_DISKS=" + strings.Join(paths, " ")}, nil); err != nil {
			return "", fmt.Errorf("stop hook: %w", err)
		}
	}
	a.jobs.Progress(id, 10, "holding the VM's writes")
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	release, err := a.mount.QuiescePaths(qctx, rels)
	cancel()
	if err != nil {
		return "", fmt.Errorf("holding the writes of %s: %w", vm, err)
	}
	p.mu.Lock()
	p.mu.hold = release
	p.mu.Unlock()

	a.jobs.Progress(id, 20, "shipping the last generation")
	p.replication().loop.Round(ctx)
	res := loopResult(p)
	if res.err != nil {
		return "", fmt.Errorf("shipping the last generation: %w", res.err)
	}
	ctx2, cancel := context.WithTimeout(ctx, time.Minute)
	points, err := p.store().Points(ctx2, vm)
	cancel()
	if err != nil || len(points) == 0 {
		return "", fmt.Errorf("listing the points of %s on %s: %v", vm, p.target, err)
	}
	point := points[len(points)-1]
	if res.gen != 0 && point.Generation != res.gen {
		return "", fmt.Errorf("the target's newest point is %d, not %d, the last one shipped", point.Generation, res.gen)
	}

	a.jobs.Progress(id, 40, fmt.Sprintf("checking point %s against the disks, chunk by chunk", point.ID()))
	var compared int64
	for _, d := range point.Disks {
		path, ok := disks[d.Name]
		if !ok {
			return "", fmt.Errorf("disk %s of point %s is not in %s", d.Name, point.ID(), a.cfg.Source)
		}
		r, err := recovery.VerifyFile(ctx, p.store(), vm, point.Generation, d.Name, path)
		if errors.Is(err, resync.ErrDiverged) || err == nil && !r.InSync() {
			return "", fmt.Errorf("point %s differs from disk %s (%d range(s), %s): data would be lost; the VM is flagged for resynchronization",
				point.ID(), d.Name, len(r.Ranges), units.Bytes(r.SendBytes()))
		}
		if err != nil {
			return "", fmt.Errorf("checking disk %s against point %s: %w", d.Name, point.ID(), err)
		}
		compared += r.Compared()
	}
	if len(point.Disks) != len(disks) {
		return "", fmt.Errorf("point %s has %d disk(s), %s has %d", point.ID(), len(point.Disks), vm, len(disks))
	}

	if req.To == "" {
		// Failing back, the original site materialises the point itself.
		p.mu.Lock()
		err = p.mu.vm.Apply(a.clock.Now(), orchestrator.Failover{Type: orchestrator.Planned, Point: point.ID()})
		p.mu.Unlock()
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("no data lost: the last generation is point %s on %s, equal to the disks (%d chunks compared); not materialised here; the source's writes stay held",
			point.ID(), p.target, compared), nil
	}
	a.jobs.Progress(id, 70, "materialising point "+point.ID()+" in "+req.To)
	created, err := recovery.MakeDir(req.To)
	if err != nil {
		return "", err
	}
	j := &recovery.Failover{Type: orchestrator.Planned, TargetURL: p.target, Store: p.store(), VM: vm, Point: point,
		Replicas: recovery.ReflinkSource(p.target, vm, points), Dir: req.To, Hook: req.Hook, Progress: logCopied(vm)}
	done, err := j.Run(ctx)
	if err != nil {
		if created && j.Result.Disks == nil {
			os.RemoveAll(req.To)
		}
		return "", err
	}
	p.mu.Lock()
	err = p.mu.vm.Apply(a.clock.Now(), orchestrator.Failover{Type: orchestrator.Planned, Point: point.ID()})
	p.mu.Unlock()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("no data lost: the last generation is point %s, equal to the disks (%d chunks compared); %s; the source's writes stay held",
		point.ID(), compared, done), nil
}

// releaseHold lets the writes of p's VM go on, if they are held.
func (a *agent) releaseHold(p *protection) {
	p.mu.Lock()
	release := p.mu.hold
	p.mu.hold = nil
	p.mu.Unlock()
	if release != nil {
		release()
	}
}

// cancelFailover undoes a planned failover that was not committed: the
// source's writes go on and so does its replication. The materialised copy
// stays where it is.
func (a *agent) cancelFailover(vm string) error {
	p := a.protection(vm)
	if p == nil {
		return fmt.Errorf("%s is not protected", vm)
	}
	p.mu.Lock()
	err := p.mu.vm.Apply(a.clock.Now(), orchestrator.CancelFailover{})
	p.mu.Unlock()
	if err != nil {
		return err
	}
	a.releaseHold(p)
	a.mu.Lock()
	if a.mu.vms[vm] == p {
		a.launchLocked(p)
	}
	a.mu.Unlock()
	a.persist()
	return nil
}

// commitFailover makes a failover final: the VM's older recovery points
// are released on the target (the newest, the one failed over to, stays).
func (a *agent) commitFailover(ctx context.Context, vm string) (string, error) {
	p := a.protection(vm)
	if p == nil {
		return "", fmt.Errorf("%s is not protected", vm)
	}
	p.mu.Lock()
	err := p.mu.vm.Apply(a.clock.Now(), orchestrator.Commit{})
	p.mu.Unlock()
	if err != nil {
		return "", err
	}
	a.persist()
	msg := vm + " committed: the failover is final"
	if p.store() == nil {
		a.attach(p) // restarted since the failover
	}
	if p.store() != nil {
		before, _ := p.store().Points(ctx, vm)
		if err := p.store().Expire(ctx, vm, a.clock.Now().Add(time.Hour), 1); err != nil {
			return msg, fmt.Errorf("%s; releasing its older recovery points failed: %w", msg, err)
		}
		after, _ := p.store().Points(ctx, vm)
		msg += fmt.Sprintf("; %d older recovery point(s) released on the target, %d kept", len(before)-len(after), len(after))
	}
	return msg, nil
}

// logCopied is a recovery.Options.Progress that logs each disk of vm as
// its copy ends.
func logCopied(vm string) func(disk string, done, total int64, finished bool) {
	start := time.Now()
	return func(disk string, done, total int64, finished bool) {
		if finished {
			slog.Info(fmt.Sprintf("%s/%s: %s of data in %v", vm, disk, units.Bytes(total), time.Since(start).Round(time.Millisecond)))
			start = time.Now()
		}
	}
}
