package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/orchestrator"
)

// ProtectAnswer is the agent's answer to drfs protect: the
// enable-protection job of a VM it protects now, or, for a VM protected
// already, what its new settings changed.
type ProtectAnswer struct {
	orchestrator.Job
	Changed string `json:"settings_changed,omitempty"`
}

// Overrides returns the settings drfs protect gave p.
func (p *protection) overrides() Overrides {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.over
}

// given reports whether o sets anything.
func (o Overrides) given() bool { return o != Overrides{} }

// Settings lists the settings drfs protect gives a VM over the agent's
// configuration, by the names of its flags: ProtectRequest.Reset takes
// them.
var Settings = []string{"interval", "retention", "max-points", "app-consistent-hook", "app-consistent-every"}

// reset returns o without the settings names: the configuration's apply
// again. Resetting the hook resets its period too.
func (o Overrides) reset(names []string) (Overrides, error) {
	for _, name := range names {
		switch name {
		case "interval":
			o.Interval = 0
		case "retention":
			o.Retention = 0
		case "max-points":
			o.MaxPoints = 0
		case "app-consistent-hook":
			o.AppHook, o.AppEvery = "", 0
		case "app-consistent-every":
			o.AppEvery = 0
		case "all":
			o = Overrides{}
		default:
			return o, fmt.Errorf("--reset %s: no such setting (settings: %s, or all)", name, strings.Join(Settings, ", "))
		}
	}
	return o, nil
}

// conflicts returns the first of names that o also gives, "" if none.
func (o Overrides) conflicts(names []string) string {
	for _, name := range names {
		if r, _ := o.reset([]string{name}); r != o {
			return name
		}
	}
	return ""
}

// merge returns o with the settings that next gives replaced.
func (o Overrides) merge(next Overrides) Overrides {
	if next.Interval > 0 {
		o.Interval = next.Interval
	}
	if next.Retention > 0 {
		o.Retention = next.Retention
	}
	if next.MaxPoints > 0 {
		o.MaxPoints = next.MaxPoints
	}
	if next.AppHook != "" {
		o.AppHook = next.AppHook
	}
	if next.AppEvery > 0 {
		o.AppEvery = next.AppEvery
	}
	if o.AppHook != "" && o.AppEvery <= 0 {
		o.AppEvery = time.Hour
	}
	return o
}

// changeSettings changes the settings of p, a VM protected already, to
// those req gives over its current ones: its policy (interval, retention,
// max-points) and its application-consistency hook; those req.Reset names
// go back to the agent's configuration. Its lifecycle state,
// change log, jobs and points are kept; the new interval paces the rounds
// from the next one (which runs now), the new retention and max-points
// expire points from the next round's ship on. The state file keeps them.
// A new target is refused: the VM is unprotected and protected again for
// that. It returns what changed, for people.
func (a *agent) changeSettings(p *protection, req ProtectRequest) (string, error) {
	vm := p.name
	if !req.Policy.given() && len(req.Reset) == 0 {
		return "", fmt.Errorf("%s is protected already (%s, target %s): give --interval, --retention, --max-points or --app-consistent-hook/--app-consistent-every to change its settings, --reset SETTING to give one back to the agent's configuration, or drfs unprotect %s first",
			vm, p.state(), p.target, vm)
	}
	if name := req.Policy.conflicts(req.Reset); name != "" {
		return "", fmt.Errorf("--reset %s and --%s: give a setting or reset it, not both", name, name)
	}
	p.mu.Lock()
	old, oldPol := p.mu.over, p.mu.vm.Policy()
	p.mu.Unlock()
	next, err := old.reset(req.Reset)
	if err != nil {
		return "", err
	}
	next = next.merge(req.Policy)
	if next.AppHook == "" && req.Policy.AppEvery > 0 {
		return "", errors.New("--app-consistent-every needs an application-consistency hook: give --app-consistent-hook CMD too")
	}
	pol := a.policy(vm, next)
	if err := pol.Validate(); err != nil {
		return "", err
	}
	changed, same := oldPol.Changes(pol)
	if next.AppHook != old.AppHook {
		changed = append(changed, fmt.Sprintf("app-consistent-hook %s → %q", quotedOrNone(old.AppHook), next.AppHook))
	}
	if next.AppEvery != old.AppEvery {
		changed = append(changed, fmt.Sprintf("app-consistent-every %s → %s", durationOrNone(old.AppEvery), units.FormatDuration(next.AppEvery)))
	}
	if len(changed) == 0 {
		return fmt.Sprintf("%s: settings unchanged (%s)", vm, strings.Join(same, ", ")), nil
	}
	p.mu.Lock()
	p.mu.over = next
	p.mu.vm.SetPolicy(pol)
	p.mu.Unlock()
	if err := a.save(); err != nil {
		// Not saved, not changed: a restart would bring the old ones back.
		p.mu.Lock()
		p.mu.over = old
		p.mu.vm.SetPolicy(oldPol)
		p.mu.Unlock()
		return "", fmt.Errorf("cannot change the settings of %s: %w; they stay as they were", vm, err)
	}
	if r := p.replication(); r != nil {
		r.setKeep(pol.Retention, pol.MaxPoints)
	}
	p.poke() // the next round, at once, starts the new interval
	msg := vm + ": " + strings.Join(changed, "; ")
	if len(same) > 0 {
		msg += "; unchanged: " + strings.Join(same, ", ")
	}
	slog.Info(msg)
	return msg, nil
}

// retarget moves the protection of p to the target req names, in place
// of drfs unprotect and drfs protect: the new target is checked first (it
// answers and lets this host in), so that a mistake leaves the VM
// protected as it was; then the VM is protected anew there, with its
// settings and those req changes. Its change log is dropped (the initial
// copy from a snapshot, or the comparison with a replica the new target
// holds from before, supersedes it); the points on the old target stay.
// A VM failed over, or replicating back, is refused. It returns the new
// enable-protection job and what changed, for people.
func (a *agent) retarget(p *protection, req ProtectRequest) (orchestrator.Job, string, error) {
	vm, from := p.name, p.target
	switch st := p.state(); st {
	case orchestrator.InitialReplication, orchestrator.Finalizing, orchestrator.Protected, orchestrator.Resynchronizing:
	default:
		return orchestrator.Job{}, "", fmt.Errorf("cannot move %s to another target while it is %s", vm, st)
	}
	if name := req.Policy.conflicts(req.Reset); name != "" {
		return orchestrator.Job{}, "", fmt.Errorf("--reset %s and --%s: give a setting or reset it, not both", name, name)
	}
	over, err := p.overrides().reset(req.Reset)
	if err != nil {
		return orchestrator.Job{}, "", err
	}
	over = over.merge(req.Policy)
	if err := a.policy(vm, over).Validate(); err != nil {
		return orchestrator.Job{}, "", err
	}
	store, err := a.stores.get(req.Target)
	if err != nil {
		return orchestrator.Job{}, "", fmt.Errorf("%v; %s still replicates to %s", err, vm, from)
	}
	ctx, cancel := context.WithTimeout(a.ctx, 20*time.Second)
	defer cancel()
	if _, err := store.VMs(ctx); err != nil {
		return orchestrator.Job{}, "", fmt.Errorf("target %s does not answer or refuses this host: %w; %s still replicates to %s", req.Target, err, vm, from)
	}
	res, err := a.unprotect(vm)
	if err != nil {
		return orchestrator.Job{}, "", err
	}
	job, err := a.protect(ProtectRequest{VM: vm, Target: req.Target, Policy: over})
	if err != nil {
		// Back to the old target, which compares its replica with the
		// disks rather than copying them again.
		if _, berr := a.protect(ProtectRequest{VM: vm, Target: from, Policy: p.overrides()}); berr != nil {
			return job, "", fmt.Errorf("%w; protecting it again to %s failed too: %v: run drfs protect %s", err, from, berr, vm)
		}
		return job, "", fmt.Errorf("%w; %s is protected to %s again, its replica there compared with the disks", err, vm, from)
	}
	msg := fmt.Sprintf("%s: target %s → %s: %s; the recovery points on %s stay (%s), its change log was dropped (%d generation(s), %s)",
		vm, from, req.Target, job.Message, from, pointsKept(res.PointsKept), res.GenerationsDropped, units.Bytes(res.BytesDropped))
	slog.Info(msg)
	return job, msg, nil
}

// pointsKept says how many points unprotect left on the target (-1: the
// target did not say).
func pointsKept(n int) string {
	if n < 0 {
		return "the target did not say how many"
	}
	return fmt.Sprintf("%d point(s)", n)
}

func quotedOrNone(s string) string {
	if s == "" {
		return "none"
	}
	return fmt.Sprintf("%q", s)
}

func durationOrNone(d time.Duration) string {
	if d <= 0 {
		return "none"
	}
	return units.FormatDuration(d)
}
