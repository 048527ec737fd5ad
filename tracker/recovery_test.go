package tracker

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// TestCrashAfterSync: records synced before a crash are there after it, and
// without an activity log every disk is flagged "dirty shutdown".
func TestCrashAfterSync(t *testing.T) {
	for _, unsynced := range []int{0, 50, 100} {
		t.Run(fmt.Sprintf("unsynced%d", unsynced), func(t *testing.T) {
			seed := testSeed(t)
			rng := rand.New(rand.NewPCG(seed, 1))
			const bs = 4096
			fs := vfs.NewCrashableMem()
			l := openMemNoActivity(t, fs, bs)
			img := &image{b: make([]byte, 64*bs)}
			other := &image{b: make([]byte, 8*bs)}
			d, err := l.OpenDisk("vm/disk.img", int64(len(img.b)))
			if err != nil {
				t.Fatal(err)
			}
			d2, err := l.OpenDisk("vm/other.img", int64(len(other.b)))
			if err != nil {
				t.Fatal(err)
			}
			// An earlier generation, frozen before the crash.
			write := func(m *image, d *Disk, off int64, n int) {
				p := make([]byte, n)
				fillRandom(rng, p)
				m.writeAt(p, off)
				d.Written(off, p, m)
			}
			write(img, d, 0, 3*bs)
			if _, err := l.Rotate("vm"); err != nil {
				t.Fatal(err)
			}
			// Synced changes of the active generation.
			for i := 0; i < 20; i++ {
				write(img, d, int64(rng.IntN(32))*bs+int64(rng.IntN(bs)), 1+rng.IntN(3*bs))
			}
			img.punch(40*bs, 4*bs)
			d.Zeroed(40*bs, 4*bs, img)
			img.truncate(50*bs + 100)
			d.Resized(50*bs+100, img)
			write(other, d2, 0, bs)
			if err := d.Sync(); err != nil {
				t.Fatal(err)
			}
			synced := img.bytes()
			// Unsynced changes, outside the synced blocks.
			write(img, d, 45*bs, 2*bs)

			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: unsynced, RNG: rng})
			l.Close()

			l2 := openMemNoActivity(t, crashed, bs)
			defer l2.Close()
			if l2.Clean() {
				t.Error("log reports a clean shutdown after a crash")
			}
			for _, name := range []string{"disk.img", "other.img"} {
				ds := diskStatus(t, l2, "vm", name)
				if !ds.Resync || !strings.Contains(ds.Reason, "dirty shutdown") {
					t.Errorf("%s after a crash: resync %v, reason %q", name, ds.Resync, ds.Reason)
				}
			}
			// The generation active at the crash is frozen at Open; replaying
			// everything gives the synced image at least for the blocks
			// synced.
			frozen := l2.Frozen("vm")
			if len(frozen) != 2 {
				t.Fatalf("frozen generations after the crash: %v\n%s", frozen, dumpStatus(l2))
			}
			rep := replica{"disk.img": make([]byte, 64*bs)}
			for _, g := range frozen {
				replay(t, l2, "vm", g, rep)
			}
			got := rep["disk.img"]
			if unsynced == 0 {
				if diff := firstDiff(got, synced, bs); diff != "" {
					t.Fatalf("disk after recovery: %s", diff)
				}
			} else if !bytes.Equal(got[:40*bs], synced[:40*bs]) {
				t.Fatalf("synced blocks lost: %s", firstDiff(got[:40*bs], synced[:40*bs], bs))
			}
			if !bytes.Equal(rep["other.img"], other.b) {
				t.Fatalf("other.img: %s", firstDiff(rep["other.img"], other.b, bs))
			}
			// The log goes on: a new active generation takes changes.
			d, err = l2.OpenDisk("vm/disk.img", int64(len(img.b)))
			if err != nil {
				t.Fatal(err)
			}
			write(img, d, 0, bs)
			g, err := l2.Rotate("vm")
			if err != nil {
				t.Fatal(err)
			}
			if g <= frozen[1] {
				t.Fatalf("rotated generation %d after %v", g, frozen)
			}
		})
	}
}

// TestCleanReopen: after Close the active generation is intact, nothing is
// flagged, and the generation goes on taking changes.
func TestCleanReopen(t *testing.T) {
	const bs = 4096
	fs := vfs.NewCrashableMem()
	l := openMem(t, fs, bs)
	img := &image{b: make([]byte, 16*bs)}
	initial := img.bytes()
	d, _ := l.OpenDisk("vm/disk.img", int64(len(img.b)))
	p := bytes.Repeat([]byte{7}, 3*bs)
	img.writeAt(p, bs)
	d.Written(bs, p, img)
	img.truncate(20*bs + 5)
	d.Resized(20*bs+5, img)
	before := statusOf(t, l, "vm")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Only synced state survives: Close must have synced everything.
	l = openMem(t, fs.CrashClone(vfs.CrashCloneCfg{}), bs)
	defer l.Close()
	if !l.Clean() {
		t.Error("log reports an unclean shutdown after Close")
	}
	after := statusOf(t, l, "vm")
	if after.Active != before.Active || len(after.Generations) != 1 || after.Generations[0].Frozen {
		t.Fatalf("active generation changed over a clean restart:\n%s", dumpStatus(l))
	}
	if a, b := after.Generations[0].Disks, before.Generations[0].Disks; len(a) != 1 || a[0] != b[0] {
		t.Fatalf("active generation differs: %+v, was %+v", a, b)
	}
	if ds := diskStatus(t, l, "vm", "disk.img"); ds.Resync || ds.Size != 20*bs+5 || ds.LogBytes != 3*bs {
		t.Fatalf("disk after a clean restart: %+v", ds)
	}
	d, _ = l.OpenDisk("vm/disk.img", int64(len(img.b)))
	q := bytes.Repeat([]byte{9}, bs)
	img.writeAt(q, 2*bs)
	d.Written(2*bs, q, img)
	rotateMatches(t, l, "vm", initial, img.b, bs)
}

// TestSegmentWriteError: a failed segment write does not fail the change;
// the disk is flagged with the reason, and Sync stays quiet because the
// flag is durable.
func TestSegmentWriteError(t *testing.T) {
	const bs = 4096
	inj := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if (op.Kind == errorfs.OpFileWriteAt || op.Kind == errorfs.OpFileSyncData) && strings.HasSuffix(op.Path, ".seg") {
			return errors.New("injected: no space left on device")
		}
		return nil
	})}
	mem := vfs.NewMem()
	l := openMem(t, errorfs.Wrap(mem, inj), bs)
	img := &image{b: make([]byte, 8*bs)}
	d, err := l.OpenDisk("vm/disk.img", int64(len(img.b)))
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := l.OpenDisk("vm/ok.img", 0)
	inj.On()
	p := bytes.Repeat([]byte{1}, bs)
	img.writeAt(p, 0)
	d.Written(0, p, img) // must return normally
	if err := d.Sync(); err != nil {
		t.Fatalf("Sync after a failed log write: %v", err)
	}
	inj.Off()
	ds := diskStatus(t, l, "vm", "disk.img")
	if !ds.Resync || !strings.Contains(ds.Reason, "change log write failed") || !strings.Contains(ds.Reason, "injected") {
		t.Fatalf("disk after a failed log write: %+v", ds)
	}
	if ok := diskStatus(t, l, "vm", "ok.img"); ok.Resync {
		t.Fatalf("an untouched disk was flagged: %+v", ok)
	}
	_ = d2
	// The flag is durable, and a generation with a failed write is frozen
	// at Close rather than rescanned.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openMem(t, mem, bs)
	defer l.Close()
	if ds := diskStatus(t, l, "vm", "disk.img"); !ds.Resync {
		t.Fatalf("flag lost over a restart: %+v", ds)
	}
	if ok := diskStatus(t, l, "vm", "ok.img"); ok.Resync {
		t.Fatalf("untouched disk flagged after restart: %+v", ok)
	}
	// The generation with the failed write can still be shipped.
	frozen := l.Frozen("vm")
	if len(frozen) != 1 {
		t.Fatalf("frozen after restart: %v", frozen)
	}
	n := 0
	if err := l.ReadGeneration("vm", frozen[0], func(r Record) error { n++; return nil }); err != nil || n != 2 {
		t.Fatalf("reading the generation with a failed write: %d records, %v", n, err)
	}
}

// TestChangedOutsideMount: a disk whose file changed between Close and Open
// is flagged.
func TestChangedOutsideMount(t *testing.T) {
	src, state := t.TempDir(), t.TempDir()
	file := filepath.Join(src, "vm", "disk.img")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "other.img"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func() *Log {
		l, err := Open(Options{Dir: state, Source: src})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	if _, err := Open(Options{Dir: state, Source: src}); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Open of a state directory in use: %v", err)
	}
	d, err := l.OpenDisk("vm/disk.img", 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.OpenDisk("other.img", 4096); err != nil {
		t.Fatal(err)
	}
	img := &image{b: make([]byte, 64<<10)}
	p := bytes.Repeat([]byte{3}, 4096)
	img.writeAt(p, 0)
	d.Written(0, p, img)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = open()
	for _, vm := range []string{"vm", "other.img"} {
		for _, ds := range statusOf(t, l, vm).Disks {
			if ds.Resync {
				t.Fatalf("%s/%s flagged after a clean restart: %s", vm, ds.Name, ds.Reason)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("changed behind our back"))
	f.Close()
	l = open()
	defer l.Close()
	ds := diskStatus(t, l, "vm", "disk.img")
	if !ds.Resync || !strings.Contains(ds.Reason, "changed outside the mount") {
		t.Fatalf("disk changed outside the mount: %+v", ds)
	}
	if o := diskStatus(t, l, "other.img", "other.img"); o.Resync {
		t.Fatalf("unchanged disk flagged: %+v", o)
	}
}

func TestOpenErrors(t *testing.T) {
	fs := vfs.NewMem()
	l := openMem(t, fs, 4096)

	_, err := Open(Options{Dir: "/state", Source: "/src", FS: fs})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open of a busy state directory: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	_, err = Open(Options{Dir: "/state", Source: "/elsewhere", FS: fs})
	if !errors.Is(err, ErrOtherSource) || !strings.Contains(err.Error(), "/src") || !strings.Contains(err.Error(), "/elsewhere") {
		t.Errorf("Open for another source: %v", err)
	}
	_, err = Open(Options{Dir: "/state", Source: "/src", FS: fs, BlockSize: 8192})
	if !errors.Is(err, ErrBlockSize) {
		t.Errorf("Open with another block size: %v", err)
	}
	_, err = Open(Options{Dir: "/state", Source: "src", FS: fs})
	if err == nil {
		t.Error("Open with a relative source succeeded")
	}
	_, err = Open(Options{Dir: "/state", Source: "/src", FS: fs, BlockSize: 3000})
	if err == nil {
		t.Error("Open with block size 3000 succeeded")
	}

	// A format this build does not read.
	db, err := pebble.Open("/state/index", &pebble.Options{FS: fs, Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte{keyFormat}, formatRecord{version: 99}.encode(), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(Options{Dir: "/state", Source: "/src", FS: fs})
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "version 99") {
		t.Errorf("Open of format 99: %v", err)
	}
	// The failed Opens released the lock.
	if _, err := Open(Options{Dir: "/state", Source: "/src", FS: fs}); errors.Is(err, ErrBusy) {
		t.Errorf("lock kept by a failed Open: %v", err)
	}

	_, err = Open(Options{Dir: "/nothing", Source: "/src", FS: fs, ReadOnly: true})
	if err == nil {
		t.Error("read-only Open of a missing log succeeded")
	}
}

// TestDrop: Drop removes the generation's index range and segment, and
// its bytes from the disk's log bytes.
func TestDrop(t *testing.T) {
	const bs = 4096
	fs := vfs.NewMem()
	l := openMem(t, fs, bs)
	defer l.Close()
	img := &image{b: make([]byte, 32*bs)}
	d, _ := l.OpenDisk("vm/disk.img", int64(len(img.b)))
	w := func(off int64, n int) {
		p := bytes.Repeat([]byte{5}, n)
		img.writeAt(p, off)
		d.Written(off, p, img)
	}
	w(0, 4*bs)
	w(0, 4*bs) // in place: no more log bytes
	w(100, 10) // block 0 again
	if got := d.LogBytes(); got != 4*bs {
		t.Fatalf("log bytes %d, want %d", got, 4*bs)
	}
	active := func(want int64) {
		t.Helper()
		if got, err := l.ActiveBytes("vm"); err != nil || got != want {
			t.Fatalf("active bytes %d (%v), want %d", got, err, want)
		}
	}
	active(4 * bs)
	g1, _ := l.Rotate("vm")
	active(0)
	w(8*bs, 2*bs)
	img.punch(bs*9, bs)
	d.Zeroed(9*bs, bs, img)
	if got := d.LogBytes(); got != 5*bs {
		t.Fatalf("log bytes %d after a zero range, want %d", got, 5*bs)
	}
	active(bs) // block 9 is zeros now: no data
	e, _ := l.OpenDisk("vm/other.img", int64(len(img.b)))
	p := bytes.Repeat([]byte{7}, 3*bs)
	e.Written(0, p, bytes.NewReader(p))
	active(4 * bs) // the VM's disks together
	if _, err := l.ActiveBytes("nope"); !errors.Is(err, ErrUnknownVM) {
		t.Fatalf("ActiveBytes of an unknown VM: %v", err)
	}
	g2, _ := l.Rotate("vm")
	seg := segmentPath(fs, "/state", 1, g1)
	if _, err := fs.Stat(seg); err != nil {
		t.Fatal(err)
	}
	if err := l.Drop("vm", g1); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Stat(seg); !os.IsNotExist(err) {
		t.Fatalf("segment of a dropped generation: %v", err)
	}
	it, _ := l.db.NewIter(&pebble.IterOptions{LowerBound: genIndexPrefix(1, g1), UpperBound: genIndexPrefix(1, g1+1)})
	if it.First() {
		t.Fatalf("index key %x left after Drop", it.Key())
	}
	it.Close()
	if got := d.LogBytes(); got != bs {
		t.Fatalf("log bytes %d after Drop, want %d", got, bs)
	}
	if got := l.Frozen("vm"); len(got) != 1 || got[0] != g2 {
		t.Fatalf("frozen after Drop: %v", got)
	}
	if err := l.Drop("vm", g1); !errors.Is(err, ErrGeneration) {
		t.Fatalf("second Drop: %v", err)
	}
	if err := l.ReadGeneration("vm", g1, func(Record) error { return nil }); !errors.Is(err, ErrGeneration) {
		t.Fatalf("reading a dropped generation: %v", err)
	}
	if _, err := l.Rotate("nope"); !errors.Is(err, ErrUnknownVM) {
		t.Fatalf("Rotate of an unknown VM: %v", err)
	}
}

// TestNames: which paths are disks, renames and removals.
func TestNames(t *testing.T) {
	const bs = 4096
	fs := vfs.NewMem()
	l := openMem(t, fs, bs)
	defer l.Close()
	for _, rel := range []string{"", ".", "/abs", "../up", "a/../b", "a//b"} {
		if d, err := l.OpenDisk(rel, 0); d != nil || err != nil {
			t.Errorf("OpenDisk(%q) = %v, %v; want nil, nil", rel, d, err)
		}
	}
	img := &image{b: make([]byte, 4*bs)}
	a, _ := l.OpenDisk("vm/a.img", int64(len(img.b)))
	top, _ := l.OpenDisk("solo.raw", 0)
	if again, _ := l.OpenDisk("vm/a.img", int64(len(img.b))); again != a {
		t.Fatal("OpenDisk of an open disk returned another Disk")
	}
	if got := l.VMs(); len(got) != 2 || got[0] != "solo.raw" || got[1] != "vm" {
		t.Fatalf("VMs: %v", got)
	}

	// Rename inside the VM: tracked on, flagged.
	l.Renamed("vm/a.img", "vm/sub/b.img")
	p := bytes.Repeat([]byte{1}, bs)
	img.writeAt(p, 0)
	a.Written(0, p, img)
	ds := diskStatus(t, l, "vm", "sub/b.img")
	if !ds.Resync || !strings.Contains(ds.Reason, "renamed from vm/a.img") || ds.LogBytes != bs {
		t.Fatalf("renamed disk: %+v", ds)
	}

	// Whole VM renamed at the top: same VM, disks flagged.
	l.Renamed("solo.raw", "duo.raw")
	if got := l.VMs(); len(got) != 2 || got[0] != "duo.raw" {
		t.Fatalf("VMs after a VM rename: %v", got)
	}
	if ds := diskStatus(t, l, "duo.raw", "duo.raw"); !ds.Resync {
		t.Fatalf("renamed VM's disk: %+v", ds)
	}

	// Moved to another VM: removed from the old one, tracked in the new
	// one through the same handle.
	l.Renamed("vm/sub/b.img", "other/b.img")
	q := bytes.Repeat([]byte{2}, bs)
	img.writeAt(q, bs)
	a.Written(bs, q, img)
	if ds := diskStatus(t, l, "other", "b.img"); !ds.Resync || ds.LogBytes != bs || ds.Size != int64(len(img.b)) {
		t.Fatalf("moved disk in its new VM: %+v", ds)
	}
	g, err := l.Rotate("vm")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []Kind
	l.ReadGeneration("vm", g, func(r Record) error {
		kinds = append(kinds, r.Kind)
		return nil
	})
	if len(kinds) != 1 || kinds[0] != KindRemoved {
		t.Fatalf("old VM's generation after a move: %v", kinds)
	}

	// Removed: recorded, and later changes are ignored.
	l.Removed("other/b.img")
	a.Written(0, p, img)
	g, err = l.Rotate("other")
	if err != nil {
		t.Fatal(err)
	}
	kinds = nil
	l.ReadGeneration("other", g, func(r Record) error {
		kinds = append(kinds, r.Kind)
		return nil
	})
	if len(kinds) != 1 || kinds[0] != KindRemoved {
		t.Fatalf("generation after a removal: %v", kinds)
	}
	if ds := diskStatus(t, l, "other", "b.img"); !ds.Removed {
		t.Fatalf("removed disk: %+v", ds)
	}
	// A new file at the same path is a new disk.
	n, _ := l.OpenDisk("other/b.img", 0)
	if n == a {
		t.Fatal("a new file at a removed disk's path reused the removed Disk")
	}
	_ = top

	l.MarkResync("vm", "nope", "x") // unknown: no-op
	n.Resized(bs, img)
	l.MarkResync("other", "b.img", "operator asked")
	if ok, why := n.Resync(); !ok || why != "operator asked" {
		t.Fatalf("MarkResync: %v %q", ok, why)
	}
	l.ClearResync("other", "b.img")
	if ok, _ := n.Resync(); ok {
		t.Fatal("ClearResync left the flag")
	}
}

// TestReadOnly: a read-only Open shows the log without changing it.
func TestReadOnly(t *testing.T) {
	const bs = 4096
	fs := vfs.NewMem()
	l := openMem(t, fs, bs)
	img := &image{b: make([]byte, 4*bs)}
	d, _ := l.OpenDisk("vm/a.img", int64(len(img.b)))
	p := bytes.Repeat([]byte{1}, bs)
	img.writeAt(p, 0)
	d.Written(0, p, img)
	g, _ := l.Rotate("vm")
	img.writeAt(p, bs)
	d.Written(bs, p, img)
	l.Close()

	ro, err := Open(Options{Dir: "/state", Source: "/src", FS: fs, ReadOnly: true, BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	st := statusOf(t, ro, "vm")
	if st.Active != g+1 || len(st.Generations) != 2 || !st.Generations[0].Frozen || st.Generations[1].Disks[0].DataBlocks != 1 {
		t.Fatalf("read-only status:\n%s", dumpStatus(ro))
	}
	n := 0
	if err := ro.ReadGeneration("vm", g, func(Record) error { n++; return nil }); err != nil || n != 2 {
		t.Fatalf("read-only ReadGeneration: %d records, %v", n, err)
	}
	if _, err := ro.Rotate("vm"); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only Rotate: %v", err)
	}
	if _, err := ro.OpenDisk("vm/a.img", 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only OpenDisk: %v", err)
	}
	ro.Close()
	// Still clean for a writer afterwards.
	l = openMem(t, fs, bs)
	defer l.Close()
	if !l.Clean() {
		t.Fatal("a read-only Open made the log unclean")
	}
}
