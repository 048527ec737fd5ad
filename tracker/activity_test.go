package tracker

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestHostCrash: after a crash of the host, which keeps of the state
// directory only what was synced and of each disk's file, block by block,
// either what its last sync left or what was written since, every block
// where the replica (the base, then every generation the log still holds)
// differs from the disk lies inside the ranges its resync is limited to;
// a disk not flagged equals its replica. Randomized: writes, punches,
// truncations, flushes, rotations and cooling, on an activity log small
// enough to fill up.
func TestHostCrash(t *testing.T) {
	for i := 0; i < 30; i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			seed := testSeed(t)
			hostCrashRound(t, rand.New(rand.NewPCG(seed, 2)))
		})
	}
}

func hostCrashRound(t *testing.T, rng *rand.Rand) {
	const bs = 4096
	const extent, slots = 4 * bs, 8
	src := t.TempDir()
	fs := vfs.NewCrashableMem()
	names := []string{"a.img", "b.img"}
	var mu sync.Mutex
	imgs := map[string]*image{}
	durable := map[string][]byte{} // what a crash keeps at least, by rel
	base := replica{}
	for _, n := range names {
		b := make([]byte, (32+rng.IntN(32))*bs)
		fillRandom(rng, b)
		rel := "vm/" + n
		os.MkdirAll(filepath.Join(src, "vm"), 0o755)
		if err := os.WriteFile(filepath.Join(src, rel), b, 0o644); err != nil {
			t.Fatal(err)
		}
		imgs[rel] = &image{b: bytes.Clone(b)}
		durable[rel] = bytes.Clone(b)
		base[n] = bytes.Clone(b)
	}
	opts := Options{Dir: "/state", Source: src, FS: fs, BlockSize: bs, ActivityExtent: extent, ActivitySlots: slots,
		SyncFile: func(rel string) error {
			mu.Lock()
			defer mu.Unlock()
			durable[rel] = imgs[rel].bytes()
			return nil
		}}
	l, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	disks := map[string]*Disk{}
	for rel, img := range imgs {
		if disks[rel], err = l.OpenDisk(rel, int64(len(img.b))); err != nil {
			t.Fatal(err)
		}
	}
	rels := []string{"vm/a.img", "vm/b.img"}
	steps := 50 + rng.IntN(400)
	for i := 0; i < steps; i++ {
		rel := rels[rng.IntN(2)]
		img, d := imgs[rel], disks[rel]
		size := int64(len(img.bytes()))
		switch r := rng.IntN(100); {
		case r < 70:
			off := rng.Int64N(size + 2*bs)
			p := make([]byte, 1+rng.IntN(3*bs))
			fillRandom(rng, p)
			tok := d.Begin(off, int64(len(p)))
			img.writeAt(p, off)
			d.Written(off, p, img)
			d.End(tok)
		case r < 78:
			off, n := rng.Int64N(size), int64(1+rng.IntN(6*bs))
			tok := d.Begin(off, n)
			img.punch(off, n)
			d.Zeroed(off, n, img)
			d.End(tok)
		case r < 84:
			ns := int64(16+rng.IntN(48))*bs + int64(rng.IntN(bs))
			tok := d.Begin(ns, -1)
			img.truncate(ns)
			d.Resized(ns, img)
			d.End(tok)
		case r < 90:
			// A guest's flush: fs syncs the file, then the log.
			mu.Lock()
			durable[rel] = img.bytes()
			mu.Unlock()
			if err := d.Sync(); err != nil {
				t.Fatal(err)
			}
		case r < 95:
			if _, err := l.Rotate("vm"); err != nil {
				t.Fatal(err)
			}
		default:
			// A sync of the disks and the log, as a full table or a
			// half-full one asks for, or the end of a cooling period.
			cool := l.settle
			if rng.IntN(2) == 0 {
				cool = l.coolIdle
			}
			if err := cool(); err != nil {
				t.Fatal(err)
			}
		}
	}
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rng})
	l.crashProcess()
	// The disks as the crash left them: the size and each block from the
	// last sync or from after it.
	after := map[string][]byte{}
	for _, rel := range rels {
		cur, dur := imgs[rel].bytes(), durable[rel]
		size := int64(len(cur))
		if rng.IntN(2) == 0 {
			size = int64(len(dur))
		}
		out := make([]byte, size)
		for off := int64(0); off < size; off += bs {
			from := cur
			if rng.IntN(2) == 0 {
				from = dur
			}
			if off < int64(len(from)) {
				copy(out[off:min(off+bs, size)], from[off:min(off+bs, int64(len(from)))])
			}
		}
		after[rel] = out
		if err := os.WriteFile(filepath.Join(src, rel), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	boot, btime := bootID, bootTime
	bootID = func() string { return "another boot" }
	bootTime = func() int64 { return time.Now().UnixNano() }
	defer func() { bootID, bootTime = boot, btime }()
	opts.FS = crashed
	l2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	rec := l2.Recovered()
	if !rec.HostCrash || rec.HotBytes > extent*slots {
		t.Fatalf("recovery %+v: want a host crash with at most %d bytes hot", rec, extent*slots)
	}
	rep := base
	for _, g := range l2.Frozen("vm") {
		replay(t, l2, "vm", g, rep)
	}
	for _, rel := range rels {
		name := filepath.Base(rel)
		ds := diskStatus(t, l2, "vm", name)
		disk, got := after[rel], rep[name]
		if !ds.Resync {
			if !bytes.Equal(disk, got) {
				t.Fatalf("%s not flagged, and its replica differs from it (sizes %d, %d): %s", name, len(disk), len(got), firstDiff(got, disk, bs))
			}
			continue
		}
		if !IsHotReason(ds.Reason) {
			t.Logf("%s flagged whole: %s", name, ds.Reason)
			continue
		}
		ranges := l2.ResyncRanges("vm", name)
		for off := int64(0); off < int64(len(disk)); off += bs {
			end := min(off+bs, int64(len(disk)))
			want := make([]byte, end-off)
			if off < int64(len(got)) {
				copy(want, got[off:min(end, int64(len(got)))])
			}
			if bytes.Equal(disk[off:end], want) {
				continue
			}
			in := false
			for _, r := range ranges {
				in = in || off >= r.Off && end <= r.Off+r.Len
			}
			if !in {
				t.Fatalf("%s: block at %d differs from the replica and is outside the hot ranges %v (%s)", name, off, ranges, ds.Reason)
			}
		}
	}
	t.Logf("%d steps; recovered %+v", steps, rec)
}

// TestCoolIdle: at the end of a cooling period the extents not changed
// during it cool, after a sync of the disks only if one of them changed
// since the last sync; a disk written all the time costs no sync.
func TestCoolIdle(t *testing.T) {
	const bs = 4096
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "vm"), 0o755)
	imgs := map[string]*image{}
	var mu sync.Mutex
	synced := map[string]int{}
	opts := Options{Dir: "/state", Source: src, FS: vfs.NewMem(), BlockSize: bs,
		SyncFile: func(rel string) error {
			mu.Lock()
			defer mu.Unlock()
			synced[rel]++
			return nil
		}}
	l, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	disks := map[string]*Disk{}
	for _, rel := range []string{"vm/busy.img", "vm/idle.img"} {
		imgs[rel] = &image{b: make([]byte, 64*bs)}
		if disks[rel], err = l.OpenDisk(rel, 64*bs); err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel string) {
		p := bytes.Repeat([]byte{1}, bs)
		tok := disks[rel].Begin(0, bs)
		imgs[rel].writeAt(p, 0)
		disks[rel].Written(0, p, imgs[rel])
		disks[rel].End(tok)
	}
	check := func(step string, hot int, busy, idle int) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if got := l.activity.hotCount(); got != hot || synced["vm/busy.img"] != busy || synced["vm/idle.img"] != idle {
			t.Fatalf("%s: %d extent(s) hot, syncs %v; want %d hot, syncs busy %d idle %d", step, got, synced, hot, busy, idle)
		}
	}
	tick := func() {
		if err := l.coolIdle(); err != nil {
			t.Fatal(err)
		}
	}
	write("vm/busy.img")
	write("vm/idle.img")
	tick()
	check("both written during the first period", 2, 0, 0)
	write("vm/busy.img")
	tick()
	check("one idle for a period", 1, 1, 1)
	for i := 0; i < 3; i++ {
		write("vm/busy.img")
		tick()
		check("written in every period", 1, 1, 1)
	}
	tick()
	check("idle for a period at last", 0, 2, 1)
	tick()
	check("nothing hot", 0, 2, 1)
	// What the file names after a crash now: nothing.
	if st := readActivity(opts.FS, l.activityPath()); !st.valid || len(st.count) != 0 {
		t.Fatalf("activity log after cooling: %+v, want valid and empty", st)
	}
}

// TestSequentialWriter: a writer is taken as sequential once its changes
// moved forward by seqExtents extents, each beginning near where the ones
// before ended, in whatever order the pieces of one large write arrive; a
// random writer, over a small region or a large one, never is.
func TestSequentialWriter(t *testing.T) {
	const extent = 4 << 20
	rng := rand.New(rand.NewPCG(testSeed(t), 3))
	a, err := openActivity(vfs.NewMem(), "/activity", extent, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	seq := func(disk uint32, off, n int64) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.sequentialLocked(disk, off, n)
	}
	// 1 MiB writes, each split into four requests of 256 KiB that arrive
	// in a random order.
	const piece = 256 << 10
	var got bool
	var at int64
	for off := int64(0); off < 3*extent; off += 4 * piece {
		for _, i := range rng.Perm(4) {
			got = seq(1, off+int64(i)*piece, piece)
		}
		if got {
			at = off + 4*piece
			break
		}
	}
	if !got || at != seqExtents*extent {
		t.Fatalf("sequential writer in pieces: taken as sequential after %d bytes (%v), want %d", at, got, seqExtents*extent)
	}
	for i := 0; i < 100000; i++ {
		if seq(2, rng.Int64N(2*extent/4096)*4096, 4096) {
			t.Fatalf("random writer in a region of 2 extents taken as sequential after %d writes", i+1)
		}
		if seq(3, rng.Int64N(1<<30/4096)*4096, 4096) {
			t.Fatalf("random writer over 1 GiB taken as sequential after %d writes", i+1)
		}
	}
}

// TestAheadStopsAtEnd: a sequential writer's extents ahead stay inside the
// disk, unless its changes grow the disk.
func TestAheadStopsAtEnd(t *testing.T) {
	const extent = 1 << 20
	a, err := openActivity(vfs.NewMem(), "/activity", extent, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	settle := func() error { return nil }
	lost := func(err error) { t.Fatal(err) }
	maxHot := func(disk uint32) uint64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		m := uint64(0)
		for k := range a.mu.hot {
			if k.disk == disk {
				m = max(m, k.ext)
			}
		}
		return m
	}
	const size = 40 * extent
	for off := int64(0); off < size; off += 256 << 10 {
		a.end(a.begin(1, off, 256<<10, size, settle, lost))
		if m := maxHot(1); m >= size/extent {
			t.Fatalf("writing at %d of a disk of %d: extent %d is hot", off, size, m)
		}
	}
	if m := maxHot(1); m != size/extent-1 {
		t.Fatalf("after a sequential pass the last hot extent is %d, want %d", m, size/extent-1)
	}
	// A writer that appends: its extents ahead lie past the end.
	for off := int64(0); off < 8*extent; off += 256 << 10 {
		a.end(a.begin(2, off, 256<<10, off, settle, lost))
	}
	if m := maxHot(2); m < 8+aheadExtents/2 {
		t.Fatalf("an appending writer at 8 extents made extents up to %d hot, want %d or more", m, 8+aheadExtents/2)
	}
}
