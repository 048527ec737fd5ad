package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/drfs-project/drfs/internal/units"
)

// VM is the protection state of one VM: where it is in its lifecycle, how
// its replication is going, and the policy it follows. It is pure logic:
// the agent runs the jobs and the replication rounds and tells the VM what
// happened (Apply, Failed, Succeeded); the VM tells the agent what to do
// next (NextRetry, ResyncDue) and how it is going (Health).
//
// A VM is not safe for concurrent use; the agent serialises the calls on
// one VM. Every method takes the current time rather than reading a clock,
// so the same VM replays the same way.
type VM struct {
	policy Policy
	st     Status
}

// Status is everything a VM knows, as reported to the user and persisted
// (JSON) by the agent.
type Status struct {
	VM    string    `json:"vm"`
	State State     `json:"state"`
	Since time.Time `json:"since,omitzero"` // when the VM entered State

	// ResyncReason is why the VM resynchronizes: in Resynchronizing, or,
	// before Protected, a resynchronization that follows Finalized.
	// ResyncNow: it runs without waiting for the resync window. ResumeTo
	// is the state ResyncDone returns to (Protected or ReverseReplicating).
	ResyncReason string `json:"resync_reason,omitempty"`
	ResyncNow    bool   `json:"resync_now,omitempty"`
	ResumeTo     State  `json:"resume_to,omitempty"`

	// Failover and Point: the failover that led to FailedOver or
	// Committed, and its recovery point ("" for the latest). FailedFrom is
	// the state CancelFailover returns to.
	Failover   FailoverType `json:"failover,omitempty"`
	Point      string       `json:"point,omitempty"`
	FailedFrom State        `json:"failed_from,omitempty"`

	// TestFailover: a test failover's copy exists, at TestPoint.
	TestFailover bool   `json:"test_failover,omitempty"`
	TestPoint    string `json:"test_point,omitempty"`

	// Failures counts the replication attempts in a row that failed, since
	// FailingSince; LastFailure is when the last one failed, with
	// LastError of kind ErrorKind (see Classify). Stopped: the error was
	// permanent, nothing is retried until Resume or a success.
	Failures     int       `json:"failures,omitempty"`
	FailingSince time.Time `json:"failing_since,omitzero"`
	LastFailure  time.Time `json:"last_failure,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	ErrorKind    string    `json:"error_kind,omitempty"`
	Stopped      bool      `json:"stopped,omitempty"`

	// NewestPoint is when the newest recovery point on the target was cut;
	// zero before the first one (of the current direction).
	NewestPoint time.Time `json:"newest_point,omitzero"`

	// Computed by VM.Status for its time; not restored from JSON.
	Health    Health    `json:"health,omitzero"`
	NextRetry time.Time `json:"next_retry,omitzero"`
}

// NewVM returns the unprotected VM name following p.
func NewVM(name string, p Policy) *VM {
	return &VM{policy: p, st: Status{VM: name, State: Unprotected}}
}

// Name returns the VM's name.
func (v *VM) Name() string { return v.st.VM }

// State returns the VM's state.
func (v *VM) State() State { return v.st.State }

// Policy returns the VM's policy.
func (v *VM) Policy() Policy { return v.policy }

// SetPolicy replaces the VM's policy (the configuration was reloaded); its
// state is unchanged.
func (v *VM) SetPolicy(p Policy) { v.policy = p }

// Status returns the VM's status at now, with its health and next retry.
func (v *VM) Status(now time.Time) Status {
	s := v.st
	s.Health = v.Health(now)
	s.NextRetry, _ = v.NextRetry(now)
	return s
}

// Describe returns the state for people: "Resynchronizing (reverse)" for a
// resynchronization that leads to reverse replication.
func (v *VM) Describe() string {
	if v.st.State == Resynchronizing && v.st.ResumeTo == ReverseReplicating {
		return string(Resynchronizing) + " (reverse)"
	}
	return string(v.st.State)
}

// reverse reports whether the VM replicates from the recovery site back.
func (v *VM) reverse() bool {
	return v.st.State == ReverseReplicating || v.st.State == Resynchronizing && v.st.ResumeTo == ReverseReplicating
}

// Apply moves the VM along its lifecycle. An event its state does not
// allow returns a *TransitionError (errors.Is ErrInvalidTransition) naming
// the VM, the event and the state, and changes nothing.
func (v *VM) Apply(now time.Time, ev Event) error {
	st := &v.st
	switch e := ev.(type) {
	case Protect:
		if err := v.need(ev, Unprotected); err != nil {
			return err
		}
		v.reset()
		v.enter(now, Enabling)
	case Enabled:
		if err := v.need(ev, Enabling); err != nil {
			return err
		}
		v.enter(now, InitialReplication)
	case InitialCopyDone:
		if err := v.need(ev, InitialReplication); err != nil {
			return err
		}
		v.enter(now, Finalizing)
	case Finalized:
		if err := v.need(ev, Finalizing); err != nil {
			return err
		}
		if st.ResyncReason != "" {
			st.ResumeTo = Protected
			v.enter(now, Resynchronizing)
		} else {
			v.enter(now, Protected)
		}
	case ResyncRequired:
		if e.Reason == "" {
			e.Reason = "requested"
		}
		switch st.State {
		case Enabling, InitialReplication, Finalizing, Resynchronizing:
			// Once pending, the first reason stands; asking for now can
			// only hurry it.
			if st.ResyncReason == "" {
				st.ResyncReason = e.Reason
			}
			st.ResyncNow = st.ResyncNow || e.Now
		case Protected, ReverseReplicating:
			st.ResumeTo, st.ResyncReason, st.ResyncNow = st.State, e.Reason, e.Now
			v.enter(now, Resynchronizing)
		default:
			return &TransitionError{VM: st.VM, Event: ev, State: v.Describe(),
				Allowed: []State{Enabling, InitialReplication, Finalizing, Protected, Resynchronizing, ReverseReplicating},
				Why:     fmt.Sprintf("it is %s, where nothing is replicated", v.Describe())}
		}
	case ResyncDone:
		if err := v.need(ev, Resynchronizing); err != nil {
			return err
		}
		to := st.ResumeTo
		st.ResumeTo, st.ResyncReason, st.ResyncNow = "", "", false
		v.enter(now, to)
	case Failover:
		if _, err := ParseFailoverType(string(e.Type)); err != nil {
			return fmt.Errorf("cannot fail over %s: %w", st.VM, err)
		}
		allowed := []State{Protected}
		if e.Type != Planned {
			allowed = append(allowed, Resynchronizing)
		}
		if !slices.Contains(allowed, st.State) || v.reverse() {
			return &TransitionError{VM: st.VM, Event: ev, State: v.Describe(), Allowed: allowed}
		}
		if e.Type == Test {
			if st.TestFailover {
				return &TransitionError{VM: st.VM, Event: ev,
					Why: fmt.Sprintf("a test failover (at %s) exists already; clean it up first", pointName(st.TestPoint))}
			}
			st.TestFailover, st.TestPoint = true, e.Point
			return nil
		}
		st.Failover, st.Point, st.FailedFrom = e.Type, e.Point, st.State
		v.enter(now, FailedOver)
	case CleanupTestFailover:
		if !st.TestFailover {
			return &TransitionError{VM: st.VM, Event: ev, Why: "no test failover exists"}
		}
		st.TestFailover, st.TestPoint = false, ""
	case CancelFailover:
		if err := v.need(ev, FailedOver); err != nil {
			return err
		}
		to := st.FailedFrom
		st.Failover, st.Point, st.FailedFrom = "", "", ""
		v.enter(now, to)
	case Commit:
		if err := v.need(ev, FailedOver); err != nil {
			return err
		}
		// The old direction's pending resynchronization is moot now.
		st.FailedFrom, st.ResumeTo, st.ResyncReason, st.ResyncNow = "", "", "", false
		v.enter(now, Committed)
	case Reprotect:
		if err := v.need(ev, Committed, FailedBack); err != nil {
			return err
		}
		// Both sides ran apart (or may have): compare them at once, then
		// replicate from the site the VM runs at.
		if st.State == Committed {
			st.ResumeTo, st.ResyncReason = ReverseReplicating, "reprotect: the original site is brought up to the recovery site"
		} else {
			st.ResumeTo, st.ResyncReason = Protected, "reprotect: the recovery site is brought up to the original site"
		}
		st.ResyncNow = true
		st.Failover, st.Point, st.NewestPoint = "", "", time.Time{}
		v.enter(now, Resynchronizing)
	case Failback:
		if err := v.need(ev, ReverseReplicating); err != nil {
			return err
		}
		v.enter(now, FailedBack)
	case Unprotect:
		switch {
		case st.State == Unprotected:
			return &TransitionError{VM: st.VM, Event: ev, Why: "it is not protected"}
		case st.TestFailover:
			return &TransitionError{VM: st.VM, Event: ev,
				Why: fmt.Sprintf("a test failover (at %s) exists; clean it up first", pointName(st.TestPoint))}
		}
		v.reset()
		v.enter(now, Unprotected)
	default:
		return fmt.Errorf("orchestrator: unknown event %T", ev)
	}
	return nil
}

// need returns a *TransitionError unless the VM is in one of allowed.
func (v *VM) need(ev Event, allowed ...State) error {
	if slices.Contains(allowed, v.st.State) {
		return nil
	}
	return &TransitionError{VM: v.st.VM, Event: ev, State: v.Describe(), Allowed: allowed}
}

// enter moves the VM to s. Leaving replication behind forgets its
// failures: they were of rounds that no longer run.
func (v *VM) enter(now time.Time, s State) {
	v.st.State, v.st.Since = s, now
	if !s.Replicating() {
		v.clearFailures()
	}
}

// reset forgets everything but the name.
func (v *VM) reset() { v.st = Status{VM: v.st.VM, State: v.st.State, Since: v.st.Since} }

func (v *VM) clearFailures() {
	st := &v.st
	st.Failures, st.FailingSince, st.LastFailure, st.LastError, st.ErrorKind, st.Stopped = 0, time.Time{}, time.Time{}, "", "", false
}

func pointName(p string) string {
	if p == "" {
		return "the latest point"
	}
	return "point " + p
}

// Failed records a replication attempt (a round, or a step of a job) that
// failed at now with err. A permanent error (IsPermanent) stops the VM:
// health Critical, no retry until Resume or a success. A recoverable one
// schedules a retry (NextRetry) after the back-off of RetryDelay, with
// health Warning. It is an error to report a failure of a VM in a state
// where nothing replicates.
func (v *VM) Failed(now time.Time, err error) error {
	st := &v.st
	if err == nil {
		return fmt.Errorf("orchestrator: %s: Failed with a nil error", st.VM)
	}
	if !st.State.Replicating() {
		return fmt.Errorf("%s is %s: no replication runs that could fail", st.VM, st.State)
	}
	kind, permanent := Classify(err)
	if st.Failures == 0 {
		st.FailingSince = now
	}
	st.Failures++
	st.LastFailure = now
	if st.Stopped && !permanent {
		// The permanent error remains the cause until someone acts.
		return nil
	}
	st.LastError, st.ErrorKind, st.Stopped = err.Error(), kind, permanent
	return nil
}

// Succeeded records a replication attempt that succeeded at now: failures
// are forgotten (a stopped VM runs again) and, if point is not zero, it is
// when the new newest recovery point was cut.
func (v *VM) Succeeded(now, point time.Time) error {
	st := &v.st
	if !st.State.Replicating() {
		return fmt.Errorf("%s is %s: no replication runs that could succeed", st.VM, st.State)
	}
	v.clearFailures()
	if point.After(st.NewestPoint) {
		st.NewestPoint = point
	}
	return nil
}

// Resume lets a VM stopped by a permanent error run again, once its cause
// was dealt with: its failures are forgotten and the agent runs a round at
// once.
func (v *VM) Resume() error {
	if !v.st.Stopped {
		return fmt.Errorf("%s is not stopped: nothing to resume", v.st.VM)
	}
	v.clearFailures()
	return nil
}

// NextRetry returns when the next attempt of a VM that is failing with
// recoverable errors is due (now, if that time has passed), and false when
// no retry is pending: the VM is not failing (its rounds follow the
// interval), is stopped by a permanent error, or does not replicate.
func (v *VM) NextRetry(now time.Time) (time.Time, bool) {
	st := v.st
	if !st.State.Replicating() || st.Failures == 0 || st.Stopped {
		return time.Time{}, false
	}
	due := st.LastFailure.Add(RetryDelay(st.Failures))
	if due.Before(now) {
		due = now
	}
	return due, true
}

// Health returns how the VM's protection is going at now: Critical when a
// permanent error stopped it, or when no consistent point can be made (its
// tracking was lost and the resync window never opens); Warning while
// recoverable errors are retried, or when the newest consistent recovery
// point is older than the policy's RPO limit; otherwise Normal. A VM in a state where nothing replicates
// is Normal.
func (v *VM) Health(now time.Time) Health {
	st := v.st
	if !st.State.Replicating() {
		return Health{Level: Normal}
	}
	if st.Stopped {
		return Health{Level: Critical, Reason: st.cause() + "; not retried: fix the cause, then resume"}
	}
	if w := v.policy.ResyncWindow; st.State == Resynchronizing && !st.ResyncNow && !w.InWindow(now) && w.NextOpen(now).IsZero() {
		return Health{Level: Critical, Reason: fmt.Sprintf("no consistent point can be made: %s, and the resync window is never open (drfs resync STATEDIR %s --now runs the resync)",
			st.ResyncReason, st.VM)}
	}
	var reasons []string
	if st.Failures > 0 {
		next, _ := v.NextRetry(now)
		when := "due now"
		if d := next.Sub(now); d > 0 {
			when = "in " + fmtDuration(d.Round(time.Second))
		}
		if st.Failures == 1 {
			reasons = append(reasons, fmt.Sprintf("replication failed (%s); next retry %s", st.cause(), when))
		} else {
			reasons = append(reasons, fmt.Sprintf("%d failures in a row over %s (last: %s); next retry %s",
				st.Failures, fmtDuration(now.Sub(st.FailingSince).Round(time.Second)), st.cause(), when))
		}
	}
	if !st.NewestPoint.IsZero() {
		if age, limit := now.Sub(st.NewestPoint), v.policy.RPOLimit(); age > limit {
			reasons = append(reasons, fmt.Sprintf("newest recovery point is %s old, over the %s limit",
				fmtDuration(age.Round(time.Second)), fmtDuration(limit)))
		}
	}
	if len(reasons) == 0 {
		return Health{Level: Normal}
	}
	h := Health{Level: Warning, Reason: reasons[0]}
	for _, r := range reasons[1:] {
		h.Reason += "; " + r
	}
	return h
}

// ResyncDue reports whether the resynchronization of the VM may run at
// now, and why or why not: the VM is Resynchronizing, is not waiting for
// a retry or stopped, and either the resynchronization was asked for now
// (drfs resync --now, a reprotect) or now is inside the resync window. A
// resynchronization is resumable: the agent may pause one when the window
// closes and go on when it opens again.
func (v *VM) ResyncDue(now time.Time) (bool, string) {
	st := v.st
	switch {
	case st.State != Resynchronizing:
		return false, fmt.Sprintf("%s is %s, not Resynchronizing", st.VM, v.Describe())
	case st.Stopped:
		return false, "stopped by a permanent error"
	}
	if next, ok := v.NextRetry(now); ok && next.After(now) {
		return false, "retries in " + fmtDuration(next.Sub(now).Round(time.Second))
	}
	if st.ResyncNow {
		return true, "asked for now"
	}
	w := v.policy.ResyncWindow
	if w.InWindow(now) {
		return true, "inside the resync window " + w.String()
	}
	open := w.NextOpen(now)
	if open.IsZero() {
		return false, "the resync window is never open: ask for it now (drfs resync --now)"
	}
	return false, fmt.Sprintf("waits for the resync window %s, which opens in %s", w, fmtDuration(open.Sub(now).Round(time.Second)))
}

// CheckLog applies the resync trigger rule to one disk: a change log of
// logBytes that reached the policy's threshold of the disk's size (50% by
// default) marks the VM for resynchronization (ResyncRequired), as sending
// the log would cost more than comparing the disk. It reports whether this
// call marked it; a VM already marked is left as it is.
func (v *VM) CheckLog(now time.Time, disk string, logBytes, diskSize int64) (bool, error) {
	if !v.policy.LogOverThreshold(logBytes, diskSize) {
		return false, nil
	}
	if v.st.State == Resynchronizing || v.st.ResyncReason != "" && v.st.State.Replicating() {
		return false, nil
	}
	pct := int(float64(logBytes) * 100 / float64(diskSize))
	reason := fmt.Sprintf("the change log of %s holds %s, %d%% of its %s (threshold %d%%)",
		disk, fmtBytes(logBytes), pct, fmtBytes(diskSize), v.policy.Threshold())
	if err := v.Apply(now, ResyncRequired{Reason: reason}); err != nil {
		return false, err
	}
	return true, nil
}

// MarshalJSON writes the VM's Status without the computed fields; the
// policy is not part of it (it comes from the configuration).
func (v *VM) MarshalJSON() ([]byte, error) {
	s := v.st
	s.Health, s.NextRetry = Health{}, time.Time{}
	return json.Marshal(s)
}

// UnmarshalJSON restores a VM written by MarshalJSON, keeping its policy
// and, if it has one already, checking its name.
func (v *VM) UnmarshalJSON(data []byte) error {
	var s Status
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	s.Health, s.NextRetry = Health{}, time.Time{}
	if err := s.check(); err != nil {
		return err
	}
	if v.st.VM != "" && s.VM != v.st.VM {
		return fmt.Errorf("orchestrator: the record is of %s, not %s", s.VM, v.st.VM)
	}
	v.st = s
	return nil
}

// check validates a restored Status.
func (s Status) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("orchestrator: invalid record of vm %q: %s", s.VM, fmt.Sprintf(format, args...))
	}
	switch {
	case s.VM == "":
		return errors.New("orchestrator: invalid record: no vm name")
	case !s.State.Valid():
		return bad("unknown state %q", s.State)
	case s.State == Resynchronizing && s.ResumeTo != Protected && s.ResumeTo != ReverseReplicating:
		return bad("Resynchronizing returns to %q", s.ResumeTo)
	case s.State == FailedOver && s.FailedFrom != Protected && s.FailedFrom != Resynchronizing:
		return bad("FailedOver from %q", s.FailedFrom)
	case s.State == FailedOver && s.Failover != Planned && s.Failover != Unplanned:
		return bad("failover type %q", s.Failover)
	case s.Failures < 0:
		return bad("%d failures", s.Failures)
	}
	return nil
}

// cause is the last error, led by its kind unless it says it already.
func (s Status) cause() string {
	if strings.Contains(s.LastError, s.ErrorKind) {
		return s.LastError
	}
	return s.ErrorKind + ": " + s.LastError
}

// fmtBytes writes n in binary units: 512 B, 5.0 GiB.
func fmtBytes(n int64) string { return units.Bytes(n) }
