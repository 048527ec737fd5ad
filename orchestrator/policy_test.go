package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
)

func TestRetryDelay(t *testing.T) {
	want := []time.Duration{0, 1, 2, 4, 8, 10, 30, 30, 30}
	for n, w := range want {
		if got := RetryDelay(n); got != w*time.Minute {
			t.Errorf("RetryDelay(%d) = %v, want %v", n, got, w*time.Minute)
		}
	}
	if got := RetryDelay(math.MaxInt); got != 30*time.Minute {
		t.Errorf("RetryDelay(MaxInt) = %v", got)
	}
}

func TestLogOverThreshold(t *testing.T) {
	p := DefaultPolicy()
	// A small disk, or a young image, is taken as 1 GiB.
	for _, c := range []struct {
		log, size int64
		want      bool
	}{
		{0, 0, false},
		{1, 0, false},
		{200 << 20, 0, false},
		{200 << 20, 256 << 10, false}, // a new qcow2 of 256 KiB
		{511 << 20, 512 << 20, false},
		{512 << 20, 512 << 20, true},
		{(1 << 30) - 1, 2 << 30, false},
		{1 << 30, 2 << 30, true},
	} {
		if got := p.LogOverThreshold(c.log, c.size); got != c.want {
			t.Errorf("LogOverThreshold(%d, %d) = %v, want %v", c.log, c.size, got, c.want)
		}
	}
	p.ResyncMinLog = 1
	for _, c := range []struct {
		log, size int64
		want      bool
	}{
		{0, 10, false},
		{4, 10, false},
		{5, 10, true},
		{10, 10, true},
		{11, 10, true},
		{math.MaxInt64/2 - 1, math.MaxInt64, false}, // no overflow
		{math.MaxInt64/2 + 1, math.MaxInt64, true},
		{math.MaxInt64, math.MaxInt64, true},
	} {
		if got := p.LogOverThreshold(c.log, c.size); got != c.want {
			t.Errorf("LogOverThreshold(%d, %d) = %v, want %v", c.log, c.size, got, c.want)
		}
	}
	p.ResyncThreshold = 100
	if p.LogOverThreshold(99, 100) || !p.LogOverThreshold(100, 100) {
		t.Error("threshold 100% is wrong")
	}
}

func TestZeroWindowIsDefault(t *testing.T) {
	var zero Window
	def := DefaultWindow()
	if zero.String() != DefaultWindowSpec {
		t.Fatalf("zero window is %q", zero.String())
	}
	loc := time.FixedZone("X", 3*3600)
	for h := range 24 * 7 {
		at := time.Date(2026, 11, 23, h, 30, 0, 0, loc) // Monday on
		if zero.In(loc).InWindow(at) != def.In(loc).InWindow(at) {
			t.Fatalf("zero and default windows differ at %v", at)
		}
	}
	var p Policy // a zero policy resynchronizes in the default window
	if !p.ResyncWindow.InWindow(time.Date(2026, 11, 28, 12, 0, 0, 0, time.Local)) {
		t.Fatal("the zero policy's window is closed on a Saturday")
	}
	b, _ := zero.MarshalText()
	w := Window{}.In(loc)
	if err := w.UnmarshalText([]byte("never")); err != nil || w.Location() != loc || string(b) != DefaultWindowSpec {
		t.Fatalf("text round trip: %v %v %q", err, w.Location(), b)
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 1500 * time.Millisecond: "1.5s", 90 * time.Second: "1m30s", 5 * time.Minute: "5m",
		90 * time.Minute: "1h30m", 24 * time.Hour: "24h", 36 * time.Hour: "36h", 48 * time.Hour: "2d",
		30 * 24 * time.Hour: "30d", 49 * time.Hour: "49h", -5 * time.Minute: "-5m0s",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err       error
		kind      string
		permanent bool
	}{
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("no route")}, "network", false},
		{fmt.Errorf("ship: %w", context.DeadlineExceeded), "network", false},
		{fmt.Errorf("x: %w", target.ErrWrongSource), "wrong source", true},
		{fmt.Errorf("x: %w", target.ErrBadName), "invalid name", true},
		{fmt.Errorf("x: %w", ErrInvalidReplica), "invalid replica state", true},
		{fmt.Errorf("x: %w", ErrNetwork), "network", false},
		{permanentErr{}, "permanent error", true},
		{errors.New("odd"), "error", false},
	} {
		kind, perm := Classify(c.err)
		if kind != c.kind || perm != c.permanent {
			t.Errorf("Classify(%v) = %q, %v; want %q, %v", c.err, kind, perm, c.kind, c.permanent)
		}
	}
	// The classified errors are permanent for the target's test too.
	if !target.IsPermanent(ErrBrokenChain) || target.IsPermanent(ErrLowMemory) {
		t.Error("target.IsPermanent disagrees with the classification")
	}
}

type permanentErr struct{}

func (permanentErr) Error() string   { return "refused for good" }
func (permanentErr) Permanent() bool { return true }

func TestTransitionErrorFields(t *testing.T) {
	v := NewVM("vm1", DefaultPolicy())
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	v.Apply(now, Protect{})
	v.Apply(now, Enabled{})
	err := v.Apply(now, Failover{Type: Planned})
	var te *TransitionError
	if !errors.As(err, &te) || te.VM != "vm1" || te.State != "InitialReplication" || len(te.Allowed) != 1 || te.Allowed[0] != Protected {
		t.Fatalf("%#v", err)
	}
	if err.Error() != "cannot fail over vm1: it is InitialReplication, not Protected" {
		t.Fatalf("message %q", err)
	}
	if err := v.Failed(now, nil); err == nil {
		t.Fatal("Failed(nil) accepted")
	}
}

func TestPolicyChanges(t *testing.T) {
	p := Policy{Interval: 30 * time.Second, Retention: 24 * time.Hour}
	changed, same := p.Changes(Policy{Interval: time.Minute, Retention: 24 * time.Hour, MaxPoints: 10})
	if want := []string{"interval 30s → 1m", "max-points no limit → 10"}; !slices.Equal(changed, want) {
		t.Errorf("changed %q, want %q", changed, want)
	}
	if want := []string{"retention 24h"}; !slices.Equal(same, want) {
		t.Errorf("same %q, want %q", same, want)
	}
	if changed, _ := p.Changes(p); len(changed) != 0 {
		t.Errorf("a policy changed from itself: %q", changed)
	}
}
