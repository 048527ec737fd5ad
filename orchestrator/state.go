package orchestrator

import (
	"errors"
	"fmt"
	"strings"
)

// State is where a VM is in its protection lifecycle (see the package
// documentation for the diagram).
type State string

// The states of a VM.
const (
	// Unprotected: not replicated. Where a VM starts, and where Unprotect
	// leaves it.
	Unprotected State = "Unprotected"
	// Enabling: the prerequisites are being checked (the disks exist inside
	// the tracked mount, the target is reachable and has space).
	Enabling State = "Enabling"
	// InitialReplication: a snapshot is taken and the disks are copied whole
	// from it, one by one; writes go on and are logged.
	InitialReplication State = "InitialReplication"
	// Finalizing: the snapshot is deleted and the generations logged during
	// the copy are shipped and merged.
	Finalizing State = "Finalizing"
	// Protected: delta replication every interval.
	Protected State = "Protected"
	// Resynchronizing: tracking was lost (or a reprotect needs the two sides
	// compared): chunk checksums of source and replica are compared and the
	// differing chunks sent, inside the resync window unless asked for now.
	// It returns to the replicating state it came from.
	Resynchronizing State = "Resynchronizing"
	// FailedOver: the VM runs from its replica at a recovery point; the
	// failover can still be cancelled.
	FailedOver State = "FailedOver"
	// Committed: the failover is final; the other recovery points are gone.
	Committed State = "Committed"
	// ReverseReplicating: the recovery site replicates back to the original
	// one.
	ReverseReplicating State = "ReverseReplicating"
	// FailedBack: the VM runs at the original site again; Reprotect resumes
	// forward replication.
	FailedBack State = "FailedBack"
)

// States lists every state, in lifecycle order.
var States = []State{Unprotected, Enabling, InitialReplication, Finalizing, Protected, Resynchronizing,
	FailedOver, Committed, ReverseReplicating, FailedBack}

// Valid reports whether s is one of States.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// Replicating reports whether replication rounds run in s, so that they can
// fail and be retried, and the VM has a health of its own.
func (s State) Replicating() bool {
	switch s {
	case Enabling, InitialReplication, Finalizing, Protected, Resynchronizing, ReverseReplicating:
		return true
	}
	return false
}

// FailoverType is the kind of a failover.
type FailoverType string

// The kinds of failover.
const (
	// Planned: the source is quiesced and its last generation shipped
	// first: no data is lost. Only from Protected.
	Planned FailoverType = "planned"
	// Unplanned: the source is gone; the replica starts at the latest or a
	// chosen recovery point.
	Unplanned FailoverType = "unplanned"
	// Test: an isolated copy at a recovery point; replication goes on and
	// the state does not change until the user cleans the copy up.
	Test FailoverType = "test"
)

// ParseFailoverType parses "planned", "unplanned" or "test".
func ParseFailoverType(s string) (FailoverType, error) {
	switch t := FailoverType(s); t {
	case Planned, Unplanned, Test:
		return t, nil
	}
	return "", fmt.Errorf("unknown failover type %q: use planned, unplanned or test", s)
}

// Event is something that moves a VM along its lifecycle: one of Protect,
// Enabled, InitialCopyDone, Finalized, ResyncRequired, ResyncDone, Failover,
// CleanupTestFailover, CancelFailover, Commit, Reprotect, Failback or
// Unprotect. VM.Apply takes it.
type Event interface {
	fmt.Stringer
	// verb is what the event does to vm, for error messages:
	// "cannot <verb>: ...".
	verb(vm string) string
}

type (
	// Protect starts protecting an unprotected VM: the enable-protection
	// job checks the prerequisites.
	Protect struct{}
	// Enabled: the prerequisites are met; the initial replication starts.
	Enabled struct{}
	// InitialCopyDone: every disk was copied from the snapshot.
	InitialCopyDone struct{}
	// Finalized: the snapshot is gone and the logged generations are
	// merged; the VM is protected (or resynchronizes first, if tracking was
	// lost meanwhile).
	Finalized struct{}
	// ResyncRequired: tracking was lost (a failed log write, a dirty
	// shutdown, a disk changed outside the mount, a log over the threshold)
	// or the user asked for a resynchronization. Now bypasses the resync
	// window (drfs resync --now).
	ResyncRequired struct {
		Reason string
		Now    bool
	}
	// ResyncDone: every chunk was compared and the differing ones sent.
	ResyncDone struct{}
	// Failover fails the VM over to its replica. Point names the recovery
	// point; empty means the latest.
	Failover struct {
		Type  FailoverType
		Point string
	}
	// CleanupTestFailover removes the copy a test failover made.
	CleanupTestFailover struct{}
	// CancelFailover undoes an uncommitted failover: the replica's run is
	// discarded and replication goes on as before it.
	CancelFailover struct{}
	// Commit makes a failover final.
	Commit struct{}
	// Reprotect starts replicating again after a commit (back to the
	// original site) or after a failback (forward again), each time from a
	// resynchronization that runs at once.
	Reprotect struct{}
	// Failback returns a reverse-replicating VM to its original site, as a
	// planned failover: no data is lost.
	Failback struct{}
	// Unprotect stops protecting the VM, from any state.
	Unprotect struct{}
)

func (Protect) String() string         { return "Protect" }
func (Enabled) String() string         { return "Enabled" }
func (InitialCopyDone) String() string { return "InitialCopyDone" }
func (Finalized) String() string       { return "Finalized" }
func (e ResyncRequired) String() string {
	s := "ResyncRequired(" + e.Reason
	if e.Now {
		s += ", now"
	}
	return s + ")"
}
func (ResyncDone) String() string { return "ResyncDone" }
func (e Failover) String() string {
	if e.Point != "" {
		return fmt.Sprintf("Failover(%s, point %s)", e.Type, e.Point)
	}
	return fmt.Sprintf("Failover(%s)", e.Type)
}
func (CleanupTestFailover) String() string { return "CleanupTestFailover" }
func (CancelFailover) String() string      { return "CancelFailover" }
func (Commit) String() string              { return "Commit" }
func (Reprotect) String() string           { return "Reprotect" }
func (Failback) String() string            { return "Failback" }
func (Unprotect) String() string           { return "Unprotect" }

func (Protect) verb(vm string) string         { return "protect " + vm }
func (Enabled) verb(vm string) string         { return "start the initial replication of " + vm }
func (InitialCopyDone) verb(vm string) string { return "finish the initial copy of " + vm }
func (Finalized) verb(vm string) string       { return "finalize " + vm }
func (ResyncRequired) verb(vm string) string  { return "resynchronize " + vm }
func (ResyncDone) verb(vm string) string      { return "finish resynchronizing " + vm }
func (e Failover) verb(vm string) string {
	switch e.Type {
	case Planned:
		return "fail over " + vm
	case Test:
		return "start a test failover of " + vm
	}
	return fmt.Sprintf("fail over %s (%s)", vm, e.Type)
}
func (CleanupTestFailover) verb(vm string) string { return "clean up the test failover of " + vm }
func (CancelFailover) verb(vm string) string      { return "cancel the failover of " + vm }
func (Commit) verb(vm string) string              { return "commit the failover of " + vm }
func (Reprotect) verb(vm string) string           { return "reprotect " + vm }
func (Failback) verb(vm string) string            { return "fail back " + vm }
func (Unprotect) verb(vm string) string           { return "unprotect " + vm }

// ErrInvalidTransition is matched (errors.Is) by every *TransitionError.
var ErrInvalidTransition = errors.New("invalid transition")

// TransitionError is the error of an event that the VM's state does not
// allow. The VM is left unchanged.
type TransitionError struct {
	VM    string
	Event Event
	// State is the VM's state, described ("Resynchronizing (reverse)").
	State string
	// Allowed are the states the event is valid in; Why replaces the
	// "it is X, not Y" part when the state alone does not explain it.
	Allowed []State
	Why     string
}

func (e *TransitionError) Error() string {
	if e.Why != "" {
		return fmt.Sprintf("cannot %s: %s", e.Event.verb(e.VM), e.Why)
	}
	names := make([]string, len(e.Allowed))
	for i, s := range e.Allowed {
		names[i] = string(s)
	}
	return fmt.Sprintf("cannot %s: it is %s, not %s", e.Event.verb(e.VM), e.State, orList(names))
}

// Is reports whether target is ErrInvalidTransition.
func (e *TransitionError) Is(target error) bool { return target == ErrInvalidTransition }

// orList joins "a", "a or b", "a, b or c".
func orList(s []string) string {
	if len(s) <= 1 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}
