// Package clock is the time the rest of drfs reads and waits on: back-offs,
// intervals, resync windows and the age of recovery points all come from a
// Clock, so that tests run days of schedule without sleeping. System is the
// real one; Fake moves only when told.
package clock

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Clock tells the time and makes timers.
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

// System is the wall clock.
type System struct{}

// Now returns time.Now().
func (System) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer.
func (System) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

// Fake is a Clock for tests: its time moves only by Advance or Set,
// which fire the timers that fall due, in the order of their due times.
// It is safe for concurrent use.
type Fake struct {
	mu struct {
		sync.Mutex
		now    time.Time
		timers []*fakeTimer // pending, in no particular order
		auto   bool
		waits  []time.Duration // of the timers made in auto mode
	}
}

type fakeTimer struct {
	c  *Fake
	at time.Time
	ch chan time.Time // buffered: firing never blocks the clock
}

// NewFake returns a clock stopped at start.
func NewFake(start time.Time) *Fake {
	c := &Fake{}
	c.mu.now = start
	return c
}

// Now returns the clock's time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.now
}

// NewTimer returns a timer due d from now; one with d <= 0 has fired
// already (in auto mode, every one has, the clock moved on by d).
func (c *Fake) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.auto {
		c.mu.waits = append(c.mu.waits, d)
		c.mu.now = c.mu.now.Add(max(d, 0))
		d = 0
	}
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
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(c.mu.now.Add(max(d, 0)))
}

// Set moves the clock to t and fires the timers that fall due. Setting it
// back (a wall clock corrected backwards) fires nothing.
func (c *Fake) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLocked(t)
}

func (c *Fake) setLocked(t time.Time) {
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

// SetAuto turns auto mode on or off. In auto mode every new timer fires at
// once, the clock jumping to its due time, and its duration is recorded
// (Waits): code that waits through back-offs runs without a goroutine to
// move the clock.
func (c *Fake) SetAuto(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.auto = on
}

// Waits returns the durations of the timers made in auto mode, in order.
func (c *Fake) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.mu.waits)
}

// WaitTimers waits (in real time, at most timeout) until at least n timers
// are waiting to fire: a test's way to know that the code under test is
// waiting on the clock before it moves it.
func (c *Fake) WaitTimers(n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for k := c.Timers(); k < n; k = c.Timers() {
		if time.Now().After(deadline) {
			return fmt.Errorf("clock: waited %v for %d pending timers, have %d", timeout, n, k)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// Timers returns the number of timers waiting to fire.
func (c *Fake) Timers() int {
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
