package tracked_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
)

// TestShipEveryPoint: the whole source-to-target path in one process: a
// real mount, the log, the shipper and a directory store. The VM's disks
// hold data before protection starts (sent whole, as initial replication);
// then random writes go through the mount with random rotations, each
// followed by a ship. Every consistent recovery point the store keeps must
// restore to exactly the source as it was at that rotation.
func TestShipEveryPoint(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	disks := []string{"root.img", "data/d1.img"}
	const size = 6 << 20
	r := newRig(t, func(src string) {
		os.MkdirAll(filepath.Join(src, "vm1", "data"), 0o755)
		os.WriteFile(filepath.Join(src, "vm1", "root.img"), randomBytes(rng, size), 0o644)
		f, _ := os.Create(filepath.Join(src, "vm1", "data", "d1.img"))
		f.WriteAt(randomBytes(rng, 64<<10), 1<<20)
		f.Truncate(size)
		f.Close()
	})
	store, err := dirstore.Open(filepath.Join(t.TempDir(), "target"), dirstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	sh := shipper.New(shipper.FromLog(r.log, blockSize), store, shipper.Options{Source: "host-a"})

	want := map[uint64]map[string][]byte{} // point -> disk -> contents at its cut
	snapshot := func() map[string][]byte {
		m := map[string][]byte{}
		for _, d := range disks {
			b, err := os.ReadFile(r.sourcePath("vm1", d))
			if err != nil {
				t.Fatal(err)
			}
			m[d] = b
		}
		return m
	}
	for _, d := range disks {
		dk, err := r.log.OpenDisk("vm1/"+d, size)
		if err != nil || dk == nil {
			t.Fatalf("registering %s: %v", d, err)
		}
		dk.Release()
	}
	// Initial replication: the disks whole, on the first generation.
	gen, err := r.log.Rotate("vm1")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, d := range disks {
		files[d] = r.sourcePath("vm1", d)
	}
	if _, err := sh.ShipCopy(ctx, "vm1", gen, files, target.KindInitial); err != nil {
		t.Fatalf("initial copy: %v", err)
	}
	want[gen] = snapshot() // nothing wrote during the copy: even this point is exact

	open := map[string]*os.File{}
	for _, d := range disks {
		f, err := os.OpenFile(filepath.Join(r.mnt, "vm1", d), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		open[d] = f
	}
	for i := 0; i < 150; i++ {
		f := open[disks[rng.IntN(len(disks))]]
		off := rng.Int64N(size)
		n := 1 + rng.Int64N(256<<10)
		switch rng.IntN(10) {
		case 0:
			unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		case 1:
			f.Truncate(size/2 + rng.Int64N(size))
		default:
			if _, err := f.WriteAt(randomBytes(rng, int(n)), off); err != nil {
				t.Fatal(err)
			}
		}
		if rng.IntN(15) == 0 || i == 149 {
			gen, err := r.log.Rotate("vm1")
			if err != nil {
				t.Fatal(err)
			}
			want[gen] = snapshot()
			if rng.IntN(2) == 0 { // sometimes several generations wait
				if _, err := sh.Ship(ctx, "vm1"); err != nil {
					t.Fatalf("ship: %v", err)
				}
			}
		}
	}
	st, err := sh.Ship(ctx, "vm1")
	if err != nil {
		t.Fatalf("ship: %v", err)
	}
	t.Logf("last ship: %d generations, %d data blocks, %d bytes raw, %d on the wire", st.Generations, st.DataBlocks, st.RawBytes, st.WireBytes)
	points, err := store.Points(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != len(want) {
		t.Errorf("%d points on the target, want %d", len(points), len(want))
	}
	for _, p := range points {
		for _, d := range disks {
			expect, ok := want[p.Generation][d]
			if !ok {
				t.Fatalf("point %d was never cut", p.Generation)
			}
			got := readDisk(t, store, p.Generation, d)
			if !bytes.Equal(got, expect) {
				t.Fatalf("point %d disk %s differs from the source at its cut: %s", p.Generation, d, firstDiff(got, expect))
			}
		}
	}
	if left := r.log.Frozen("vm1"); len(left) != 0 {
		t.Errorf("generations %v still in the log after they were shipped", left)
	}
}

func readDisk(t *testing.T, store target.Store, gen uint64, disk string) []byte {
	t.Helper()
	dr, err := store.Open(context.Background(), "vm1", gen, disk)
	if err != nil {
		t.Fatalf("open point %d disk %s: %v", gen, disk, err)
	}
	defer dr.Close()
	b := make([]byte, dr.Size())
	if _, err := dr.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatalf("read point %d disk %s: %v", gen, disk, err)
	}
	return b
}
