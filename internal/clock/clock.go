package orchestrator

import (
	"slices"
	"sync"
	"time"
)

// Clock is the time the orchestrator reads and waits on: back-offs,
// intervals, the resync window and the age of recovery points all come from
// it, so tests run days of schedule without sleeping. SystemClock is the
// real one; FakeClock moves only when told.
//
// It has the method set of shipper.Clock; the two Timer types are distinct
// named types, so an adapter of a few lines joins them where the agent hands
// one clock to both.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that delivers the time on its channel once
	// d has passed.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer made by a Clock.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
}

// After returns a channel that receives the time of c once d has passed.
func After(c Clock, d time.Duration) <-chan time.Time { return c.NewTimer(d).C() }

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

// FakeClock is a Clock for tests: its time moves only by Advance or Set,
// which fire the timers that fall due, in the order of their due times.
// It is safe for concurrent use.
type FakeClock struct {
	mu struct {
		sync.Mutex
		now    time.Time
		timers []*fakeTimer // pending, in no particular order
	}
}

type fakeTimer struct {
	c  *FakeClock
	at time.Time
	ch chan time.Time // buffered: firing never blocks the clock
}

// NewFakeClock returns a clock stopped at start.
func NewFakeClock(start time.Time) *FakeClock {
	c := &FakeClock{}
	c.mu.now = start
	return c
}

// Now returns the clock's time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.now
}

// NewTimer returns a timer due d from now; one with d <= 0 has fired
// already.
func (c *FakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.mu.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.mu.now
		return t
	}
	c.mu.timers = append(c.mu.timers, t)
	return t
}

// Advance moves the clock on by d (d < 0 is treated as 0) and fires the
// timers that fall due.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.mu.now.Add(max(d, 0)))
}

// Set moves the clock to t and fires the timers that fall due. Setting it
// back (a wall clock corrected backwards) fires nothing.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(t)
}

func (c *FakeClock) setLocked(t time.Time) {
	c.mu.now = t
	var due []*fakeTimer
	c.mu.timers = slices.DeleteFunc(c.mu.timers, func(ft *fakeTimer) bool {
		if ft.at.After(t) {
			return false
		}
		due = append(due, ft)
		return true
	})
	slices.SortStableFunc(due, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	for _, ft := range due {
		ft.ch <- t
	}
}

// Timers returns the number of timers waiting to fire.
func (c *FakeClock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.mu.timers)
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.mu.timers, t)
	if i < 0 {
		return false
	}
	t.c.mu.timers = slices.Delete(t.c.mu.timers, i, i+1)
	return true
}
