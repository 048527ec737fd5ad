package orchestrator

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"

	"github.com/drfs-project/drfs/target"
)

// Level is how well a VM's protection is going.
type Level string

// The levels of health.
const (
	// Normal: replication keeps up.
	Normal Level = "Normal"
	// Warning: replication fails with recoverable errors and is retried,
	// or the newest recovery point is older than the policy allows; it
	// repairs itself when the cause goes away.
	Warning Level = "Warning"
	// Critical: a non-recoverable error stopped replication; someone must
	// fix the cause and resume the VM.
	Critical Level = "Critical"
)

// Health is a level with the reason for it (empty when Normal).
type Health struct {
	Level  Level  `json:"level"`
	Reason string `json:"reason,omitempty"`
}

func (h Health) String() string {
	if h.Reason == "" {
		return string(h.Level)
	}
	return string(h.Level) + ": " + h.Reason
}

// Errors the orchestrator's callers classify with, as wrapped causes
// (fmt.Errorf("...: %w", ErrLowDisk)). The permanent ones report true from
// target.IsPermanent and IsPermanent; the others are recoverable, as every
// unclassified error is.
var (
	ErrBrokenChain    error = &classError{"broken disk chain", true}
	ErrInvalidReplica error = &classError{"invalid replica state", true}
	ErrNetwork        error = &classError{"network", false}
	ErrLowDisk        error = &classError{"low disk space", false}
	ErrLowMemory      error = &classError{"low memory", false}
)

type classError struct {
	kind      string
	permanent bool
}

func (e *classError) Error() string   { return e.kind }
func (e *classError) Permanent() bool { return e.permanent }

// IsPermanent reports whether retrying err unchanged cannot succeed: the
// target's permanent kinds (target.IsPermanent: not found, corrupt, wrong
// source, bad name, out of order, not authorised) and ErrBrokenChain and
// ErrInvalidReplica. Such an error stops the VM with health Critical.
func IsPermanent(err error) bool { return target.IsPermanent(err) }

// Classify returns the kind of err as health reports it ("network",
// "low disk space", "not authorised", ...) and whether it is permanent.
func Classify(err error) (kind string, permanent bool) {
	permanent = IsPermanent(err)
	var ce *classError
	var ne net.Error
	switch {
	case errors.As(err, &ce):
		kind = ce.kind
	case errors.Is(err, target.ErrAuth):
		kind = "not authorised"
	case errors.Is(err, target.ErrNotFound):
		kind = "not found"
	case errors.Is(err, target.ErrOutOfOrder):
		kind = "broken disk chain"
	case errors.Is(err, target.ErrCorrupt):
		kind = "corrupt data"
	case errors.Is(err, target.ErrWrongSource):
		kind = "wrong source"
	case errors.Is(err, target.ErrBadName):
		kind = "invalid name"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		kind = "low disk space"
	case errors.Is(err, syscall.ENOMEM):
		kind = "low memory"
	case errors.As(err, &ne), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EPIPE), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		kind = "network"
	case permanent:
		kind = "permanent error"
	default:
		kind = "error"
	}
	return kind, permanent
}
