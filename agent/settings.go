package agent

import (
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
	if req.Target != "" && req.Target != p.target {
		return "", fmt.Errorf("%s replicates to %s: its target cannot be changed in place; run drfs unprotect %s, then drfs protect %s --target %s "+
			"(the new target gets an initial copy from a snapshot; the recovery points on %s are kept)", vm, p.target, vm, vm, req.Target, p.target)
	}
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
