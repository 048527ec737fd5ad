package clock

import (
	"testing"
	"time"
)

var _ Clock = System{}
var _ Clock = (*Fake)(nil)

func TestFakeFiresInOrder(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewFake(start)
	late := c.NewTimer(3 * time.Minute)
	early := c.NewTimer(time.Minute)
	stopped := c.NewTimer(2 * time.Minute)
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer reported false")
	}
	if stopped.Stop() {
		t.Fatal("a second Stop reported true")
	}
	if n := c.Timers(); n != 2 {
		t.Fatalf("%d timers pending, want 2", n)
	}
	c.Advance(59 * time.Second)
	select {
	case <-early.C():
		t.Fatal("fired before it was due")
	default:
	}
	c.Advance(time.Second)
	if got := <-early.C(); !got.Equal(start.Add(time.Minute)) {
		t.Fatalf("fired with %v", got)
	}
	if early.Stop() {
		t.Fatal("Stop of a fired timer reported true")
	}
	c.Set(start.Add(time.Hour))
	<-late.C()
	select {
	case <-stopped.C():
		t.Fatal("a stopped timer fired")
	default:
	}
	if n := c.Timers(); n != 0 {
		t.Fatalf("%d timers pending, want 0", n)
	}
}

func TestFakeZeroAndBackwards(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewFake(start)
	<-c.NewTimer(0).C() // due at once
	<-After(c, -time.Second)
	tm := c.NewTimer(time.Minute)
	c.Set(start.Add(-time.Hour)) // a wall clock set back fires nothing
	c.Advance(-time.Hour)        // and Advance never goes back
	if !c.Now().Equal(start.Add(-time.Hour)) {
		t.Fatalf("now %v", c.Now())
	}
	select {
	case <-tm.C():
		t.Fatal("fired")
	default:
	}
	c.Advance(time.Hour + time.Minute)
	<-tm.C()
}

// A goroutine waiting on the fake clock wakes when the test moves it: no
// sleeping on either side.
func TestFakeWakesWaiter(t *testing.T) {
	c := NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	tm := c.NewTimer(30 * time.Minute)
	done := make(chan time.Time)
	go func() { done <- <-tm.C() }()
	for range 30 {
		c.Advance(time.Minute)
	}
	if got := <-done; !got.Equal(c.Now()) {
		t.Fatalf("woke at %v, clock at %v", got, c.Now())
	}
}

func TestFakeAuto(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewFake(start)
	c.SetAuto(true)
	<-c.NewTimer(time.Second).C()
	<-c.NewTimer(2 * time.Second).C()
	if !c.Now().Equal(start.Add(3 * time.Second)) {
		t.Fatalf("now %v, want 3s on", c.Now())
	}
	if w := c.Waits(); len(w) != 2 || w[0] != time.Second || w[1] != 2*time.Second {
		t.Fatalf("waits %v", w)
	}
	c.SetAuto(false)
	tm := c.NewTimer(time.Second)
	select {
	case <-tm.C():
		t.Fatal("fired with auto mode off")
	default:
	}
}
