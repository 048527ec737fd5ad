package shipper

import (
	"context"
	"errors"
	"fmt"
	"github.com/drfs-project/drfs/internal/clock"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// LoopOptions configure a Loop.
type LoopOptions struct {
	// Interval is how often each VM is rotated and shipped. Required.
	Interval time.Duration
	// Clock paces the rounds; the system clock if nil.
	Clock clock.Clock
	// VMs limits the loop to these VMs; nil means every VM of the log,
	// listed again at each round.
	VMs []string
	// Parallel is how many VMs are shipped at once; 1 if 0.
	Parallel int
	// OnShip, if set, is called after each VM's ship with its state.
	OnShip func(VMState)
	// Copies, if set, is asked at each round which disks of vm must be
	// sent from their files rather than from the log: disks the target
	// does not hold yet, or whose tracking was lost. The round then drains
	// the log, calls Prepare (if set) to find the ranges of the partial
	// disks against the target's newest point, rotates, and ships the
	// copies on that generation as a point of kind (see
	// Shipper.ShipCopyDisks); done is told how it went.
	// An error (the target could not say what it holds) fails the round:
	// nothing is shipped that may lack its base on the target.
	Copies func(vm string) (disks map[string]CopyDisk, kind target.PointKind, done func(error), err error)
	// Prepare fills in Ranges and Against of the partial disks, after the
	// drain and before the rotation (after Cut, if set). Writes during it
	// are logged in the generation the copy rides on, whose changed blocks
	// the copy sends (or, with Cut, in the next one).
	Prepare func(ctx context.Context, vm string, disks map[string]CopyDisk) (map[string]CopyDisk, error)
	// Cut, if set, replaces the rotation of a round that copies: after
	// the drain it freezes vm's active generation and returns it with the
	// disks set to read from a point-in-time view taken at that cut
	// (CopyDisk.View, a snapshot), and the kind of the point the copy then
	// makes (target.KindSnapshot: the disks at the cut, consistent);
	// release, called when the copy has ended, lets the views go. Prepare
	// then compares the views rather than the live files. An error fails
	// the round.
	Cut func(ctx context.Context, vm string, disks map[string]CopyDisk, kind target.PointKind) (gen uint64, out map[string]CopyDisk, outKind target.PointKind, release func(), err error)
	// WhileShipping, if set, is started when a round ships vm from the
	// log (not when it copies), and stopped when that ship ends: a caller
	// that cuts generations as they fill up does it there, and the
	// Shipper's Follow sends them in the same ship.
	WhileShipping func(ctx context.Context, vm string) (stop func())
}

// VMState is what a Loop knows of one VM.
type VMState struct {
	VM string
	// LastGeneration is the newest generation committed to the target and
	// dropped from the log, and LastShipped when that was; 0 and the zero
	// Time if none yet.
	LastGeneration uint64
	LastShipped    time.Time
	// Pending is the number of frozen generations waiting in the log after
	// the last round.
	Pending int
	// LastError is the error of the last round, nil if it succeeded.
	// Failures counts the rounds in a row that failed and FailingSince is
	// when the first of them ended, for the orchestrator's back-off.
	LastError    error
	Failures     int
	FailingSince time.Time
	// Stopped: a permanent error (LastError) stopped the VM; the loop
	// neither rotates nor ships it until Resume.
	Stopped bool
	// Totals since the loop started, of its rounds and of the ships
	// counted by Record.
	Generations uint64
	RawBytes    uint64
	WireBytes   uint64
	// Last is the Stats of the last round.
	Last Stats
}

// Loop rotates every VM of a log at an interval and ships what froze. A
// permanent error stops that VM (the others go on); a retryable one is
// tried again at the next round.
type Loop struct {
	sh   *Shipper
	rot  Rotator
	opts LoopOptions

	mu     sync.Mutex
	states map[string]*VMState
}

// NewLoop returns a loop that rotates VMs with rot and ships them with sh.
func NewLoop(sh *Shipper, rot Rotator, opts LoopOptions) *Loop {
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 1
	}
	return &Loop{sh: sh, rot: rot, opts: opts, states: map[string]*VMState{}}
}

// Run ships what is frozen already (a restart leaves generations behind),
// then rotates and ships every VM each Interval until ctx is done, and
// returns ctx's error. A round that takes longer than Interval is followed
// at once by the next; missed rounds are not made up.
func (l *Loop) Run(ctx context.Context) error {
	if l.opts.Interval <= 0 {
		return errors.New("shipper: loop interval must be positive")
	}
	l.round(ctx, false)
	next := l.opts.Clock.Now()
	for {
		next = next.Add(l.opts.Interval)
		if wait := next.Sub(l.opts.Clock.Now()); wait > 0 {
			t := l.opts.Clock.NewTimer(wait)
			select {
			case <-t.C():
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		} else {
			next = l.opts.Clock.Now()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		l.round(ctx, true)
	}
}

// Round rotates and ships every VM once, now.
func (l *Loop) Round(ctx context.Context) { l.round(ctx, true) }

func (l *Loop) round(ctx context.Context, rotate bool) {
	vms := l.opts.VMs
	if vms == nil {
		vms = l.rot.VMs()
	}
	sem := make(chan struct{}, l.opts.Parallel)
	var wg sync.WaitGroup
	for _, vm := range vms {
		if l.stopped(vm) {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			l.ship(ctx, vm, rotate)
		}()
	}
	wg.Wait()
}

func (l *Loop) ship(ctx context.Context, vm string, rotate bool) {
	var (
		err   error
		st    Stats
		files map[string]CopyDisk
		kind  target.PointKind
		done  func(error)
	)
	// Copies are asked for even in the first round, which otherwise only
	// ships what a restart left frozen: an initial copy should not wait an
	// interval.
	var copyErr error
	if l.opts.Copies != nil {
		files, kind, done, copyErr = l.opts.Copies(vm)
	}
	switch {
	case copyErr != nil:
		// Nothing ships this round: a generation sent to a target that
		// may lack the VM's copy would be a point without its base. The
		// rotation keeps the cadence of the cuts.
		err = copyErr
		if rotate {
			if rerr := l.rotate(vm); target.IsPermanent(rerr) {
				err = rerr
			}
		}
	case len(files) > 0:
		st, err = l.shipCopy(ctx, vm, files, kind)
		done(err)
	default:
		if rotate {
			err = l.rotate(vm)
		}
		// Ship what froze even if the rotation failed: older generations
		// may be waiting.
		stop := func() {}
		if l.opts.WhileShipping != nil {
			stop = l.opts.WhileShipping(ctx, vm)
		}
		var serr error
		st, serr = l.sh.Ship(ctx, vm)
		stop()
		if serr != nil && (err == nil || target.IsPermanent(serr)) {
			err = serr
		}
	}
	now := l.opts.Clock.Now()
	pending := len(l.sh.src.Frozen(vm))

	l.mu.Lock()
	s := l.stateLocked(vm)
	s.Pending = pending
	s.Last = st
	s.Generations += uint64(st.Generations)
	s.RawBytes += st.RawBytes
	s.WireBytes += st.WireBytes
	if st.Generations > 0 {
		s.LastGeneration, s.LastShipped = st.Last, now
	}
	switch {
	case err != nil && ctx.Err() != nil:
		// Shutting down: says nothing of the VM's health.
	case err == nil:
		s.LastError, s.Failures, s.FailingSince = nil, 0, time.Time{}
	default:
		if s.Failures == 0 {
			s.FailingSince = now
		}
		s.LastError = err
		s.Failures++
		s.Stopped = target.IsPermanent(err)
	}
	out := *s
	l.mu.Unlock()
	if l.opts.OnShip != nil {
		l.opts.OnShip(out)
	}
}

// rotate freezes the active generation of vm; an unknown VM is a
// permanent error.
func (l *Loop) rotate(vm string) error {
	if _, err := l.rot.Rotate(vm); err != nil {
		err = fmt.Errorf("shipper: rotating %s: %w", vm, err)
		if errors.Is(err, tracker.ErrUnknownVM) {
			return permanent(err)
		}
		return err
	}
	return nil
}

// shipCopy drains what is frozen, prepares the partial copies, rotates,
// and ships the copies on the new generation. With Cut, the generation is
// cut (with its views) before the partial copies are prepared.
func (l *Loop) shipCopy(ctx context.Context, vm string, disks map[string]CopyDisk, kind target.PointKind) (Stats, error) {
	st, err := l.sh.Ship(ctx, vm)
	if err != nil {
		return st, err
	}
	var gen uint64
	if l.opts.Cut != nil {
		var release func()
		if gen, disks, kind, release, err = l.opts.Cut(ctx, vm, disks, kind); err != nil {
			return st, err
		}
		defer release()
	}
	if l.opts.Prepare != nil {
		if disks, err = l.opts.Prepare(ctx, vm, disks); err != nil {
			return st, err
		}
	}
	if l.opts.Cut == nil {
		if gen, err = l.rot.Rotate(vm); err != nil {
			return st, fmt.Errorf("shipper: rotating %s: %w", vm, err)
		}
	}
	cst, err := l.sh.ShipCopyDisks(ctx, vm, gen, disks, kind)
	st.Add(cst)
	return st, err
}

// Record counts a ship of vm done outside the loop's rounds (an initial
// copy that a caller shipped with the loop's Shipper, say) in the VM's
// totals, so that they hold every byte sent for it; st is what that ship
// returned. Its newest generation, if newer, becomes LastGeneration. Last
// and the VM's error state stay those of its last round, and OnShip is not
// called.
func (l *Loop) Record(vm string, st Stats) {
	now := l.opts.Clock.Now()
	pending := len(l.sh.src.Frozen(vm))
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stateLocked(vm)
	s.Pending = pending
	s.Generations += uint64(st.Generations)
	s.RawBytes += st.RawBytes
	s.WireBytes += st.WireBytes
	if st.Generations > 0 && st.Last > s.LastGeneration {
		s.LastGeneration, s.LastShipped = st.Last, now
	}
}

func (l *Loop) stateLocked(vm string) *VMState {
	s := l.states[vm]
	if s == nil {
		s = &VMState{VM: vm}
		l.states[vm] = s
	}
	return s
}

func (l *Loop) stopped(vm string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.states[vm]
	return s != nil && s.Stopped
}

// Resume lets a stopped VM be rotated and shipped again from the next
// round, once the cause of its permanent error was dealt with.
func (l *Loop) Resume(vm string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.states[vm]; s != nil {
		s.Stopped = false
	}
}

// State returns the state of vm, and false if the loop has not shipped it
// yet.
func (l *Loop) State(vm string) (VMState, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.states[vm]
	if s == nil {
		return VMState{}, false
	}
	return *s, true
}

// States returns the state of every VM the loop has shipped, by name.
func (l *Loop) States() []VMState {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]VMState, 0, len(l.states))
	for _, s := range l.states {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b VMState) int { return strings.Compare(a.VM, b.VM) })
	return out
}
