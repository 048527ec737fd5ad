package resync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/target"
)

// Defaults of Options.
var (
	// DefaultChunks: 1 MiB chunks first, then 64 KiB ones inside those
	// that differ, then 4 KiB ones (the change log's default block size)
	// inside those. docs/resync.md gives the figures behind the choice.
	DefaultChunks = []int64{1 << 20, 64 << 10, 4 << 10}
	// DefaultWindow is how much of the disk one round compares.
	DefaultWindow int64 = 256 << 20
)

// Options shape a Diff.
type Options struct {
	// Chunks are the chunk sizes of the levels of comparison, coarsest
	// first: each a power of two from target.MinChunk to target.MaxChunk,
	// smaller than the one before. The first level compares every chunk;
	// each next one only the chunks inside those of the level above that
	// differ. The finest is the granularity of the ranges found: make it
	// the change log's block size. DefaultChunks if nil.
	Chunks []int64
	// Window is how much of the disk one round compares, rounded up to a
	// multiple of the coarsest chunk: the unit of progress and of the
	// cursor, and the most one checksum request covers. DefaultWindow if 0.
	Window int64
	// Only, if not nil, limits the comparison to these byte ranges of the
	// source (in order, not overlapping), each rounded out to the coarsest
	// chunk: after a crash of the host, the extents the activity log
	// names hot. The rest of the disk is taken as equal; the sizes are
	// still compared. A cursor must be resumed with the same Only.
	Only []target.Extent
	// Resume continues the comparison a cursor recorded (see Cursor). A
	// cursor of another point, source size or chunk sizes is not used:
	// the comparison starts over and Result.Restarted says why.
	Resume *Cursor
	// Progress, if set, is called after each window. It runs on Diff's
	// goroutine: Diff waits for it.
	Progress func(Progress)
	// Clock is the clock of the durations; the system clock if nil.
	Clock clock.Clock
}

// Progress is the state of a Diff after a window.
type Progress struct {
	Offset int64 // bytes of the source compared, from its start
	Size   int64 // the source's size
	Chunks int64 // chunks compared so far, every level
	// Differing is the number of finest chunks found different so far, and
	// SendBytes the bytes of the ranges they make.
	Differing int64
	SendBytes int64
	Elapsed   time.Duration // of this run
	// ETA is the time left at this run's pace so far.
	ETA time.Duration
	// Cursor is the state to persist to resume from here. It shares its
	// Ranges with Diff: marshal it during the call, do not keep or change it.
	Cursor *Cursor
}

// Result is what a Diff found.
type Result struct {
	VM, Disk   string
	Gen        uint64 // the point compared
	Size       int64  // the source's size
	TargetSize int64  // the disk's size at the point
	// Ranges are the byte ranges of the source that differ from the
	// point, in order and merged: whole finest chunks, the last one cut at
	// Size. Past TargetSize the point reads as zeros, so a source that
	// grew differs where the growth holds data.
	Ranges []target.Extent
	Counts
	// StoreSums: the store computed its sums (target.Checksummer); else
	// Diff read the point through Open and TargetRead says how much.
	StoreSums bool
	// ResumedAt is where this run started (Options.Resume's offset, or 0),
	// and Restarted why a cursor in Options.Resume was not used ("" if it
	// was, or if there was none).
	ResumedAt int64
	Restarted string
	Duration  time.Duration // of this run
	// Cursor is the state at the end: whole when Diff succeeds, the part
	// compared when it fails (persist it and resume).
	Cursor Cursor
}

// Counts are the costs of a comparison. A resumed comparison counts its
// earlier runs too, except the work of a window that was cut.
type Counts struct {
	Levels []Level // one per chunk size, coarsest first
	// SumBytesUp are the bytes of the checksum requests (16 per range),
	// SumBytesDown those of the sums answered (1 per zero sum, 17 per
	// other sum): what crosses the wire to a remote store that has the
	// capability, in docs/remote-protocol.md's encoding.
	SumBytesUp   int64
	SumBytesDown int64
	Requests     int64 // checksum requests to a store that has the capability: round trips
	SourceRead   int64 // bytes read from the source; holes are not read
	TargetRead   int64 // bytes of the point read through Open (without target.Checksummer)
}

// Level counts the chunks of one size.
type Level struct {
	Chunk     int64
	Compared  int64 // chunks compared
	Differing int64 // chunks found different
}

// Compared is the number of chunks compared, every level.
func (c *Counts) Compared() int64 {
	var n int64
	for _, l := range c.Levels {
		n += l.Compared
	}
	return n
}

// Differing is the number of finest chunks found different.
func (c *Counts) Differing() int64 {
	if len(c.Levels) == 0 {
		return 0
	}
	return c.Levels[len(c.Levels)-1].Differing
}

func (c *Counts) add(o Counts) {
	for i := range c.Levels {
		c.Levels[i].Compared += o.Levels[i].Compared
		c.Levels[i].Differing += o.Levels[i].Differing
	}
	c.SumBytesUp += o.SumBytesUp
	c.SumBytesDown += o.SumBytesDown
	c.Requests += o.Requests
	c.SourceRead += o.SourceRead
	c.TargetRead += o.TargetRead
}

func (c Counts) clone() Counts {
	c.Levels = slices.Clone(c.Levels)
	return c
}

// SendBytes is the number of bytes in the ranges: what a copy of them sends.
func (r *Result) SendBytes() int64 { return rangeBytes(r.Ranges) }

// InSync reports whether the point equals the source: no range differs
// and the sizes agree.
func (r *Result) InSync() bool { return len(r.Ranges) == 0 && r.Size == r.TargetSize }

// ErrDiverged is the error of a Verify that found differences.
var ErrDiverged = errors.New("replica differs from the source")

// Diff compares the source disk read by src (size bytes) with disk of vm at
// recovery point gen of store, chunk by chunk, and returns the byte ranges
// of the source that differ. It reads the whole source, once; the store
// computes its sums where the replica lives when it is a
// target.Checksummer (only sums cross the network), otherwise Diff reads
// the point through Open. Holes cost no reads on either side: on the
// source when src is an *os.File (SEEK_DATA) or has an Extents method
// like target.DiskReader's, on the store by its own means.
//
// Diff changes nothing. To repair the replica, ship the ranges from the
// same file (shipper.ShipCopyDisks), riding on the next generation while
// point gen is still the store's newest; to check a replica, see Verify.
//
// The source may be written to while Diff reads it (the VM runs): a block
// written after Diff compared it is in the change log, which the shipper
// sends after, or with, the ranges. That holds only if every write since
// the comparison began is in the log: start Diff once the disk's tracking
// is sound again, and compare again if it is lost again.
//
// A Diff cut by ctx or an error returns that error with Result.Cursor
// holding what was compared; Options.Resume continues from it.
func Diff(ctx context.Context, src io.ReaderAt, size int64, store target.Store, vm string, gen uint64, disk string, opts Options) (Result, error) {
	o, err := opts.normalize()
	if err != nil {
		return Result{}, err
	}
	if size < 0 {
		return Result{}, fmt.Errorf("resync: negative source size %d", size)
	}
	start := o.Clock.Now()
	res := Result{VM: vm, Disk: disk, Gen: gen, Size: size}
	res.TargetSize, err = pointSize(ctx, store, vm, gen, disk)
	if err != nil {
		return res, err
	}
	cur := Cursor{VM: vm, Disk: disk, Gen: gen, Size: size, Chunks: slices.Clone(o.Chunks)}
	cur.Counts.Levels = make([]Level, len(o.Chunks))
	for i, c := range o.Chunks {
		cur.Counts.Levels[i].Chunk = c
	}
	if r := o.Resume; r != nil {
		if why := r.mismatch(vm, gen, disk, size, o.Chunks); why != "" {
			res.Restarted = why
		} else {
			cur = r.clone()
			res.ResumedAt = cur.Offset
		}
	}
	var sm summer
	done := func(err error) (Result, error) {
		if sm != nil {
			res.StoreSums = sm.storeSums()
		}
		res.Ranges = slices.Clone(cur.Ranges)
		res.Counts = cur.Counts.clone()
		res.Cursor = cur
		res.Duration = o.Clock.Now().Sub(start)
		return res, err
	}

	sm, err = newSummer(ctx, store, vm, gen, disk, o.Chunks)
	if err != nil {
		return done(err)
	}
	defer sm.close()
	source := newSource(src, size)
	send := rangeBytes(cur.Ranges)
	total := onlyBytes(o.Only, o.Chunks[0], 0, size)
	for cur.Offset < size {
		end := min(cur.Offset+o.Window, size)
		if o.Only != nil {
			var ok bool
			if cur.Offset, end, ok = nextOnly(o.Only, o.Chunks[0], cur.Offset, o.Window, size); !ok {
				cur.Offset = size
				break
			}
		}
		w, err := compareWindow(ctx, source, sm, o.Chunks, cur.Offset, end)
		if err != nil {
			return done(err)
		}
		cur.Ranges = appendRanges(cur.Ranges, w.ranges)
		send += rangeBytes(w.ranges)
		cur.Counts.add(w.counts)
		cur.Offset = end
		if o.Progress != nil {
			p := Progress{
				Offset:    cur.Offset,
				Size:      size,
				Chunks:    cur.Counts.Compared(),
				Differing: cur.Counts.Differing(),
				SendBytes: send,
				Elapsed:   o.Clock.Now().Sub(start),
				Cursor:    &cur,
			}
			if did := onlyBytes(o.Only, o.Chunks[0], res.ResumedAt, cur.Offset); did > 0 {
				left := onlyBytes(o.Only, o.Chunks[0], cur.Offset, size)
				p.ETA = time.Duration(float64(p.Elapsed) * float64(left) / float64(did))
			}
			o.Progress(p)
		}
	}
	if o.Only != nil && o.Progress != nil && total == 0 {
		o.Progress(Progress{Offset: size, Size: size, Elapsed: o.Clock.Now().Sub(start), Cursor: &cur})
	}
	return done(nil)
}

// nextOnly returns the window to compare next under only (its ranges
// rounded out to chunk): from off, or the start of the next range if
// later, to at most window bytes on and the end of that range; false when
// only holds nothing more before size.
func nextOnly(only []target.Extent, chunk, off, window, size int64) (int64, int64, bool) {
	for _, r := range only {
		lo, hi := r.Off/chunk*chunk, min(roundUp(r.Off+r.Len, chunk), size)
		if hi <= off {
			continue
		}
		if lo >= size {
			break
		}
		start := max(off, lo)
		return start, min(start+window, hi), true
	}
	return 0, 0, false
}

// onlyBytes is how many bytes of [from, to) a comparison under only covers
// (all of them when only is nil).
func onlyBytes(only []target.Extent, chunk, from, to int64) int64 {
	if only == nil {
		return max(to-from, 0)
	}
	var n int64
	for _, r := range only {
		lo, hi := max(r.Off/chunk*chunk, from), min(roundUp(r.Off+r.Len, chunk), to)
		if hi > lo {
			n += hi - lo
		}
	}
	return n
}

// Verify is Diff run to check a replica rather than to repair it (the
// design's invariant 6: a verify run reports divergence and changes
// nothing). It returns an error wrapping ErrDiverged, with the Result,
// when the point differs from the source.
func Verify(ctx context.Context, src io.ReaderAt, size int64, store target.Store, vm string, gen uint64, disk string, opts Options) (Result, error) {
	res, err := Diff(ctx, src, size, store, vm, gen, disk, opts)
	if err == nil && !res.InSync() {
		err = fmt.Errorf("resync: %s/%s point %d: %w: %d ranges, %d bytes; sizes %d (source) and %d (replica)",
			vm, disk, gen, ErrDiverged, len(res.Ranges), res.SendBytes(), res.Size, res.TargetSize)
	}
	return res, err
}

func (o Options) normalize() (Options, error) {
	if o.Chunks == nil {
		o.Chunks = DefaultChunks
	}
	if len(o.Chunks) == 0 {
		return o, errors.New("resync: no chunk size")
	}
	for i, c := range o.Chunks {
		if err := chunksum.CheckRequest(c, nil); err != nil {
			return o, fmt.Errorf("resync: Options.Chunks: %w", err)
		}
		if i > 0 && c >= o.Chunks[i-1] {
			return o, fmt.Errorf("resync: Options.Chunks %v: each chunk size must be smaller than the one before", o.Chunks)
		}
	}
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.Window < 0 {
		return o, fmt.Errorf("resync: negative window %d", o.Window)
	}
	o.Window = roundUp(o.Window, o.Chunks[0])
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	return o, nil
}

// pointSize returns the size of disk at point gen, or ErrNotFound.
func pointSize(ctx context.Context, store target.Store, vm string, gen uint64, disk string) (int64, error) {
	pts, err := store.Points(ctx, vm)
	if err != nil {
		return 0, fmt.Errorf("resync: %w", err)
	}
	for _, p := range pts {
		if p.Generation != gen {
			continue
		}
		for _, d := range p.Disks {
			if d.Name == disk {
				return d.Size, nil
			}
		}
		return 0, fmt.Errorf("resync: %s point %d has no disk %s: %w", vm, gen, disk, target.ErrNotFound)
	}
	return 0, fmt.Errorf("resync: %s has no point %d: %w", vm, gen, target.ErrNotFound)
}

// window is what one window's comparison found.
type window struct {
	ranges []target.Extent
	counts Counts
}

// compareWindow compares [off, end) of the source. The chunks of every
// level cover the window whole, the last one reaching past end (and the
// source's size) with zeros.
func compareWindow(ctx context.Context, source *source, sm summer, chunks []int64, off, end int64) (w window, err error) {
	w.counts.Levels = make([]Level, len(chunks))
	for l, c := range chunks {
		w.counts.Levels[l].Chunk = c
	}
	span := roundUp(end-off, chunks[0])
	read0, calls0 := sm.read(), sm.calls()
	defer func() { w.counts.TargetRead, w.counts.Requests = sm.read()-read0, sm.calls()-calls0 }()

	// The store's first level and the source's every level at once.
	type answer struct {
		sums []target.Sum
		err  error
	}
	first := make(chan answer, 1)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := []target.Extent{{Off: off, Len: span}}
	go func() {
		s, err := sm.sums(rctx, chunks[0], req)
		first <- answer{s, err}
	}()
	src, read, err := source.levelSums(ctx, chunks, off, span)
	w.counts.SourceRead = read
	if err != nil {
		cancel()
		<-first
		return w, err
	}
	a := <-first
	if a.err != nil {
		return w, a.err
	}
	w.counts.SumBytesUp += requestBytes(req)
	w.counts.SumBytesDown += answerBytes(a.sums)

	// Chunk indexes (into src[l]) that differ at level l.
	var diff []int
	for i, s := range a.sums {
		if s != src[0][i] {
			diff = append(diff, i)
		}
	}
	w.counts.Levels[0] = Level{Chunk: chunks[0], Compared: int64(len(a.sums)), Differing: int64(len(diff))}
	for l := 1; l < len(chunks) && len(diff) > 0; l++ {
		k := int(chunks[l-1] / chunks[l]) // children per chunk above
		req := indexRanges(diff, off, chunks[l-1])
		sums, err := sm.sums(ctx, chunks[l], req)
		if err != nil {
			return w, err
		}
		w.counts.SumBytesUp += requestBytes(req)
		w.counts.SumBytesDown += answerBytes(sums)
		var next []int
		i := 0
		for _, p := range diff {
			for c := p * k; c < p*k+k; c++ {
				if sums[i] != src[l][c] {
					next = append(next, c)
				}
				i++
			}
		}
		w.counts.Levels[l] = Level{Chunk: chunks[l], Compared: int64(len(sums)), Differing: int64(len(next))}
		diff = next
	}
	fine := chunks[len(chunks)-1]
	for _, e := range indexRanges(diff, off, fine) {
		e.Len = min(e.Off+e.Len, end) - e.Off
		w.ranges = appendRanges(w.ranges, []target.Extent{e})
	}
	return w, nil
}

// indexRanges turns sorted chunk indexes of a window at off into byte
// ranges, runs of consecutive chunks merged.
func indexRanges(idx []int, off, chunk int64) []target.Extent {
	var out []target.Extent
	for _, i := range idx {
		o := off + int64(i)*chunk
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == o {
			out[n-1].Len += chunk
			continue
		}
		out = append(out, target.Extent{Off: o, Len: chunk})
	}
	return out
}

// appendRanges appends sorted ranges that start at or after the end of
// those in dst, merging the ones that touch.
func appendRanges(dst, add []target.Extent) []target.Extent {
	for _, e := range add {
		if e.Len <= 0 {
			continue
		}
		if n := len(dst); n > 0 && dst[n-1].Off+dst[n-1].Len == e.Off {
			dst[n-1].Len += e.Len
			continue
		}
		dst = append(dst, e)
	}
	return dst
}

func rangeBytes(rs []target.Extent) int64 {
	var n int64
	for _, e := range rs {
		n += e.Len
	}
	return n
}

// requestBytes and answerBytes are the sizes of a request and its answer
// on the wire (docs/remote-protocol.md).
func requestBytes(rs []target.Extent) int64 { return 16 * int64(len(rs)) }

func answerBytes(sums []target.Sum) int64 {
	var n int64
	for _, s := range sums {
		n++
		if s != target.ZeroSum {
			n += 16
		}
	}
	return n
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// source reads the source disk.
type source struct {
	r    io.ReaderAt
	size int64
	file *os.File        // set if r is one: holes by SEEK_DATA
	exts []target.Extent // from an Extents method, if r has one and file is nil
	err  error           // of that Extents call
}

func newSource(r io.ReaderAt, size int64) *source {
	s := &source{r: r, size: size}
	if f, ok := r.(*os.File); ok {
		s.file = f
	} else if e, ok := r.(interface {
		Extents() ([]target.Extent, error)
	}); ok {
		s.exts, s.err = e.Extents()
		if s.exts == nil && s.err == nil {
			s.exts = []target.Extent{}
		}
	}
	return s
}

// levelSums reads [off, off+span) of the source once and returns the sums
// of its chunks at every level, and the bytes read.
func (s *source) levelSums(ctx context.Context, chunks []int64, off, span int64) ([][]target.Sum, int64, error) {
	if s.err != nil {
		return nil, 0, fmt.Errorf("resync: source extents: %w", s.err)
	}
	exts := s.exts
	if s.file != nil {
		var err error
		if exts, err = fileExtents(s.file, off, min(off+span, s.size)); err != nil {
			return nil, 0, fmt.Errorf("resync: source: %w", err)
		}
	}
	return levelSums(ctx, s.r, s.size, exts, chunks, off, span)
}

// levelSums reads [off, off+span) of a disk read by r (size bytes, data
// only in exts, nil meaning anywhere) once, and returns the sums of its
// chunks at every level (off and span are multiples of chunks[0]), and the
// bytes read.
func levelSums(ctx context.Context, r io.ReaderAt, size int64, exts []target.Extent, chunks []int64, off, span int64) ([][]target.Sum, int64, error) {
	sums := make([][]target.Sum, len(chunks))
	for l, c := range chunks {
		sums[l] = make([]target.Sum, span/c) // ZeroSum until found otherwise
	}
	d := chunksum.NewReader(r, size, exts)
	bp, piece := chunksum.Buffer(chunks[0])
	defer chunksum.PutBuffer(bp)
	fine := len(chunks) - 1
	for p := off; p < off+span; p += piece {
		if err := ctx.Err(); err != nil {
			return nil, d.BytesRead(), err
		}
		b := (*bp)[:min(piece, off+span-p)]
		data, err := d.ReadAt(b, p)
		if err != nil {
			return nil, d.BytesRead(), err
		}
		if !data {
			continue
		}
		for l := fine; l >= 0; l-- {
			c := chunks[l]
			base := (p - off) / c
			for i := int64(0); i < int64(len(b))/c; i++ {
				chunk := b[i*c : (i+1)*c]
				if l == fine {
					sums[l][base+i] = chunksum.Of(chunk)
					continue
				}
				// A chunk is zero if its children are: no need to look again.
				k := c / chunks[l+1]
				if slices.ContainsFunc(sums[l+1][(base+i)*k:(base+i+1)*k], func(s target.Sum) bool { return s != target.ZeroSum }) {
					sums[l][base+i] = xxh3.Hash128(chunk).Bytes()
				}
			}
		}
	}
	return sums, d.BytesRead(), nil
}
