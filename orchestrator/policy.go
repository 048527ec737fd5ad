package orchestrator

import (
	"fmt"
	"math/bits"
	"time"

	"github.com/drfs-project/drfs/internal/units"
)

// Policy is how one VM is replicated. The agent's configuration gives every
// VM the defaults, overridden per VM.
type Policy struct {
	// Interval: how often the VM is rotated and shipped.
	Interval time.Duration
	// Retention: how long recovery points are kept (the newest always is),
	// and MaxPoints, if not 0, how many at most.
	Retention time.Duration
	MaxPoints int
	// RPOWarning: the age of the newest recovery point beyond which health
	// turns Warning; 0 means twice Interval.
	RPOWarning time.Duration
	// ResyncWindow: when a resynchronization may run unless asked for now.
	ResyncWindow Window
	// ResyncThreshold: a disk whose change log reaches this percentage of
	// its size, counted as at least ResyncMinLog, has its log dropped and
	// is resynchronized from a snapshot instead (in the resync window), to
	// bound the space the log takes in the state directory; 0 means
	// DefaultResyncThreshold.
	ResyncThreshold int
	// ResyncMinLog is the smallest disk size the threshold is taken of, so
	// that it never fires on a small disk or on a young image (a qcow2
	// file that is still growing) whose log is large only next to its
	// file; 0 means DefaultResyncMinLog.
	ResyncMinLog int64
}

// Defaults and limits of a Policy.
const (
	DefaultInterval        = 5 * time.Minute
	DefaultRetention       = 24 * time.Hour
	DefaultResyncThreshold = 50 // percent
	DefaultResyncMinLog    = 1 << 30

	MinInterval  = time.Second // 30s, 5m and 15m are the usual choices; tests use seconds
	MaxInterval  = 24 * time.Hour
	MaxRetention = 30 * 24 * time.Hour // retention runs from Interval to this
	MaxRPO       = 7 * 24 * time.Hour  // RPOWarning runs from Interval to this
	MaxMaxPoints = 100000
)

// DefaultPolicy returns the policy of a VM nothing overrides: every 5
// minutes, points kept a day, the default resync window and threshold.
func DefaultPolicy() Policy {
	return Policy{Interval: DefaultInterval, Retention: DefaultRetention, ResyncWindow: DefaultWindow(),
		ResyncThreshold: DefaultResyncThreshold}
}

// RPOLimit returns the age of the newest recovery point beyond which
// health turns Warning.
func (p Policy) RPOLimit() time.Duration {
	if p.RPOWarning > 0 {
		return p.RPOWarning
	}
	return 2 * p.Interval
}

// Threshold returns ResyncThreshold, or its default.
func (p Policy) Threshold() int {
	if p.ResyncThreshold > 0 {
		return p.ResyncThreshold
	}
	return DefaultResyncThreshold
}

// ThresholdBase returns the size the resync threshold of a disk of
// diskSize bytes is a share of: the disk's size, at least ResyncMinLog.
func (p Policy) ThresholdBase(diskSize int64) int64 {
	if p.ResyncMinLog > 0 {
		return max(diskSize, p.ResyncMinLog)
	}
	return max(diskSize, DefaultResyncMinLog)
}

// LogOverThreshold reports whether a change log of logBytes for a disk of
// diskSize bytes has reached the resync threshold: the threshold's share
// of the disk's size, a size under ResyncMinLog counted as ResyncMinLog.
// An empty log never has.
func (p Policy) LogOverThreshold(logBytes, diskSize int64) bool {
	if logBytes <= 0 {
		return false
	}
	diskSize = p.ThresholdBase(diskSize)
	// logBytes*100 >= diskSize*threshold, without overflow.
	lh, ll := bits.Mul64(uint64(logBytes), 100)
	dh, dl := bits.Mul64(uint64(diskSize), uint64(p.Threshold()))
	return lh > dh || lh == dh && ll >= dl
}

// Validate checks every value against its range and against Interval.
func (p Policy) Validate() error {
	for _, err := range p.check() {
		if err != nil {
			return err
		}
	}
	return nil
}

// check returns the error of each setting, nil where it is fine, in the
// order interval, retention, max-points, rpo-warning, resync-threshold:
// the configuration reports each one at its own line.
func (p Policy) check() [5]error {
	var errs [5]error
	if p.Interval < MinInterval || p.Interval > MaxInterval {
		errs[0] = fmt.Errorf("interval %s is out of range (%s..%s)", fmtDuration(p.Interval), fmtDuration(MinInterval), fmtDuration(MaxInterval))
	}
	if p.Retention < p.Interval || p.Retention > MaxRetention {
		errs[1] = fmt.Errorf("retention %s is out of range (interval %s..%s)", fmtDuration(p.Retention), fmtDuration(p.Interval), fmtDuration(MaxRetention))
	}
	if p.MaxPoints < 0 || p.MaxPoints > MaxMaxPoints {
		errs[2] = fmt.Errorf("max-points %d is out of range (0..%d, 0 for no limit)", p.MaxPoints, MaxMaxPoints)
	}
	if p.RPOWarning != 0 && (p.RPOWarning < p.Interval || p.RPOWarning > MaxRPO) {
		errs[3] = fmt.Errorf("rpo-warning %s is out of range (interval %s..%s)", fmtDuration(p.RPOWarning), fmtDuration(p.Interval), fmtDuration(MaxRPO))
	}
	if p.ResyncThreshold < 0 || p.ResyncThreshold > 100 {
		errs[4] = fmt.Errorf("resync-threshold %d%% is out of range (1%%..100%%)", p.ResyncThreshold)
	}
	return errs
}

// The back-off of recoverable failures: the waits before the first retries,
// then retryEvery.
var retryDelays = [...]time.Duration{1 * time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute}

const retryEvery = 30 * time.Minute

// RetryDelay returns how long after its failures-th failure in a row
// (from 1) a VM is tried again: 1, 2, 4, 8 and 10 minutes, then every 30
// minutes. Until a round succeeds these retries replace the rounds of the
// VM's interval.
func RetryDelay(failures int) time.Duration {
	if failures < 1 {
		return 0
	}
	if failures <= len(retryDelays) {
		return retryDelays[failures-1]
	}
	return retryEvery
}

// fmtDuration writes d as the configuration reads it: 5m, 1h30m, 7d.
func fmtDuration(d time.Duration) string { return units.FormatDuration(d) }

// Changes compares policy next with p setting by setting (interval,
// retention, max-points), for people: changed holds "interval 30s → 1m"
// for each setting that differs, same "retention 24h" for each that does
// not.
func (p Policy) Changes(next Policy) (changed, same []string) {
	points := func(n int) string {
		if n == 0 {
			return "no limit"
		}
		return fmt.Sprint(n)
	}
	for _, s := range []struct{ name, was, now string }{
		{"interval", fmtDuration(p.Interval), fmtDuration(next.Interval)},
		{"retention", fmtDuration(p.Retention), fmtDuration(next.Retention)},
		{"max-points", points(p.MaxPoints), points(next.MaxPoints)},
	} {
		if s.was == s.now {
			same = append(same, s.name+" "+s.now)
		} else {
			changed = append(changed, fmt.Sprintf("%s %s → %s", s.name, s.was, s.now))
		}
	}
	return changed, same
}
