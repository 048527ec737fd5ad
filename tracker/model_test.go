package tracker

import (
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// modelDisk is one disk of the model: its backing file and its handle.
type modelDisk struct {
	vm, name, rel string
	img           *image
	d             *Disk
}

// TestModel runs random writes, zero ranges, copies, truncations and
// rotations (and clean restarts) against the log and checks that replaying
// each frozen generation, in order, onto a copy of the initial images gives
// exactly the images at that rotation.
func TestModel(t *testing.T) {
	for _, bs := range []int{512, 4096} {
		t.Run(map[int]string{512: "bs512", 4096: "bs4096"}[bs], func(t *testing.T) {
			rng := rand.New(rand.NewPCG(testSeed(t), uint64(bs)))
			steps := 2500
			if raceEnabled || testing.Short() {
				steps = 600
			}
			runModel(t, rng, bs, steps)
		})
	}
}

func runModel(t *testing.T, rng *rand.Rand, bs int, steps int) {
	fs := vfs.NewMem()
	l := openMem(t, fs, bs)
	defer func() { l.Close() }()
	B := int64(bs)

	disks := []*modelDisk{
		{vm: "alpha", name: "root.img", rel: "alpha/root.img"},
		{vm: "alpha", name: "data/d1.qcow2", rel: "alpha/data/d1.qcow2"},
		{vm: "beta.raw", name: "beta.raw", rel: "beta.raw"},
	}
	replicas := map[string]replica{"alpha": {}, "beta.raw": {}}
	for _, md := range disks {
		size := rng.Int64N(64 * B)
		if rng.IntN(2) == 0 {
			size = size / B * B
		}
		b := make([]byte, size)
		fillRandom(rng, b)
		md.img = &image{b: b}
		replicas[md.vm][md.name] = append([]byte{}, b...)
		d, err := l.OpenDisk(md.rel, size)
		if err != nil || d == nil {
			t.Fatalf("OpenDisk(%s): %v, %v", md.rel, d, err)
		}
		md.d = d
	}

	check := func(vm string) {
		gen, err := l.Rotate(vm)
		if err != nil {
			t.Fatalf("Rotate(%s): %v", vm, err)
		}
		replay(t, l, vm, gen, replicas[vm])
		for _, md := range disks {
			if md.vm != vm {
				continue
			}
			if diff := firstDiff(replicas[vm][md.name], md.img.b, B); diff != "" {
				t.Fatalf("%s after generation %d: %s\n%s", md.rel, gen, diff, dumpStatus(l))
			}
		}
		if rng.IntN(3) > 0 {
			if err := l.Drop(vm, gen); err != nil {
				t.Fatalf("Drop(%s, %d): %v", vm, gen, err)
			}
		}
	}

	maxLen := func() int64 {
		switch r := rng.IntN(20); {
		case r < 12:
			return 2 * B
		case r < 19:
			return 64 << 10
		default:
			return 1 << 20
		}
	}
	for step := 0; step < steps; step++ {
		md := disks[rng.IntN(len(disks))]
		size := int64(len(md.img.b))
		aligned := rng.IntN(2) == 0
		pick := func(limit int64) (off, n int64) {
			off = rng.Int64N(max(limit, 1))
			n = 1 + rng.Int64N(maxLen())
			if aligned {
				off = off / B * B
				n = (n + B - 1) / B * B
			}
			return off, n
		}
		switch r := rng.IntN(100); {
		case r < 55:
			off, n := pick(size + 4*B)
			data := make([]byte, n)
			fillRandom(rng, data)
			md.img.writeAt(data, off)
			md.d.Written(off, data, md.img)
		case r < 67:
			off, n := pick(size + 2*B)
			md.img.punch(off, n)
			md.d.Zeroed(off, n, md.img)
		case r < 75:
			off, n := pick(size + 2*B)
			data := make([]byte, n)
			fillRandom(rng, data)
			md.img.writeAt(data, off)
			md.d.Changed(off, n, md.img)
		case r < 88:
			var ns int64
			if rng.IntN(2) == 0 {
				ns = rng.Int64N(size + 1)
			} else {
				ns = size + rng.Int64N(16*B)
			}
			if aligned {
				ns = ns / B * B
			}
			md.img.truncate(ns)
			md.d.Resized(ns, md.img)
		case r < 96:
			check(md.vm)
		case r < 98:
			// Sync now and then: it must not disturb anything.
			if err := md.d.Sync(); err != nil {
				t.Fatal(err)
			}
		default:
			// Clean restart: the active generations must survive.
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l = openMem(t, fs, bs)
			for _, md := range disks {
				d, err := l.OpenDisk(md.rel, int64(len(md.img.b)))
				if err != nil {
					t.Fatal(err)
				}
				md.d = d
			}
			for _, ds := range statusOf(t, l, "alpha").Disks {
				if ds.Resync {
					t.Fatalf("disk %s flagged after a clean restart: %s", ds.Name, ds.Reason)
				}
			}
		}
	}
	check("alpha")
	check("beta.raw")

	// Log bytes: what the generations still held hold, and nothing once
	// they are all dropped.
	for _, vm := range []string{"alpha", "beta.raw"} {
		st := statusOf(t, l, vm)
		want := map[string]int64{}
		for _, g := range st.Generations {
			for _, gd := range g.Disks {
				want[gd.Disk] += gd.Bytes
			}
		}
		for _, ds := range st.Disks {
			if ds.LogBytes != want[ds.Name] {
				t.Errorf("%s/%s: log bytes %d, generations hold %d\n%s", vm, ds.Name, ds.LogBytes, want[ds.Name], dumpStatus(l))
			}
		}
		for _, gen := range l.Frozen(vm) {
			if err := l.Drop(vm, gen); err != nil {
				t.Fatal(err)
			}
		}
		for _, ds := range statusOf(t, l, vm).Disks {
			if ds.LogBytes != 0 {
				t.Errorf("%s/%s: %d log bytes with no generation left", vm, ds.Name, ds.LogBytes)
			}
		}
	}
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}
