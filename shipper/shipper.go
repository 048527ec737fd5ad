package shipper

import (
	"context"
	"errors"
	"fmt"
	"github.com/drfs-project/drfs/internal/clock"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// Options configure a Shipper.
type Options struct {
	// Source is the identity of this source host, recorded with every
	// commit; a store refuses a VM that another source replicates.
	Source string
	// Clock times Stats.Duration; the system clock if nil.
	Clock clock.Clock
	// NoCompression sends every block raw, without LZ4: for a target that
	// no network separates from the source (a directory store), where
	// compressing costs the shipper CPU and the store the decompression,
	// and saves nothing.
	NoCompression bool
	// Follow is for how long after it starts a Ship also sends the
	// generations frozen while it runs (a caller that cuts generations as
	// they fill up): each one is staged while the one before commits.
	// 0 sends only those frozen when it starts.
	Follow time.Duration
	// KeepFollowing, if set, is asked before each generation found while
	// following: false ends the Ship once the generation in flight
	// commits (its caller has work of its own to do between rounds).
	KeepFollowing func(vm string) bool
	// OnCommit, if set, is called after each generation the store
	// committed, with its point (generation, frozen time, kind and disk
	// names), before Ship returns.
	OnCommit func(target.Point)
}

// Shipper drains the frozen generations of a Source into a target.Store.
//
// Ship may be called concurrently for different VMs; calls for one VM are
// serialised (the store's contract wants one writer per VM).
type Shipper struct {
	src   Source
	store target.Store
	opts  Options

	mu  sync.Mutex
	vms map[string]*sync.Mutex // one per VM, never removed
}

// New returns a Shipper from src to store. Wrap the store with Retry and
// wrap.RateLimit (in that order: wrap.Retry(wrap.RateLimit(store), ...)) for retries and a
// bandwidth limit.
func New(src Source, store target.Store, opts Options) *Shipper {
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	return &Shipper{src: src, store: store, opts: opts, vms: map[string]*sync.Mutex{}}
}

// Stats counts what a Ship sent.
type Stats struct {
	Generations int    // generations committed (or found committed) and dropped
	Last        uint64 // the newest of them; 0 if none
	Streams     int    // disk streams staged
	DataBlocks  uint64 // data blocks in the streams
	ZeroBlocks  uint64 // blocks sent as zero extents
	RawBytes    uint64 // uncompressed bytes of the data blocks
	WireBytes   uint64 // bytes of the streams: headers, records (LZ4 where smaller), trailers
	Compressed  uint64 // data blocks sent LZ4-compressed
	Duration    time.Duration
}

// Ratio is the compression ratio on the wire: raw data bytes per stream
// byte, 0 when nothing was sent. Above 1, LZ4 saved more than the framing
// costs.
func (s Stats) Ratio() float64 {
	if s.WireBytes == 0 {
		return 0
	}
	return float64(s.RawBytes) / float64(s.WireBytes)
}

// Rate is the raw bytes per second; 0 when no time passed.
func (s Stats) Rate() float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.RawBytes) / s.Duration.Seconds()
}

func (s *Stats) addFrame(f frame.Stats) {
	s.Streams++
	s.DataBlocks += f.DataBlocks
	s.ZeroBlocks += f.ZeroBlocks
	s.RawBytes += f.DataBytes
	s.WireBytes += f.WireBytes
	s.Compressed += f.Compressed
}

// Add adds the counts of o to s (Last becomes the newer one).
func (s *Stats) Add(o Stats) {
	s.Generations += o.Generations
	s.Last = max(s.Last, o.Last)
	s.Streams += o.Streams
	s.DataBlocks += o.DataBlocks
	s.ZeroBlocks += o.ZeroBlocks
	s.RawBytes += o.RawBytes
	s.WireBytes += o.WireBytes
	s.Compressed += o.Compressed
	s.Duration += o.Duration
}

func (s *Shipper) vmLock(vm string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.vms[vm]
	if m == nil {
		m = new(sync.Mutex)
		s.vms[vm] = m
	}
	return m
}

// Ship sends the generations of vm frozen now, oldest first, each one
// staged disk by disk, committed, and then dropped from the log. The
// commit of a generation runs while the next one is staged: the target
// applies one generation while the next one's stream arrives. It stops at
// the first error and returns it with what was done; the generation that
// failed stays in the log and is sent again by the next Ship.
//
// A generation the store already holds (a crash came between its Commit
// and its Drop) is committed again, which the store acknowledges without
// change, and dropped. A generation older than the store's newest point
// that the store does not hold is a permanent error wrapping
// target.ErrOutOfOrder: the log and the target disagree, and only a
// resynchronization can tell which blocks the replica lacks.
func (s *Shipper) Ship(ctx context.Context, vm string) (st Stats, err error) {
	return s.ship(ctx, vm, s.src, s.opts.Follow)
}

// ship is Ship reading the log through src, following new generations for
// follow.
func (s *Shipper) ship(ctx context.Context, vm string, src Source, follow time.Duration) (st Stats, err error) {
	start := s.opts.Clock.Now()
	defer func() { st.Duration = s.opts.Clock.Now().Sub(start) }()
	m := s.vmLock(vm)
	m.Lock()
	defer m.Unlock()

	gens := src.Frozen(vm)
	if len(gens) == 0 {
		return st, nil
	}
	points, err := s.store.Points(ctx, vm)
	if errors.Is(err, target.ErrNotFound) {
		points, err = nil, nil
	}
	if err != nil {
		return st, fmt.Errorf("shipper: listing the points of %s: %w", vm, err)
	}
	// The Commit of a generation runs while the next one is staged: the
	// target applies one while the next one's stream arrives.
	var inflight *commitCall
	finish := func() error {
		if inflight == nil {
			return nil
		}
		c := inflight
		inflight = nil
		<-c.done
		if c.err != nil {
			return c.err
		}
		if s.opts.OnCommit != nil {
			s.opts.OnCommit(*c.point)
		}
		return s.dropped(src, vm, c.gen, &st)
	}
	for len(gens) > 0 {
		for _, gen := range gens {
			if err := s.shipOne(ctx, src, vm, gen, &points, &inflight, finish, &st); err != nil {
				if ferr := finish(); ferr != nil {
					return st, ferr // the older generation's failure first
				}
				return st, err
			}
		}
		// Generations frozen meanwhile, if following: a new one is
		// staged while the last one commits.
		gens = nil
		for follow > 0 && len(gens) == 0 && s.opts.Clock.Now().Sub(start) < follow {
			gens = newer(src.Frozen(vm), st.Last, points)
			if len(gens) > 0 && s.opts.KeepFollowing != nil && !s.opts.KeepFollowing(vm) {
				gens = nil
				break
			}
			if len(gens) > 0 || inflight == nil {
				break
			}
			if !inflight.wait(s.opts.Clock, followPoll) {
				continue // look again for a generation cut meanwhile
			}
			if err := finish(); err != nil {
				return st, err
			}
		}
	}
	return st, finish()
}

// newer returns the generations of frozen past last and past the newest
// of points.
func newer(frozen []uint64, last uint64, points []target.Point) []uint64 {
	if n := len(points); n > 0 {
		last = max(last, points[n-1].Generation)
	}
	i, _ := slices.BinarySearch(frozen, last+1)
	return frozen[i:]
}

// shipOne sends generation gen: commits it again if the store holds it
// (points), refuses it if the store is past it, or stages it and starts
// its commit, which runs while the next generation stages (inflight).
// finish waits for the commit in flight and drops its generation.
func (s *Shipper) shipOne(ctx context.Context, src Source, vm string, gen uint64, points *[]target.Point, inflight **commitCall,
	finish func() error, st *Stats) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var newest *target.Point
	if n := len(*points); n > 0 {
		newest = &(*points)[n-1]
	}
	i := slices.IndexFunc(*points, func(p target.Point) bool { return p.Generation == gen })
	switch {
	case i >= 0:
		if err := finish(); err != nil {
			return err
		}
		if err := s.recommit(ctx, src, vm, gen, &(*points)[i]); err != nil {
			return err
		}
		return s.dropped(src, vm, gen, st)
	case newest != nil && gen < newest.Generation:
		if err := finish(); err != nil {
			return err
		}
		return permanent(fmt.Errorf("shipper: %s generation %d: %w: the target's newest point is %d and it does not hold %d; resynchronize the VM",
			vm, gen, target.ErrOutOfOrder, newest.Generation, gen))
	}
	c, gs, err := s.stageGeneration(ctx, src, vm, gen, newest)
	st.Add(gs)
	// The older generation's commit comes first, whatever happened to
	// this one's staging.
	if ferr := finish(); ferr != nil {
		return ferr
	}
	if err != nil {
		return err
	}
	if c == nil {
		// Nothing to commit: the generation can go.
		return s.dropped(src, vm, gen, st)
	}
	*points = append(*points, *c.point)
	c.start(ctx, s.store, vm)
	*inflight = c
	return nil
}

// dropped drops gen from the log once the target holds it, and counts it.
func (s *Shipper) dropped(src Source, vm string, gen uint64, st *Stats) error {
	if err := src.Drop(vm, gen); err != nil && !errors.Is(err, tracker.ErrGeneration) {
		return fmt.Errorf("shipper: dropping %s generation %d after the target committed it: %w", vm, gen, err)
	}
	st.Generations++
	st.Last = gen
	return nil
}

// followPoll is how often a following Ship looks for a newly cut
// generation while a commit runs: one cut during the commit is staged at
// once, not after it.
const followPoll = 100 * time.Millisecond

// commitCall is the Commit of a staged generation, run in the background.
type commitCall struct {
	gen   uint64
	c     target.Commit
	point *target.Point // as committed: only its generation and disk names
	done  chan struct{} // closed when the Commit returned, with err
	err   error
}

// wait waits up to d for the Commit to return, and reports whether it did.
func (c *commitCall) wait(clk clock.Clock, d time.Duration) bool {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C():
		return false
	}
}

func (c *commitCall) start(ctx context.Context, store target.Store, vm string) {
	c.done = make(chan struct{})
	go func() {
		defer close(c.done)
		err := store.Commit(ctx, vm, c.gen, c.c)
		if err != nil {
			c.err = fmt.Errorf("shipper: committing %s generation %d: %w", vm, c.gen, err)
		}
	}()
}

// recommit commits again a generation the store holds, with the point's
// disks: the store acknowledges it without change.
func (s *Shipper) recommit(ctx context.Context, src Source, vm string, gen uint64, p *target.Point) error {
	info, err := src.Generation(vm, gen)
	if err != nil {
		return fmt.Errorf("shipper: %s generation %d: %w", vm, gen, err)
	}
	disks := make([]string, len(p.Disks))
	for i, d := range p.Disks {
		disks[i] = d.Name
	}
	c := target.Commit{Source: s.opts.Source, Frozen: info.Frozen, Kind: info.kind(), Disks: disks, AppConsistent: info.AppConsistent}
	if err := s.store.Commit(ctx, vm, gen, c); err != nil {
		return fmt.Errorf("shipper: committing %s generation %d again: %w", vm, gen, err)
	}
	return nil
}

// stageGeneration stages one generation on top of the store's newest point
// (nil for none), and returns its commit, or nil if there is nothing to
// commit.
func (s *Shipper) stageGeneration(ctx context.Context, src Source, vm string, gen uint64, newest *target.Point) (*commitCall, Stats, error) {
	var st Stats
	info, err := src.Generation(vm, gen)
	if err != nil {
		return nil, st, fmt.Errorf("shipper: %s generation %d: %w", vm, gen, err)
	}
	if bs := info.BlockSize; bs < frame.MinBlockSize || bs&(bs-1) != 0 {
		return nil, st, permanent(fmt.Errorf("shipper: %s generation %d: block size %d is not a power of two of at least %d", vm, gen, bs, frame.MinBlockSize))
	}

	// The disks at the cut: those of the newest point, plus the changed
	// ones, minus the removed ones.
	disks := map[string]bool{}
	var base uint64
	if newest != nil {
		base = newest.Generation
		for _, d := range newest.Disks {
			disks[d.Name] = true
		}
	}
	known := maps.Clone(disks)
	// A name can be both removed and live in one generation: a disk
	// removed and created again, or renamed over another.
	removed := map[string]bool{}
	plans := map[string]*diskPlan{}
	for _, d := range info.Disks {
		if d.Removed {
			removed[d.Name] = true
		} else {
			plans[d.Name] = &diskPlan{name: d.Name, size: d.Size}
		}
	}
	for name := range removed {
		if plans[name] == nil {
			delete(disks, name)
		}
	}
	for name, p := range plans {
		if known[name] {
			p.base = base
			p.fill = removed[name]
		}
		disks[name] = true
	}
	if len(disks) == 0 {
		if len(known) > 0 {
			return nil, st, permanent(fmt.Errorf("shipper: %s generation %d removes every disk of the VM: %w: the target keeps point %d; add a disk or stop protecting the VM",
				vm, gen, target.ErrNotFound, base))
		}
		// Nothing was ever replicated and nothing is to be: there is no
		// point to make, and the generation can go.
		return nil, st, nil
	}

	g := &genShip{src: src, vm: vm, gen: gen, info: &info, plans: plans, raw: s.opts.NoCompression}
	staged, err := s.stageAll(ctx, g, &st)
	if err != nil {
		return nil, st, err
	}
	for name := range plans {
		if !staged[name] {
			return nil, st, permanent(fmt.Errorf("shipper: %s generation %d: the log lists disk %s as changed but has no records of it", vm, gen, name))
		}
	}

	names := slices.Sorted(maps.Keys(disks))
	c := target.Commit{Source: s.opts.Source, Frozen: info.Frozen, Kind: info.kind(), Disks: names, AppConsistent: info.AppConsistent}
	p := &target.Point{VM: vm, Generation: gen, Frozen: info.Frozen, Kind: info.kind()}
	for _, n := range names {
		p.Disks = append(p.Disks, target.DiskInfo{Name: n})
	}
	return &commitCall{gen: gen, c: c, point: p}, st, nil
}

// stageAll stages the stream of every changed disk of g as it is encoded,
// and returns the disks staged.
func (s *Shipper) stageAll(ctx context.Context, g *genShip, st *Stats) (map[string]bool, error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	streams := make(chan *stream)
	runErr := make(chan error, 1)
	go func() { runErr <- g.run(rctx, streams) }()

	staged := map[string]bool{}
	var stageErr error
	for str := range streams {
		if stageErr != nil {
			str.end(errStageFailed)
			continue
		}
		err := s.store.Stage(ctx, g.vm, g.gen, str.plan.name, str)
		fs, encErr := str.end(err)
		broken := encErr != nil && !consumerGone(encErr) && !errors.Is(encErr, errStageFailed)
		switch {
		case err != nil && broken:
			// The encoder's failure cut the stream: it is the cause.
			stageErr = fmt.Errorf("shipper: reading %s/%s generation %d: %w", g.vm, str.plan.name, g.gen, encErr)
			cancel()
		case err != nil:
			stageErr = fmt.Errorf("shipper: staging %s/%s generation %d: %w", g.vm, str.plan.name, g.gen, err)
			cancel()
		case broken:
			// The store returned without reading the rest of the stream
			// (it holds the generation already); the encoder's failure,
			// if it is the log's, shows in run's error.
		default:
			staged[str.plan.name] = true
			st.addFrame(fs)
		}
	}
	err := <-runErr
	g.side.Wait()
	if stageErr != nil {
		return staged, stageErr
	}
	if err != nil {
		return staged, fmt.Errorf("shipper: reading %s generation %d: %w", g.vm, g.gen, err)
	}
	return staged, nil
}

// permanentError marks an error that retrying will not cure.
type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() error   { return e.err }
func (e *permanentError) Permanent() bool { return true }

func permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}
