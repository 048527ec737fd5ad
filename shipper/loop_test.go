package shipper

import (
	"context"
	"errors"
	"github.com/drfs-project/drfs/internal/clock"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
)

// countRotator counts rotations per VM.
type countRotator struct {
	Rotator
	mu sync.Mutex
	n  map[string]int
}

func (c *countRotator) Rotate(vm string) (uint64, error) {
	c.mu.Lock()
	c.n[vm]++
	c.mu.Unlock()
	return c.Rotator.Rotate(vm)
}

func (c *countRotator) count(vm string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[vm]
}

// loopRig runs a Loop on a fake clock and hands out each VM's state as its
// ship ends.
type loopRig struct {
	t       *testing.T
	e       *env
	clock   *clock.Fake
	rot     *countRotator
	loop    *Loop
	shipped chan VMState
	cancel  context.CancelFunc
	done    chan error
}

const interval = 30 * time.Second

func newLoopRig(t *testing.T, e *env, store target.Store, onShip func(VMState)) *loopRig {
	r := &loopRig{t: t, e: e, clock: newFakeClock(), shipped: make(chan VMState, 16), done: make(chan error, 1)}
	r.rot = &countRotator{Rotator: e.source(), n: map[string]int{}}
	sh := New(e.source(), store, Options{Source: "host-a", Clock: r.clock})
	r.loop = NewLoop(sh, r.rot, LoopOptions{
		Interval: interval,
		Clock:    r.clock,
		Parallel: 2,
		OnShip: func(s VMState) {
			if onShip != nil {
				onShip(s)
			}
			r.shipped <- s
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.loop.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *loopRig) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if err := <-r.done; !errors.Is(err, context.Canceled) {
		r.t.Errorf("Run: %v, want context.Canceled", err)
	}
}

// round waits for n ships and returns the states by VM.
func (r *loopRig) round(n int) map[string]VMState {
	r.t.Helper()
	out := map[string]VMState{}
	for range n {
		select {
		case s := <-r.shipped:
			out[s.VM] = s
		case <-time.After(20 * time.Second):
			r.t.Fatalf("no ship after 20s (have %d of %d)", len(out), n)
		}
	}
	return out
}

// quiet checks that no ship happens for a moment.
func (r *loopRig) quiet() {
	r.t.Helper()
	select {
	case s := <-r.shipped:
		r.t.Fatalf("unexpected ship of %s", s.VM)
	case <-time.After(20 * time.Millisecond):
	}
}

func TestLoopInterval(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 10))
	e := newEnv(t, 4096)
	d1, d2 := e.openDisk("vm1/d.img"), e.openDisk("vm2/d.img")
	d1.write(0, randomData(rng, 10000))
	d2.write(0, randomData(rng, 10000))
	// A generation frozen before the loop starts is shipped at once.
	gen, err := e.log.Rotate("vm1")
	if err != nil {
		t.Fatal(err)
	}
	// A round that overruns its interval when slow is set.
	var slow atomic.Bool
	var r *loopRig
	r = newLoopRig(t, e, e.store, func(s VMState) {
		if s.VM == "vm1" && slow.CompareAndSwap(true, false) {
			r.clock.Advance(2*interval + time.Second)
		}
	})
	st := r.round(2)
	if s := st["vm1"]; s.LastGeneration != gen || s.Pending != 0 || s.LastError != nil || s.Generations != 1 {
		t.Fatalf("vm1 after the first round: %+v", s)
	}
	if s := st["vm2"]; s.LastGeneration != 0 || s.Generations != 0 || s.LastError != nil {
		t.Fatalf("vm2 after the first round: %+v", s)
	}
	if r.rot.count("vm1")+r.rot.count("vm2") != 0 {
		t.Fatal("the first round rotated")
	}

	waitTimers(t, r.clock, 1)
	r.clock.Advance(interval - time.Second)
	r.quiet()
	d2.write(4096, randomData(rng, 4096))
	r.clock.Advance(time.Second)
	st = r.round(2)
	for _, vm := range []string{"vm1", "vm2"} {
		if r.rot.count(vm) != 1 {
			t.Fatalf("%s rotated %d times after one interval", vm, r.rot.count(vm))
		}
		if s := st[vm]; s.Pending != 0 || s.LastError != nil || s.LastShipped != r.clock.Now() {
			t.Fatalf("%s after the second round: %+v", vm, s)
		}
	}
	if s := st["vm2"]; s.Generations != 1 || s.RawBytes < 10000 || s.WireBytes == 0 || s.Last.Generations != 1 {
		t.Fatalf("vm2 after the second round: %+v", s)
	}
	if err := checkDisk(e.store, "vm2", st["vm2"].LastGeneration, "d.img", d2.img.b); err != nil {
		t.Fatal(err)
	}

	// Rounds keep their pace: a round that overruns its interval is
	// followed by the next one at once, and missed ones are not made up.
	waitTimers(t, r.clock, 1)
	slow.Store(true)
	r.clock.Advance(interval)
	r.round(4) // the slow round and the one right after it
	waitTimers(t, r.clock, 1)
	r.quiet()
	r.clock.Advance(interval)
	r.round(2)
	if n := r.rot.count("vm1"); n != 4 {
		t.Fatalf("vm1 rotated %d times, want 4", n)
	}
	states := r.loop.States()
	if len(states) != 2 || states[0].VM != "vm1" || states[1].VM != "vm2" {
		t.Fatalf("States: %+v", states)
	}
}

func TestLoopErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 11))
	e := newEnv(t, 4096)
	ctx := context.Background()
	d1, d2 := e.openDisk("vm1/d.img"), e.openDisk("vm2/d.img")
	d1.write(0, randomData(rng, 10000))
	d2.write(0, randomData(rng, 10000))
	// vm1 is replicated to the store from another source.
	if _, err := e.log.Rotate("vm1"); err != nil {
		t.Fatal(err)
	}
	if _, err := New(e.source(), e.store, Options{Source: "host-b"}).Ship(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	d1.write(0, randomData(rng, 10))

	failCommit := 1
	store := &hookStore{Store: e.store}
	store.commit = func(ctx context.Context, vm string, gen uint64, c target.Commit) error {
		if vm == "vm2" && failCommit > 0 {
			failCommit--
			return retryable{"network unreachable"}
		}
		return e.store.Commit(ctx, vm, gen, c)
	}
	r := newLoopRig(t, e, store, nil)
	r.round(2) // nothing frozen yet
	waitTimers(t, r.clock, 1)
	r.clock.Advance(interval)
	st := r.round(2)
	s1, s2 := st["vm1"], st["vm2"]
	if !s1.Stopped || !errors.Is(s1.LastError, target.ErrWrongSource) || s1.Pending != 1 || s1.Failures != 1 {
		t.Fatalf("vm1 owned by another source: %+v", s1)
	}
	if s2.Stopped || s2.LastError == nil || target.IsPermanent(s2.LastError) || s2.Pending != 1 ||
		s2.Failures != 1 || s2.FailingSince != r.clock.Now() {
		t.Fatalf("vm2 after a failed commit: %+v", s2)
	}

	// The next round leaves vm1 alone and ships vm2's two generations.
	waitTimers(t, r.clock, 1)
	r.clock.Advance(interval)
	st = r.round(1)
	if s := st["vm2"]; s.LastError != nil || s.Failures != 0 || s.Pending != 0 || s.Last.Generations != 2 || s.Stopped {
		t.Fatalf("vm2 after recovering: %+v", s)
	}
	waitTimers(t, r.clock, 1)
	r.quiet()
	if n := r.rot.count("vm1"); n != 1 {
		t.Fatalf("stopped vm1 rotated %d times, want 1", n)
	}
	if s, _ := r.loop.State("vm1"); !s.Stopped {
		t.Fatalf("vm1: %+v", s)
	}

	// Resume: vm1 is tried again, and stops again.
	r.loop.Resume("vm1")
	r.clock.Advance(interval)
	st = r.round(2)
	if s := st["vm1"]; !s.Stopped || s.Failures != 2 || s.Pending != 2 {
		t.Fatalf("vm1 after Resume: %+v", s)
	}
}

// TestLoopRecord: a ship done outside the rounds (an initial copy) counts
// in the VM's totals once, with the rounds' ships, and never moves its
// last generation back.
func TestLoopRecord(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 12))
	e := newEnv(t, 4096)
	d := e.openDisk("vm1/d.img")
	d.write(0, randomData(rng, 50000))
	gen, err := e.log.Rotate("vm1")
	if err != nil {
		t.Fatal(err)
	}
	sh := New(e.source(), e.store, Options{Source: "host-a"})
	loop := NewLoop(sh, e.source(), LoopOptions{Interval: interval, VMs: []string{"vm1"}})
	ctx := context.Background()
	outside, err := sh.ShipCopy(ctx, "vm1", gen, map[string]string{}, target.KindInitial)
	if err != nil {
		t.Fatal(err)
	}
	if outside.WireBytes == 0 || outside.Generations != 1 {
		t.Fatalf("the ship outside the loop: %+v", outside)
	}
	loop.Record("vm1", outside)
	s, ok := loop.State("vm1")
	if !ok || s.Generations != 1 || s.RawBytes != outside.RawBytes || s.WireBytes != outside.WireBytes ||
		s.LastGeneration != gen || s.Pending != 0 || s.Last != (Stats{}) || s.LastError != nil {
		t.Fatalf("vm1 after Record: %+v (%v)", s, ok)
	}

	d.write(8192, randomData(rng, 8192))
	loop.Round(ctx)
	s, _ = loop.State("vm1")
	if s.LastError != nil || s.Last.Generations != 1 || s.Last.WireBytes == 0 {
		t.Fatalf("vm1 after a round: %+v", s)
	}
	if s.Generations != 2 || s.RawBytes != outside.RawBytes+s.Last.RawBytes || s.WireBytes != outside.WireBytes+s.Last.WireBytes {
		t.Fatalf("vm1's totals after a round: %+v, want the copy's %+v and the round's", s, outside)
	}
	newest := s.LastGeneration
	loop.Record("vm1", Stats{Generations: 1, Last: gen, WireBytes: 10})
	if s, _ = loop.State("vm1"); s.LastGeneration != newest || s.WireBytes != outside.WireBytes+s.Last.WireBytes+10 {
		t.Fatalf("vm1 after recording an older generation: %+v", s)
	}
}
