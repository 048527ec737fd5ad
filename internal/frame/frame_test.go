package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// op is one Writer call: Data(block, data) or, when data is nil, Zero(block, count).
type op struct {
	block, count uint64
	data         []byte
}

func testHeader(bs int, diskSize uint64) Header {
	return Header{
		Kind:       StreamGeneration,
		VM:         "vm-web-01",
		Disk:       "disk0.qcow2",
		Generation: 42,
		Base:       41,
		BlockSize:  bs,
		DiskSize:   diskSize,
		Created:    time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC),
	}
}

// encode writes ops to a stream and returns it with the Writer's stats.
func encode(t testing.TB, h Header, ops []op) ([]byte, Stats) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	writeOps(t, w, ops)
	return buf.Bytes(), w.Stats()
}

// writeOps makes the Writer calls of ops, then Close.
func writeOps(t testing.TB, w *Writer, ops []op) {
	t.Helper()
	for _, o := range ops {
		var err error
		if o.data != nil {
			err = w.Data(o.block, o.data)
		} else {
			err = w.Zero(o.block, o.count)
		}
		if err != nil {
			t.Fatalf("op at block %d: %v", o.block, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// decodeAll reads a whole stream, copying each record's data. It returns the
// records read before any error, and the error (nil after a verified trailer).
func decodeAll(r io.Reader, lim Limits) (*Reader, []Record, error) {
	fr, err := NewReader(r, lim)
	if err != nil {
		return nil, nil, err
	}
	var recs []Record
	for {
		rec, err := fr.Next()
		if err == io.EOF {
			return fr, recs, nil
		}
		if err != nil {
			return fr, recs, err
		}
		rec.Data = bytes.Clone(rec.Data)
		recs = append(recs, rec)
	}
}

// expected returns the records a Reader yields for ops: one per data block,
// adjacent zero extents merged.
func expected(h Header, ops []op) []Record {
	var recs []Record
	for _, o := range ops {
		if o.data == nil {
			if n := len(recs); n > 0 && recs[n-1].Kind == KindZero && recs[n-1].Block+recs[n-1].Count == o.block {
				recs[n-1].Count += o.count
				continue
			}
			recs = append(recs, Record{Kind: KindZero, Block: o.block, Count: o.count})
			continue
		}
		data := o.data
		for b := o.block; len(data) > 0; b++ {
			n := h.blockLen(b)
			recs = append(recs, Record{Kind: KindData, Block: b, Count: 1, Data: data[:n]})
			data = data[n:]
		}
	}
	return recs
}

func diffRecords(got, want []Record) error {
	for i := 0; i < max(len(got), len(want)); i++ {
		if i >= len(got) {
			return fmt.Errorf("record %d missing: want %v", i, describe(want[i]))
		}
		if i >= len(want) {
			return fmt.Errorf("record %d extra: %v", i, describe(got[i]))
		}
		g, w := got[i], want[i]
		if g.Kind != w.Kind || g.Block != w.Block || g.Count != w.Count || !bytes.Equal(g.Data, w.Data) {
			return fmt.Errorf("record %d: got %v, want %v", i, describe(g), describe(w))
		}
	}
	return nil
}

func describe(r Record) string {
	if r.Kind == KindZero {
		return fmt.Sprintf("zero %d+%d", r.Block, r.Count)
	}
	return fmt.Sprintf("%v %d+%d len=%d", r.Kind, r.Block, r.Count, len(r.Data))
}

var words = strings.Fields(`the quick brown fox jumps over lazy dog lorem ipsum dolor sit amet
	consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua
	INFO WARN ERROR request served in ms user id session GET POST /api/v1/items 200 404 500`)

// compressible fills n bytes with log-like text (LZ4 ratio about 2-3).
func compressible(rng *rand.Rand, n int) []byte {
	b := make([]byte, 0, n+16)
	for len(b) < n {
		if rng.IntN(8) == 0 {
			b = fmt.Appendf(b, "%d ", rng.Uint32())
		} else {
			b = append(b, words[rng.IntN(len(words))]...)
			b = append(b, ' ')
		}
	}
	return b[:n]
}

func random(rng *rand.Rand, n int) []byte {
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}

// content returns n bytes of a random flavour: random, compressible, zeros,
// or mostly zeros with a little data.
func content(rng *rand.Rand, n int) []byte {
	switch rng.IntN(4) {
	case 0:
		return random(rng, n)
	case 1:
		return compressible(rng, n)
	case 2:
		return make([]byte, n)
	}
	b := make([]byte, n)
	copy(b[rng.IntN(n):], random(rng, 7))
	return b
}

// randomOps returns a random valid op sequence for h.
func randomOps(rng *rand.Rand, h Header) []op {
	var ops []op
	nblocks := h.Blocks()
	for b := uint64(0); b < nblocks; {
		b += uint64(rng.IntN(4)) // a gap, often none
		if b >= nblocks {
			break
		}
		left := nblocks - b
		switch rng.IntN(3) {
		case 0:
			n := min(left, 1+uint64(rng.IntN(6)))
			ops = append(ops, op{block: b, count: n})
			b += n
		default:
			n := min(left, 1+uint64(rng.IntN(4)))
			size := 0
			for i := uint64(0); i < n; i++ {
				size += h.blockLen(b + i)
			}
			ops = append(ops, op{block: b, data: content(rng, size)})
			b += n
		}
	}
	return ops
}

// randomHeader returns a header with a random block size (biased to small)
// and a disk of up to 40 blocks, sometimes with a partial last block.
func randomHeader(rng *rand.Rand) Header {
	bs, blocks := MinBlockSize<<rng.IntN(5), 40
	if rng.IntN(10) == 0 {
		bs, blocks = MaxBlockSize, 4
	}
	size := uint64(rng.IntN(blocks)) * uint64(bs)
	if rng.IntN(2) == 0 {
		size += uint64(rng.IntN(bs))
	}
	h := testHeader(bs, size)
	if rng.IntN(2) == 0 {
		h.Kind, h.Base = StreamResync, 0
	}
	return h
}

var seedFlag = flag.Uint64("seed", 0, "seed for the randomized tests (0: from the clock)")

func TestRoundTrip(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	iters := 300
	if testing.Short() {
		iters = 50
	}
	for i := range iters {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		h := randomHeader(rng)
		ops := randomOps(rng, h)
		if err := roundTrip(t, h, ops); err != nil {
			t.Fatalf("-seed %d, iteration %d: block size %d, disk size %d, %d ops: %v", seed, i, h.BlockSize, h.DiskSize, len(ops), err)
		}
	}
}

func roundTrip(t *testing.T, h Header, ops []op) error {
	stream, wstats := encode(t, h, ops)
	if wstats.WireBytes != uint64(len(stream)) {
		return fmt.Errorf("writer counts %d wire bytes, wrote %d", wstats.WireBytes, len(stream))
	}
	want := expected(h, ops)
	inputs := map[string]func() io.Reader{
		"bytes":   func() io.Reader { return bytes.NewReader(stream) },
		"onebyte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(stream)) },
		"half":    func() io.Reader { return iotest.HalfReader(bytes.NewReader(stream)) },
		"dataerr": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(stream)) },
	}
	for name, in := range inputs {
		fr, got, err := decodeAll(in(), Limits{})
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if gh := fr.Header(); !headersEqual(gh, h) {
			return fmt.Errorf("%s: header %+v, want %+v", name, gh, h)
		}
		if err := diffRecords(got, want); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if rs := fr.Stats(); rs != wstats {
			return fmt.Errorf("%s: reader stats %+v, writer stats %+v", name, rs, wstats)
		}
	}
	return nil
}

func headersEqual(a, b Header) bool {
	ta, tb := a.Created, b.Created
	a.Created, b.Created = time.Time{}, time.Time{}
	return a == b && ta.Equal(tb)
}

// TestRoundTripShapes covers the edges the random test may miss.
func TestRoundTripShapes(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	bs := 4096
	cases := []struct {
		name string
		h    Header
		ops  []op
	}{
		{"empty disk", testHeader(bs, 0), nil},
		{"no records", testHeader(bs, 10*4096), nil},
		{"one random block", testHeader(bs, 4096), []op{{block: 0, data: random(rng, 4096)}}},
		{"partial last block", testHeader(bs, 3*4096+100), []op{{block: 1, data: random(rng, 2*4096+100)}}},
		{"tiny last block", testHeader(bs, 4096+3), []op{{block: 1, data: []byte{1, 2, 3}}}},
		{"tiny disk", testHeader(512, 1), []op{{block: 0, data: []byte{9}}}},
		{"whole disk zero", testHeader(bs, 1<<40), []op{{block: 0, count: 1 << 28}}},
		{"per-block calls run", testHeader(bs, 8*4096), []op{
			{block: 2, data: compressible(rng, 4096)}, {block: 3, data: compressible(rng, 4096)},
			{block: 4, data: random(rng, 4096)}, {block: 6, data: make([]byte, 4096)},
		}},
		{"zeros merge, data between", testHeader(bs, 20*4096), []op{
			{block: 0, count: 2}, {block: 2, count: 3}, {block: 5, data: random(rng, 4096)},
			{block: 6, count: 1}, {block: 8, count: 1}, {block: 9, count: 11},
		}},
		{"max block", testHeader(MaxBlockSize, 3*MaxBlockSize), []op{
			{block: 0, data: compressible(rng, MaxBlockSize)}, {block: 1, data: random(rng, MaxBlockSize)},
			{block: 2, count: 1},
		}},
		{"huge disk, far block", testHeader(MaxBlockSize, 1<<63), []op{{block: 1<<43 - 1, data: make([]byte, MaxBlockSize)}}},
		{"disk size max uint64", testHeader(MinBlockSize, 1<<64-1), []op{
			{block: 0, count: 1 << 40}, {block: (1<<64-1)/512 - 1, count: 1}, {block: (1<<64 - 1) / 512, data: make([]byte, 511)},
		}},
		{"resync", func() Header { h := testHeader(bs, 4096); h.Kind, h.Base, h.Generation = StreamResync, 0, 0; return h }(),
			[]op{{block: 0, data: random(rng, 4096)}}},
		{"no creation time", func() Header { h := testHeader(bs, 4096); h.Created = time.Time{}; return h }(), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := roundTrip(t, c.h, c.ops); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCompressionChoice(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	h := testHeader(4096, 3*4096)
	_, st := encode(t, h, []op{{block: 0, data: random(rng, 4096)}, {block: 1, data: compressible(rng, 4096)}, {block: 2, data: make([]byte, 4096)}})
	if st.Compressed != 2 {
		t.Errorf("compressed %d blocks, want 2 (the random one raw)", st.Compressed)
	}
	// Compressed blocks cost less than raw; raw ones cost the block plus 17 bytes.
	stream, _ := encode(t, h, []op{{block: 0, data: random(rng, 4096)}})
	if got, want := len(stream), headerLen(h)+17+4096+1+trailerLen; got != want {
		t.Errorf("stream of one raw block is %d bytes, want %d", got, want)
	}
}

// A raw Writer offers no block to LZ4, also not in a Data call large enough
// to be compressed in parallel, and its stream decodes to the same records.
func TestRawWriter(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	h := testHeader(4096, 64*4096)
	ops := []op{{block: 0, data: compressible(rng, 4096)}, {block: 2, count: 3}}
	big := make([]byte, 0, 32*4096)
	for range 32 {
		big = append(big, compressible(rng, 4096)...)
	}
	ops = append(ops, op{block: 8, data: big})

	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	w.SetRaw()
	writeOps(t, w, ops)
	if st := w.Stats(); st.Compressed != 0 || st.DataBlocks != 33 {
		t.Errorf("raw stream: %d of %d data blocks compressed, want 0 of 33", st.Compressed, st.DataBlocks)
	}
	_, recs, err := decodeAll(bytes.NewReader(buf.Bytes()), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := diffRecords(recs, expected(h, ops)); err != nil {
		t.Errorf("raw stream: %v", err)
	}
	if _, st := encode(t, h, ops); st.Compressed != 33 {
		t.Errorf("the same blocks compressed: %d, want 33", st.Compressed)
	}
}

func headerLen(h Header) int { return headerFixed + 2 + len(h.VM) + 2 + len(h.Disk) + 2 + 8 }

func TestWriterRejectsHeader(t *testing.T) {
	mod := func(f func(*Header)) Header { h := testHeader(4096, 1<<20); f(&h); return h }
	cases := map[string]Header{
		"kind 0":            mod(func(h *Header) { h.Kind = 0 }),
		"kind 3":            mod(func(h *Header) { h.Kind = 3 }),
		"empty VM":          mod(func(h *Header) { h.VM = "" }),
		"empty disk":        mod(func(h *Header) { h.Disk = "" }),
		"long VM":           mod(func(h *Header) { h.VM = strings.Repeat("v", MaxNameLen+1) }),
		"non-UTF-8 disk":    mod(func(h *Header) { h.Disk = "d\xff" }),
		"NUL in disk":       mod(func(h *Header) { h.Disk = "a\x00b" }),
		"base = gen":        mod(func(h *Header) { h.Base = h.Generation }),
		"base > gen":        mod(func(h *Header) { h.Base = h.Generation + 1 }),
		"block 0":           mod(func(h *Header) { h.BlockSize = 0 }),
		"block 256":         mod(func(h *Header) { h.BlockSize = 256 }),
		"block 4095":        mod(func(h *Header) { h.BlockSize = 4095 }),
		"block 2 MiB":       mod(func(h *Header) { h.BlockSize = 2 << 20 }),
		"block 3072":        mod(func(h *Header) { h.BlockSize = 3072 }),
		"created year 1":    mod(func(h *Header) { h.Created = time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC) }),
		"created year 3000": mod(func(h *Header) { h.Created = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }),
	}
	for name, h := range cases {
		if _, err := NewWriter(io.Discard, h); err == nil {
			t.Errorf("%s: NewWriter accepted %+v", name, h)
		}
	}
	long := mod(func(h *Header) { h.VM = strings.Repeat("v", MaxNameLen) })
	if _, err := NewWriter(io.Discard, long); err != nil {
		t.Errorf("name of MaxNameLen bytes: %v", err)
	}
}

func TestWriterRejectsRecords(t *testing.T) {
	bs := 4096
	h := testHeader(bs, 10*4096+100) // 11 blocks, the last of 100 bytes
	blk := make([]byte, bs)
	cases := map[string][]op{
		"data empty":            {{block: 0, data: []byte{}}},
		"data short":            {{block: 0, data: blk[:100]}},
		"data long":             {{block: 0, data: make([]byte, bs+1)}},
		"data past disk":        {{block: 11, data: blk}},
		"data last block full":  {{block: 10, data: blk}},
		"data run past disk":    {{block: 9, data: make([]byte, 2*bs)}},
		"data repeated":         {{block: 3, data: blk}, {block: 3, data: blk}},
		"data descending":       {{block: 3, data: blk}, {block: 2, data: blk}},
		"data inside run":       {{block: 3, data: make([]byte, 3*bs)}, {block: 4, data: blk}},
		"data inside zero":      {{block: 3, count: 4}, {block: 6, data: blk}},
		"data in pending zero":  {{block: 3, count: 4}, {block: 5, data: blk}},
		"zero count 0":          {{block: 3}},
		"zero past disk":        {{block: 11, count: 1}},
		"zero run past disk":    {{block: 5, count: 7}},
		"zero overflow":         {{block: 5, count: 1<<64 - 1}},
		"zero overlap zero":     {{block: 3, count: 4}, {block: 6, count: 1}},
		"zero overlap data":     {{block: 3, data: blk}, {block: 3, count: 1}},
		"zero before previous":  {{block: 5, count: 1}, {block: 4, count: 1}},
		"zero after data, back": {{block: 5, data: make([]byte, 2*bs)}, {block: 6, count: 2}},
	}
	for name, ops := range cases {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, h)
		if err != nil {
			t.Fatal(err)
		}
		for i, o := range ops {
			if o.data != nil {
				err = w.Data(o.block, o.data)
			} else {
				err = w.Zero(o.block, o.count)
			}
			if err != nil && i < len(ops)-1 {
				t.Fatalf("%s: op %d: %v", name, i, err)
			}
		}
		if err == nil {
			t.Errorf("%s: last op accepted", name)
			continue
		}
		// The error is sticky and the stream never gets a trailer.
		if err2 := w.Zero(0, 1); err2 != err {
			t.Errorf("%s: later call returned %v, want the sticky %v", name, err2, err)
		}
		if err2 := w.Close(); err2 != err {
			t.Errorf("%s: Close returned %v, want the sticky %v", name, err2, err)
		}
		if _, _, err := decodeAll(bytes.NewReader(buf.Bytes()), Limits{}); !errors.Is(err, ErrTruncated) {
			t.Errorf("%s: stream of a failed Writer decodes with %v, want ErrTruncated", name, err)
		}
	}
}

// failWriter accepts n bytes, then fails.
type failWriter struct {
	n   int
	err error
}

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k := f.n
		f.n = 0
		return k, f.err
	}
	f.n -= len(p)
	return len(p), nil
}

func TestWriterWriteError(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	boom := errors.New("boom")
	for _, at := range []int{0, 10, flushSize - 1, flushSize + 10, 3 * flushSize} {
		h := testHeader(4096, 1<<30)
		fw := &failWriter{n: at, err: boom}
		w, err := NewWriter(fw, h)
		if err != nil {
			t.Fatal(err)
		}
		for b := uint64(0); err == nil && b < 100; b++ {
			err = w.Data(b, random(rng, 4096))
		}
		if err == nil {
			err = w.Close()
		}
		if !errors.Is(err, boom) {
			t.Errorf("fail at %d: got %v, want boom", at, err)
		}
		if err2 := w.Close(); !errors.Is(err2, boom) {
			t.Errorf("fail at %d: Close after error returned %v", at, err2)
		}
	}
}

func TestWriterClose(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testHeader(4096, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	n := buf.Len()
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := w.Data(0, make([]byte, 4096)); err == nil {
		t.Error("Data after Close accepted")
	}
	if err := w.Zero(0, 1); err == nil {
		t.Error("Zero after Close accepted")
	}
	if buf.Len() != n {
		t.Errorf("stream grew from %d to %d bytes after Close", n, buf.Len())
	}
}

// TestWriterBuffersNothingAfterClose checks that Close flushes pending zero
// extents and buffered records.
func TestWriterFlushesOnClose(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testHeader(4096, 100*4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Data(0, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if err := w.Zero(1, 99); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != 0 {
		t.Errorf("%d bytes written before Close; want them buffered", buf.Len())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.WireBytes != uint64(buf.Len()) || st.Records != 2 || st.ZeroBlocks != 99 {
		t.Errorf("stats %+v for a %d-byte stream", st, buf.Len())
	}
}

// TestCompressionGivesUp: after a run of incompressible blocks the Writer
// offers LZ4 one block in lz4Probe, and compresses again as soon as a probe
// shrinks; the stream still decodes to the same data.
func TestCompressionGivesUp(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const nRandom, nText = 200, 40
	h := testHeader(4096, (nRandom+nText)*4096)
	var ops []op
	for b := range uint64(nRandom) {
		ops = append(ops, op{block: b, data: random(rng, 4096)})
	}
	for b := range uint64(nText) {
		ops = append(ops, op{block: nRandom + b, data: compressible(rng, 4096)})
	}
	stream, st := encode(t, h, ops)
	// Every text block after the first probe that reaches the text.
	if min := uint64(nText - lz4Probe); st.Compressed < min {
		t.Errorf("compressed %d of %d text blocks, want at least %d", st.Compressed, nText, min)
	}
	_, recs, err := decodeAll(bytes.NewReader(stream), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := diffRecords(recs, expected(h, ops)); err != nil {
		t.Fatal(err)
	}
	// Encoding again gives the same bytes.
	if again, _ := encode(t, h, ops); !bytes.Equal(again, stream) {
		t.Error("a second encoding differs")
	}
}

// BenchmarkIncompressible: the cost per byte of random blocks, which LZ4
// cannot shrink.
func BenchmarkIncompressible(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := random(rng, 1<<20)
	h := testHeader(4096, 1<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		w, _ := NewWriter(io.Discard, h)
		if err := w.Data(0, data); err != nil {
			b.Fatal(err)
		}
		w.Close()
	}
}

// TestParallelSameBytes: Data calls large enough to be compressed by
// several goroutines give the same stream, byte for byte, as one block at
// a time: runs of text and random blocks (so LZ4 gives up and probes in the
// middle of a call), a short last block, calls of every size around
// parallelMin.
func TestParallelSameBytes(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	const bs = 4096
	var blocks [][]byte
	for len(blocks) < 1500 {
		n, text := 1+rng.IntN(60), rng.IntN(2) == 0
		for range n {
			if text {
				blocks = append(blocks, compressible(rng, bs))
			} else {
				blocks = append(blocks, random(rng, bs))
			}
		}
	}
	size := int64(len(blocks))*bs - 1000 // the last block is short
	blocks[len(blocks)-1] = blocks[len(blocks)-1][:bs-1000]
	h := testHeader(bs, uint64(size))
	var ops []op
	for b := 0; b < len(blocks); {
		n := min(1+rng.IntN(3*parallelMin), len(blocks)-b)
		ops = append(ops, op{block: uint64(b), data: bytes.Join(blocks[b:b+n], nil)})
		b += n + rng.IntN(2) // a hole now and then
	}
	defer func(w int) { parallelWorkers = w }(parallelWorkers)
	parallelWorkers = 1
	one, st := encode(t, h, ops)
	for _, workers := range []int{2, 3, 4} {
		parallelWorkers = workers
		if got, _ := encode(t, h, ops); !bytes.Equal(got, one) {
			t.Fatalf("%d workers: the stream differs from one block at a time", workers)
		}
	}
	if st.Compressed == 0 || st.Compressed == st.DataBlocks {
		t.Fatalf("%d of %d blocks compressed: the test wants both kinds", st.Compressed, st.DataBlocks)
	}
	_, recs, err := decodeAll(bytes.NewReader(one), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := diffRecords(recs, expected(h, ops)); err != nil {
		t.Fatal(err)
	}
}
