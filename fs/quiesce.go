package fs

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"sync/atomic"
)

// ErrClosed is returned by Quiesce and Snapshot once the mount has stopped
// or while it is being unmounted.
var ErrClosed = errors.New("drfs mount is closed")

// Quiesce holds every change of every tracked disk of the mount: writes
// (including the kernel's writeback of mmap'd pages), fallocate, copies
// onto a disk, truncates. It returns once the changes already in flight
// have completed and been reported to the Recorder; from then until
// release is called, a new change waits in the daemon before it touches
// the backing file, and completes after release. Reads, fsync, metadata
// and untracked files go on. Disks opened while the hold lasts are held
// too.
//
// It is the cut of a consistent rotation or snapshot across the disks of a
// VM, and the hold of a planned failover. ctx bounds the wait for the
// changes in flight: when it ends first, Quiesce lifts its hold and
// returns ctx's error. Holds nest: changes wait until every hold that
// covers their disk is released.
//
// release is idempotent and may be called from any goroutine. The caller
// must not wait, while it holds writes, for anything that writes to the
// mount, fsync included (fsync writes back dirty mmap'd pages, which are
// held). Unmount fails while a hold is in place (release first), and
// Quiesce fails with ErrClosed while an Unmount is in progress or after
// it: a hold never blocks an unmount inside the kernel. A hold does not
// survive the process.
func (s *Server) Quiesce(ctx context.Context) (release func(), err error) {
	return s.m.quiesce(ctx, nil)
}

// QuiescePaths is Quiesce for the disks of one set (one VM): those whose
// path relative to the source directory (slash separated, as the Recorder
// sees it) equals one of paths or lies under one of them as a directory.
// A disk is matched by its path when the hold is taken (or when it is
// opened during the hold); a disk that has been unlinked everywhere has no
// path and is not matched. An empty paths holds nothing.
func (s *Server) QuiescePaths(ctx context.Context, paths []string) (release func(), err error) {
	clean := make([]string, 0, len(paths))
	for _, p := range paths {
		c := path.Clean(strings.TrimPrefix(p, "/"))
		if c == "." {
			// The whole source.
			return s.m.quiesce(ctx, nil)
		}
		clean = append(clean, c)
	}
	if len(clean) == 0 {
		return func() {}, nil
	}
	return s.m.quiesce(ctx, clean)
}

// hold is one Quiesce: the disks it matches are held until it is released.
type hold struct {
	// prefixes are the paths the hold matches; nil matches every disk.
	prefixes []string
	// disks are the disks whose gate the hold closed. Guarded by
	// mount.mu.
	disks []*disk
}

// matches reports whether the hold covers the disk at rel ("" when the
// disk has no path).
func (h *hold) matches(rel string) bool {
	if h.prefixes == nil {
		return true
	}
	if rel == "" {
		return false
	}
	for _, p := range h.prefixes {
		if rel == p || strings.HasPrefix(rel, p+"/") {
			return true
		}
	}
	return false
}

// quiesce takes a hold over the disks matched by prefixes (nil: all).
func (m *mount) quiesce(ctx context.Context, prefixes []string) (func(), error) {
	h := &hold{prefixes: prefixes}
	m.mu.Lock()
	if m.mu.closed || m.mu.unmounting > 0 {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	for d := range m.mu.disks {
		rel := ""
		if prefixes != nil {
			if r, errno := relOf(d.node); errno == 0 {
				rel = r
			}
		}
		if h.matches(rel) {
			d.gate.hold()
			h.disks = append(h.disks, d)
		}
	}
	m.mu.holds[h] = struct{}{}
	disks := h.disks
	m.mu.Unlock()

	var once sync.Once
	release := func() {
		once.Do(func() {
			m.mu.Lock()
			delete(m.mu.holds, h)
			ds := h.disks
			h.disks = nil
			m.mu.Unlock()
			for _, d := range ds {
				d.gate.unhold()
			}
		})
	}
	// Disks opened from here on are held by addDisk; they have no change
	// in flight.
	for _, d := range disks {
		if err := d.gate.drain(ctx); err != nil {
			release()
			return nil, fmt.Errorf("quiesce: waiting for the changes in flight: %w", err)
		}
	}
	return release, nil
}

// holdNewDiskLocked closes the gate of d, a disk at rel just opened, for
// every hold that covers it. m.mu is held.
func (m *mount) holdNewDiskLocked(d *disk, rel string) {
	for h := range m.mu.holds {
		if h.matches(rel) {
			d.gate.hold()
			h.disks = append(h.disks, d)
		}
	}
}

// gate counts the changes of one disk in flight and holds new ones while a
// quiesce covers the disk.
//
// A change calls enter before it takes the block lock and leave when it
// has replied. Without a hold that is two atomic additions and a load on
// the disk's own counter. A hold raises holds and then waits for inflight
// to reach zero; a change raises inflight and then checks holds. Both are
// sequentially consistent atomics, so at least one of the two sees the
// other: either the change waits, or the hold waits for the change.
type gate struct {
	inflight atomic.Int64
	holds    atomic.Int32

	mu struct {
		sync.Mutex
		// opened is closed when holds drops back to zero; nil while
		// holds is zero. holds changes only with mu held.
		opened chan struct{}
		// drained is closed when inflight reaches zero while holds is
		// not; made by drain, nil when nobody waits.
		drained chan struct{}
	}
}

// enter counts a change in flight, waiting first while the disk is held.
// It fails only when ctx ends during the wait.
func (g *gate) enter(ctx context.Context) error {
	g.inflight.Add(1)
	if g.holds.Load() == 0 {
		return nil
	}
	g.leave()
	for {
		g.mu.Lock()
		if g.holds.Load() == 0 {
			g.inflight.Add(1)
			g.mu.Unlock()
			return nil
		}
		opened := g.mu.opened
		g.mu.Unlock()
		select {
		case <-opened:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// leave ends a change counted by enter.
func (g *gate) leave() {
	if g.inflight.Add(-1) == 0 && g.holds.Load() != 0 {
		g.mu.Lock()
		if g.mu.drained != nil {
			close(g.mu.drained)
			g.mu.drained = nil
		}
		g.mu.Unlock()
	}
}

// hold makes new changes wait until unhold.
func (g *gate) hold() {
	g.mu.Lock()
	if g.holds.Add(1) == 1 {
		g.mu.opened = make(chan struct{})
	}
	g.mu.Unlock()
}

// unhold ends a hold; the waiting changes go on when none is left.
func (g *gate) unhold() {
	g.mu.Lock()
	if g.holds.Add(-1) == 0 {
		close(g.mu.opened)
		g.mu.opened = nil
	}
	g.mu.Unlock()
}

// drain waits, with the gate held, until no change is in flight, or ctx
// ends.
func (g *gate) drain(ctx context.Context) error {
	for {
		g.mu.Lock()
		if g.inflight.Load() == 0 {
			g.mu.Unlock()
			return nil
		}
		if g.mu.drained == nil {
			g.mu.drained = make(chan struct{})
		}
		drained := g.mu.drained
		g.mu.Unlock()
		select {
		case <-drained:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
