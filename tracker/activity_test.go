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
			if err := l.settle(); err != nil {
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
