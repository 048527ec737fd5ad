package storetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// VM is an in-memory model of one VM's recovery points: the reference a
// store's contents are compared with. It is not safe for concurrent use.
type VM struct {
	Name   string
	Source string
	Points []Point // committed points the store should hold, oldest first

	// BlockSize is the block size of the streams New builds; 4096 if 0.
	BlockSize int
}

// Point is the model of one recovery point.
type Point struct {
	Gen    uint64
	Frozen time.Time
	Kind   target.PointKind
	Disks  map[string][]byte // disk name → contents at the point
	Bytes  int64             // uncompressed data bytes of the generation
	AppCon bool
}

// Newest returns the newest committed point, or nil.
func (m *VM) Newest() *Point {
	if len(m.Points) == 0 {
		return nil
	}
	return &m.Points[len(m.Points)-1]
}

// Find returns the point of generation gen, or nil.
func (m *VM) Find(gen uint64) *Point {
	for i := range m.Points {
		if m.Points[i].Gen == gen {
			return &m.Points[i]
		}
	}
	return nil
}

// Gen is one generation of a model VM being built on its newest point:
// change disks with its methods, then Build the streams, Stage and Commit.
type Gen struct {
	vm     *VM
	Gen    uint64
	Base   uint64 // newest committed generation, 0 for none
	Frozen time.Time
	Kind   target.PointKind
	AppCon bool

	disks   map[string][]byte  // contents after the generation
	changes map[string]*change // disks with a stream
	Streams map[string][]byte  // built by Build: disk → frame stream
	order   []string           // disks with streams, sorted
	built   bool
	bytes   int64
}

// change is what a generation does to one disk, in stream terms: resize to
// size, then write blocks (the data of the disk after the generation) or
// zero them.
type change struct {
	size   int64
	low    int64           // the smallest size the disk had in the generation
	fresh  bool            // applies to an empty disk (stream base 0)
	blocks map[uint64]bool // block → data (true) or zeros (false)
}

// Next starts generation gen on top of the newest point (or of nothing). Its
// Frozen time is the newest point's plus an hour (or 2020-01-01 for the first).
func (m *VM) Next(gen uint64) *Gen {
	g := &Gen{
		vm:      m,
		Gen:     gen,
		Kind:    target.KindGeneration,
		disks:   map[string][]byte{},
		changes: map[string]*change{},
	}
	g.Frozen = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if p := m.Newest(); p != nil {
		g.Base = p.Gen
		g.Frozen = p.Frozen.Add(time.Hour)
		for d, b := range p.Disks {
			g.disks[d] = b // copied on first change
		}
	} else {
		g.Kind = target.KindInitial
	}
	return g
}

func (m *VM) blockSize() int {
	if m.BlockSize == 0 {
		return 4096
	}
	return m.BlockSize
}

// Disks returns the names of the disks at the cut, sorted.
func (g *Gen) Disks() []string { return slices.Sorted(maps.Keys(g.disks)) }

// Contents returns a disk's contents after the generation (nil if absent).
func (g *Gen) Contents(disk string) []byte { return g.disks[disk] }

func (g *Gen) mut(disk string) *change {
	if g.built {
		panic("storetest: Gen changed after Build")
	}
	c := g.changes[disk]
	if c == nil {
		old, ok := g.disks[disk]
		if !ok {
			panic(fmt.Sprintf("storetest: disk %q is not in the VM", disk))
		}
		c = &change{size: int64(len(old)), low: int64(len(old)), blocks: map[uint64]bool{}}
		g.changes[disk] = c
		g.disks[disk] = bytes.Clone(old)
	}
	return c
}

// Add adds a new disk of size bytes (all zeros). Its stream starts from an
// empty disk (base 0), except for a disk the base point holds (removed and
// added again in this generation): that stream applies on the base point
// and zeroes every block it does not write, as the shipper sends it.
func (g *Gen) Add(disk string, size int64) {
	if _, ok := g.disks[disk]; ok {
		panic(fmt.Sprintf("storetest: disk %q already in the VM", disk))
	}
	g.disks[disk] = make([]byte, size)
	c := &change{size: size, fresh: true, blocks: map[uint64]bool{}}
	if p := g.vm.Newest(); p != nil {
		if _, held := p.Disks[disk]; held {
			c.fresh = false // low 0: every block is sent
		}
	}
	g.changes[disk] = c
}

// Remove drops a disk from the VM at this cut.
func (g *Gen) Remove(disk string) {
	delete(g.disks, disk)
	delete(g.changes, disk)
}

// Touch makes disk part of the generation's streams without changing it.
func (g *Gen) Touch(disk string) { g.mut(disk) }

// Resize sets the disk's size. Shrinking drops the blocks written past the
// new end in this generation; growing adds zeros (which the stream carries
// as zero extents where the disk shrank before in the generation).
func (g *Gen) Resize(disk string, size int64) {
	c := g.mut(disk)
	d := g.disks[disk]
	if size < int64(len(d)) {
		d = d[:size]
	} else {
		d = append(d, make([]byte, size-int64(len(d)))...)
	}
	g.disks[disk] = d
	c.size = size
	c.low = min(c.low, size)
	bs := uint64(g.vm.blockSize())
	for b := range c.blocks {
		if int64(b*bs) >= size {
			delete(c.blocks, b)
		}
	}
}

// Write sets block of disk to data (a whole block; cut at the disk's end).
// An all-zero data block is sent as data, not as a zero extent.
func (g *Gen) Write(disk string, block uint64, data []byte) {
	c := g.mut(disk)
	bs := g.vm.blockSize()
	if len(data) != bs {
		panic(fmt.Sprintf("storetest: Write of %d bytes, block size %d", len(data), bs))
	}
	off := int64(block) * int64(bs)
	d := g.disks[disk]
	if off >= int64(len(d)) {
		panic(fmt.Sprintf("storetest: Write at block %d past the end of %q (%d bytes)", block, disk, len(d)))
	}
	copy(d[off:], data)
	c.blocks[block] = true
}

// Zero zeroes count blocks of disk from block on (cut at the disk's end).
func (g *Gen) Zero(disk string, block, count uint64) {
	c := g.mut(disk)
	bs := uint64(g.vm.blockSize())
	d := g.disks[disk]
	for b := block; b < block+count && int64(b*bs) < int64(len(d)); b++ {
		off := int64(b * bs)
		clear(d[off:min(off+int64(bs), int64(len(d)))])
		c.blocks[b] = false
	}
}

// Build encodes the streams of the changed disks. Frozen and Kind may be
// changed before it.
func (g *Gen) Build() error {
	g.Streams = map[string][]byte{}
	g.order = slices.Sorted(maps.Keys(g.changes))
	g.bytes = 0
	for _, disk := range g.order {
		c := g.changes[disk]
		base := g.Base
		if c.fresh {
			base = 0
		}
		// Blocks of the stream: what was written or zeroed, and every
		// block past the smallest size the disk had (whatever the base
		// point had there is gone), a partial one as data.
		bs := int64(g.vm.blockSize())
		contents := g.disks[disk]
		blocks := map[uint64][]byte{}
		block := func(b uint64) []byte { return contents[int64(b)*bs : min(int64(b+1)*bs, c.size)] }
		for b, data := range c.blocks {
			if data {
				blocks[b] = block(b)
			} else {
				blocks[b] = nil
			}
		}
		if !c.fresh {
			for b := uint64(c.low / bs); int64(b)*bs < c.size; b++ {
				if _, ok := blocks[b]; ok {
					continue
				}
				if int64(b)*bs < c.low {
					blocks[b] = block(b)
				} else {
					blocks[b] = nil
				}
			}
		}
		var buf bytes.Buffer
		n, err := EncodeStream(&buf, frame.Header{
			Kind:       frame.StreamGeneration,
			VM:         g.vm.Name,
			Disk:       disk,
			Generation: g.Gen,
			Base:       base,
			BlockSize:  g.vm.blockSize(),
			DiskSize:   uint64(c.size),
			Created:    g.Frozen,
		}, blocks)
		if err != nil {
			return fmt.Errorf("disk %q: %w", disk, err)
		}
		g.bytes += n
		g.Streams[disk] = buf.Bytes()
	}
	g.built = true
	return nil
}

// StagedDisks returns the disks that have a stream, sorted.
func (g *Gen) StagedDisks() []string { return g.order }

// DataBytes is the uncompressed data the streams carry.
func (g *Gen) DataBytes() int64 { return g.bytes }

// Commit returns the target.Commit for the generation.
func (g *Gen) Commit() target.Commit {
	return target.Commit{
		Source:        g.vm.Source,
		Frozen:        g.Frozen,
		Kind:          g.Kind,
		Disks:         g.Disks(),
		AppConsistent: g.AppCon,
	}
}

// Stage stages every stream of g. Build must have been called.
func (g *Gen) Stage(ctx context.Context, st target.Store) error {
	for _, disk := range g.order {
		if err := st.Stage(ctx, g.vm.Name, g.Gen, disk, bytes.NewReader(g.Streams[disk])); err != nil {
			return fmt.Errorf("stage %s/%s gen %d: %w", g.vm.Name, disk, g.Gen, err)
		}
	}
	return nil
}

// Committed records g as the model's newest point.
func (g *Gen) Committed() {
	disks := make(map[string][]byte, len(g.disks))
	maps.Copy(disks, g.disks)
	g.vm.Points = append(g.vm.Points, Point{
		Gen: g.Gen, Frozen: g.Frozen, Kind: g.Kind, Disks: disks, Bytes: g.bytes, AppCon: g.AppCon,
	})
}

// Apply builds, stages and commits g, then records it in the model.
func (g *Gen) Apply(ctx context.Context, st target.Store) error {
	if !g.built {
		if err := g.Build(); err != nil {
			return err
		}
	}
	if err := g.Stage(ctx, st); err != nil {
		return err
	}
	if err := st.Commit(ctx, g.vm.Name, g.Gen, g.Commit()); err != nil {
		return fmt.Errorf("commit %s gen %d: %w", g.vm.Name, g.Gen, err)
	}
	g.Committed()
	return nil
}

// EncodeStream writes a frame stream of h with blocks (block → data, nil
// for a zero block; data is cut to the block's length at the disk's end)
// to w and returns the uncompressed data bytes.
func EncodeStream(w io.Writer, h frame.Header, blocks map[uint64][]byte) (int64, error) {
	fw, err := frame.NewWriter(w, h)
	if err != nil {
		return 0, err
	}
	bs := uint64(h.BlockSize)
	var n int64
	for _, b := range slices.Sorted(maps.Keys(blocks)) {
		data := blocks[b]
		if data == nil {
			err = fw.Zero(b, 1)
		} else {
			if rest := h.DiskSize - b*bs; uint64(len(data)) > rest {
				data = data[:rest]
			}
			n += int64(len(data))
			err = fw.Data(b, data)
		}
		if err != nil {
			return 0, err
		}
	}
	return n, fw.Close()
}

// RandomOptions shape RandomGen.
type RandomOptions struct {
	Changes   int   // block changes per changed disk; 16 if 0
	MaxGrow   int64 // largest growth in bytes; 0: no size changes
	MinSize   int64 // sizes never shrink below this
	Unchanged float64
}

// RandomGen changes a random subset of the disks of g: random data blocks
// (incompressible, compressible, all zero), zero extents and, with
// o.MaxGrow, size changes that grow or shrink by a non-multiple of the
// block size.
func (g *Gen) RandomGen(rng *rand.Rand, o RandomOptions) {
	if o.Changes == 0 {
		o.Changes = 16
	}
	bs := g.vm.blockSize()
	for _, disk := range g.Disks() {
		if rng.Float64() < o.Unchanged {
			continue
		}
		if o.MaxGrow > 0 && rng.IntN(3) == 0 {
			size := int64(len(g.disks[disk])) + rng.Int64N(2*o.MaxGrow+1) - o.MaxGrow
			g.Resize(disk, max(size, o.MinSize))
		}
		size := int64(len(g.disks[disk]))
		nblocks := uint64((size + int64(bs) - 1) / int64(bs))
		if nblocks == 0 {
			g.Touch(disk)
			continue
		}
		for range o.Changes {
			b := rng.Uint64N(nblocks)
			switch rng.IntN(8) {
			case 0:
				g.Zero(disk, b, 1+rng.Uint64N(8))
			case 1:
				g.Write(disk, b, make([]byte, bs))
			default:
				g.Write(disk, b, RandomBlock(rng, bs))
			}
		}
	}
}

// RandomBlock returns a block of random bytes, half of the time
// compressible (short repeated runs).
func RandomBlock(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	if rng.IntN(2) == 0 {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for i := 0; i < n; {
		run := 1 + rng.IntN(64)
		c := byte(rng.Uint32())
		for j := 0; j < run && i < n; j++ {
			b[i] = c
			i++
		}
	}
	return b
}

// CheckPoints verifies that st lists exactly the model's points of vm
// (generation, times, kind, disks and sizes, bytes) and that every disk of
// every point reads back byte for byte.
func (m *VM) CheckPoints(t testing.TB, st target.Store) {
	t.Helper()
	ctx := context.Background()
	pts, err := st.Points(ctx, m.Name)
	if err != nil {
		t.Fatalf("Points(%q): %v", m.Name, err)
	}
	if len(pts) != len(m.Points) {
		t.Fatalf("Points(%q): %d points %v, want %d %v", m.Name, len(pts), gens(pts), len(m.Points), m.gens())
	}
	for i, p := range pts {
		want := m.Points[i]
		if err := comparePoint(m.Name, p, want); err != nil {
			t.Fatalf("Points(%q)[%d]: %v", m.Name, i, err)
		}
		for _, disk := range slices.Sorted(maps.Keys(want.Disks)) {
			if err := CheckDisk(st, m.Name, want.Gen, disk, want.Disks[disk]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (m *VM) gens() []uint64 {
	var g []uint64
	for _, p := range m.Points {
		g = append(g, p.Gen)
	}
	return g
}

func gens(pts []target.Point) []uint64 {
	var g []uint64
	for _, p := range pts {
		g = append(g, p.Generation)
	}
	return g
}

func comparePoint(vm string, p target.Point, want Point) error {
	switch {
	case p.VM != vm:
		return fmt.Errorf("VM %q, want %q", p.VM, vm)
	case p.Generation != want.Gen:
		return fmt.Errorf("generation %d, want %d", p.Generation, want.Gen)
	case !p.Frozen.Equal(want.Frozen):
		return fmt.Errorf("gen %d: frozen %v, want %v", p.Generation, p.Frozen, want.Frozen)
	case p.Applied.IsZero():
		return fmt.Errorf("gen %d: applied time not set", p.Generation)
	case p.Kind != want.Kind:
		return fmt.Errorf("gen %d: kind %q, want %q", p.Generation, p.Kind, want.Kind)
	case p.AppConsistent != want.AppCon:
		return fmt.Errorf("gen %d: app-consistent %v, want %v", p.Generation, p.AppConsistent, want.AppCon)
	case p.Bytes != want.Bytes:
		return fmt.Errorf("gen %d: bytes %d, want %d", p.Generation, p.Bytes, want.Bytes)
	}
	got := map[string]int64{}
	for _, d := range p.Disks {
		if _, dup := got[d.Name]; dup {
			return fmt.Errorf("gen %d: disk %q listed twice", p.Generation, d.Name)
		}
		got[d.Name] = d.Size
	}
	wantSizes := map[string]int64{}
	for d, b := range want.Disks {
		wantSizes[d] = int64(len(b))
	}
	if !maps.Equal(got, wantSizes) {
		return fmt.Errorf("gen %d: disks %v, want %v", p.Generation, got, wantSizes)
	}
	return nil
}

// CheckDisk opens disk of vm at point gen and compares it with want: size,
// whole reads in odd-sized chunks, reads across the end, and extents
// (sorted, disjoint, inside the disk, and every byte outside them zero).
func CheckDisk(st target.Store, vm string, gen uint64, disk string, want []byte) error {
	r, err := st.Open(context.Background(), vm, gen, disk)
	if err != nil {
		return fmt.Errorf("Open(%s, %d, %s): %w", vm, gen, disk, err)
	}
	err = checkReader(r, fmt.Sprintf("%s gen %d disk %s", vm, gen, disk), want)
	if cerr := r.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("%s gen %d disk %s: Close: %w", vm, gen, disk, cerr)
	}
	return err
}

// checkReader compares r with want.
func checkReader(r target.DiskReader, where string, want []byte) error {
	size := int64(len(want))
	if r.Size() != size {
		return fmt.Errorf("%s: size %d, want %d", where, r.Size(), size)
	}
	// Whole disk in chunks that straddle block boundaries.
	buf := make([]byte, 12345)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n, err := r.ReadAt(buf, off)
		end := min(off+int64(len(buf)), size)
		if int64(n) != end-off {
			return fmt.Errorf("%s: ReadAt(%d, %d) = %d, %v; want %d", where, len(buf), off, n, err, end-off)
		}
		if err != nil && (err != io.EOF || end != size) {
			return fmt.Errorf("%s: ReadAt(%d, %d): %v", where, len(buf), off, err)
		}
		if !bytes.Equal(buf[:n], want[off:end]) {
			i := firstDiff(buf[:n], want[off:end])
			return fmt.Errorf("%s: byte %d is %#x, want %#x", where, off+int64(i), buf[i], want[off+int64(i)])
		}
	}
	// Past the end.
	if n, err := r.ReadAt(buf[:10], size); n != 0 || err != io.EOF {
		return fmt.Errorf("%s: ReadAt at the end = %d, %v; want 0, EOF", where, n, err)
	}
	if size > 3 {
		n, err := r.ReadAt(buf[:10], size-3)
		if n != 3 || err != io.EOF || !bytes.Equal(buf[:3], want[size-3:]) {
			return fmt.Errorf("%s: ReadAt across the end = %d, %v; want 3, EOF", where, n, err)
		}
	}
	exts, err := r.Extents()
	if err != nil {
		return fmt.Errorf("%s: Extents: %w", where, err)
	}
	var end int64
	for i, e := range exts {
		if e.Len <= 0 || e.Off < end || e.Off+e.Len > size {
			return fmt.Errorf("%s: extent %d %+v: empty, overlapping, unsorted or past the size %d", where, i, e, size)
		}
		if i := slices.IndexFunc(want[end:e.Off], func(b byte) bool { return b != 0 }); i >= 0 {
			return fmt.Errorf("%s: byte %d is %#x but outside the extents", where, end+int64(i), want[end+int64(i)])
		}
		end = e.Off + e.Len
	}
	if i := slices.IndexFunc(want[end:], func(b byte) bool { return b != 0 }); i >= 0 {
		return fmt.Errorf("%s: byte %d is %#x but after the last extent", where, end+int64(i), want[end+int64(i)])
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
