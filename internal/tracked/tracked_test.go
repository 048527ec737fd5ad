package tracked_test

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/internal/replay"
	"github.com/drfs-project/drfs/internal/tracked"
	"github.com/drfs-project/drfs/tracker"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the randomized model test (0: pick one and print it)")

const blockSize = 4096

// rig is a real tracking mount in-process: a source directory, a FUSE mount
// of it, a change log, and a replica directory that replayed generations go to.
type rig struct {
	t                     *testing.T
	src, mnt, state, repl string
	log                   *tracker.Log
	srv                   *drfsfs.Server
	replayed              map[string]uint64 // vm -> newest generation replayed
}

func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

// newRig creates the source with setup, copies it to the replica as the
// state at mount time, and mounts.
func newRig(t *testing.T, setup func(src string)) *rig {
	needFUSE(t)
	dir := t.TempDir()
	r := &rig{t: t, src: filepath.Join(dir, "src"), mnt: filepath.Join(dir, "mnt"),
		state: filepath.Join(dir, "state"), repl: filepath.Join(dir, "replica"), replayed: map[string]uint64{}}
	for _, d := range []string{r.src, r.mnt, r.repl} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if setup != nil {
		setup(r.src)
	}
	// The replica starts as the source at mount time, laid out per VM.
	entries, err := os.ReadDir(r.src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			copyTree(t, filepath.Join(r.src, e.Name()), filepath.Join(r.repl, e.Name()))
		} else {
			copyTree(t, filepath.Join(r.src, e.Name()), filepath.Join(r.repl, e.Name(), e.Name()))
		}
	}
	r.log, err = tracker.Open(tracker.Options{Dir: r.state, Source: r.src, BlockSize: blockSize})
	if err != nil {
		t.Fatal(err)
	}
	r.srv, err = drfsfs.Mount(r.src, r.mnt, tracked.Recorder(r.log), drfsfs.Options{})
	if err != nil {
		r.log.Close()
		t.Fatal(err)
	}
	t.Cleanup(r.close)
	return r
}

func (r *rig) close() {
	if r.srv != nil {
		if err := r.srv.Unmount(); err != nil {
			r.t.Errorf("unmount: %v", err)
			exec.Command("umount", "-l", r.mnt).Run()
		}
		r.srv = nil
	}
	if r.log != nil {
		if err := r.log.Close(); err != nil {
			r.t.Errorf("closing the log: %v", err)
		}
		r.log = nil
	}
}

// rotate freezes vm's generation and replays every frozen generation not yet
// replayed onto the replica, in order, then drops it from the log.
func (r *rig) rotate(vm string) {
	r.t.Helper()
	if _, err := r.log.Rotate(vm); err != nil {
		r.t.Fatalf("rotate %s: %v", vm, err)
	}
	for _, gen := range r.log.Frozen(vm) {
		if gen <= r.replayed[vm] {
			r.t.Fatalf("%s: frozen generation %d listed again after %d was replayed", vm, gen, r.replayed[vm])
		}
		if err := replay.Generation(r.log, vm, gen, filepath.Join(r.repl, vm), blockSize); err != nil {
			r.t.Fatalf("replay %s generation %d: %v", vm, gen, err)
		}
		if err := r.log.Drop(vm, gen); err != nil {
			r.t.Fatalf("drop %s generation %d: %v", vm, gen, err)
		}
		r.replayed[vm] = gen
	}
}

// sourcePath maps a VM's disk to its backing file in the source.
func (r *rig) sourcePath(vm, disk string) string {
	if vm == disk {
		if st, err := os.Stat(filepath.Join(r.src, vm)); err == nil && !st.IsDir() {
			return filepath.Join(r.src, vm)
		}
	}
	return filepath.Join(r.src, vm, filepath.FromSlash(disk))
}

// sameAsSource fails unless the replica of each named disk equals the source.
func (r *rig) sameAsSource(vm string, disks ...string) {
	r.t.Helper()
	for _, d := range disks {
		want, err := os.ReadFile(r.sourcePath(vm, d))
		if err != nil {
			r.t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(r.repl, vm, filepath.FromSlash(d)))
		if err != nil {
			r.t.Fatalf("replica of %s/%s: %v", vm, d, err)
		}
		if !bytes.Equal(got, want) {
			r.t.Fatalf("replica of %s/%s differs from the source: %s", vm, d, firstDiff(got, want))
		}
	}
}

func firstDiff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("size %d, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("first differing byte at %d (block %d)", i, i/blockSize)
		}
	}
	return "equal"
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "--sparse=always", "-T", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp %s %s: %v: %s", from, to, err, out)
	}
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// TestModelRandomOps drives random pwrite, punch hole, zero range, truncate
// and copy_file_range through the mount, with random rotations; after every
// rotation the replica (initial image + replayed generations) must equal the
// source byte for byte, on every disk of the VM at the same cut.
func TestModelRandomOps(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed %d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	const diskSize = 8 << 20
	disks := []string{"d0.img", "sub/d1.img"}
	r := newRig(t, func(src string) {
		os.MkdirAll(filepath.Join(src, "vm1", "sub"), 0o755)
		for i, d := range disks {
			f, err := os.Create(filepath.Join(src, "vm1", d))
			if err != nil {
				t.Fatal(err)
			}
			// Some data, some holes: the first disk is dense in its first half.
			if i == 0 {
				f.WriteAt(randomBytes(rng, diskSize/2), 0)
			}
			f.Truncate(diskSize)
			f.Close()
		}
		os.WriteFile(filepath.Join(src, "solo.img"), randomBytes(rng, 1<<20), 0o644)
	})
	files := map[string]*os.File{}
	for _, d := range disks {
		f, err := os.OpenFile(filepath.Join(r.mnt, "vm1", d), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[d] = f
	}
	solo, err := os.OpenFile(filepath.Join(r.mnt, "solo.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer solo.Close()

	ops := 400
	if testing.Short() {
		ops = 100
	}
	counts := map[string]int{}
	for i := 0; i < ops; i++ {
		f := files[disks[rng.IntN(len(disks))]]
		if rng.IntN(8) == 0 {
			f = solo
		}
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		size := st.Size()
		off := rng.Int64N(diskSize)
		if rng.IntN(2) == 0 {
			off &^= blockSize - 1
		}
		n := 1 + rng.Int64N(1<<20)
		if rng.IntN(3) == 0 {
			n = 1 + rng.Int64N(3*blockSize)
		}
		switch op := rng.IntN(20); {
		case op < 11:
			counts["pwrite"]++
			if _, err := f.WriteAt(randomBytes(rng, int(n)), off); err != nil {
				t.Fatalf("op %d pwrite: %v", i, err)
			}
		case op < 13:
			counts["punch"]++
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
				t.Fatalf("op %d punch hole: %v", i, err)
			}
		case op < 15:
			counts["zero"]++
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE, off, n); err != nil {
				t.Fatalf("op %d zero range: %v", i, err)
			}
		case op < 17:
			counts["truncate"]++
			newSize := max(0, size+rng.Int64N(2<<20)-(1<<20))
			if err := f.Truncate(newSize); err != nil {
				t.Fatalf("op %d truncate: %v", i, err)
			}
		default:
			counts["copy_file_range"]++
			from := files[disks[rng.IntN(len(disks))]]
			if from == f {
				continue
			}
			fst, _ := from.Stat()
			if fst.Size() == 0 {
				continue
			}
			inOff := rng.Int64N(fst.Size())
			m := min(n, fst.Size()-inOff)
			if _, err := unix.CopyFileRange(int(from.Fd()), &inOff, int(f.Fd()), &off, int(m), 0); err != nil {
				t.Fatalf("op %d copy_file_range: %v", i, err)
			}
		}
		if rng.IntN(25) == 0 {
			counts["rotate"]++
			r.rotate("vm1")
			r.sameAsSource("vm1", disks...)
			r.rotate("solo.img")
			r.sameAsSource("solo.img", "solo.img")
		}
	}
	r.rotate("vm1")
	r.sameAsSource("vm1", disks...)
	r.rotate("solo.img")
	r.sameAsSource("solo.img", "solo.img")
	t.Logf("ops: %v", counts)
}

// TestExt4OnLoop runs a real workload: ext4 made and filled through a loop
// device on a disk in the mount. The replayed replica must pass e2fsck and
// hold the same files.
func TestExt4OnLoop(t *testing.T) {
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	r := newRig(t, func(src string) {
		os.MkdirAll(filepath.Join(src, "web"), 0o755)
		f, err := os.Create(filepath.Join(src, "web", "disk0.img"))
		if err != nil {
			t.Fatal(err)
		}
		f.Truncate(128 << 20)
		f.Close()
	})
	rng := rand.New(rand.NewPCG(1, 2))
	files := map[string][]byte{}
	for i := 0; i < 40; i++ {
		files[fmt.Sprintf("dir%d/file%d", i%5, i)] = randomBytes(rng, 1+rng.IntN(600<<10))
	}
	withExt4(t, filepath.Join(r.mnt, "web", "disk0.img"), true, func(root string) {
		for name, data := range files {
			os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755)
			if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	r.rotate("web")
	r.sameAsSource("web", "disk0.img")
	replica := filepath.Join(r.repl, "web", "disk0.img")
	if out, err := exec.Command("e2fsck", "-fn", replica).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn on the replica: %v\n%s", err, out)
	}
	withExt4(t, replica, false, func(root string) {
		for name, data := range files {
			got, err := os.ReadFile(filepath.Join(root, name))
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("replica file %s differs (err %v)", name, err)
			}
		}
	})
}

// withExt4 attaches image to a loop device (making ext4 on it when mkfs),
// mounts it, runs fn on the mounted root and detaches everything.
func withExt4(t *testing.T, image string, mkfs bool, fn func(root string)) {
	t.Helper()
	out, err := exec.Command("losetup", "-f", "--show", image).Output()
	if err != nil {
		t.Fatalf("losetup %s: %v", image, err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	if mkfs {
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4: %v: %s", err, out)
		}
	}
	root := t.TempDir()
	if out, err := exec.Command("mount", dev, root).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", dev, err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", root).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", root, err, out)
		}
	}()
	fn(root)
	unix.Sync()
}

// TestQcow2 creates a qcow2 image through the mount and writes to it with
// qemu-io (every cluster allocation arrives as a zero-range); the replica
// must pass qemu-img check and compare equal.
func TestQcow2(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	r := newRig(t, func(src string) { os.MkdirAll(filepath.Join(src, "db"), 0o755) })
	img := filepath.Join(r.mnt, "db", "disk.qcow2")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", img, "256M")
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 3M", "-c", "write -P 0xcd 100M 64k",
		"-c", "write -z 1M 512k", "-c", "discard 2M 64k", "-c", "write -P 0x11 255M 1M", img)
	r.rotate("db")
	run("qemu-io", "-f", "qcow2", "-t", "none", "-c", "write -P 0x22 10M 128k", "-c", "flush", img)
	r.rotate("db")
	r.sameAsSource("db", "disk.qcow2")
	replica := filepath.Join(r.repl, "db", "disk.qcow2")
	run("qemu-img", "check", replica)
	run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", img, replica)
}

var _ io.ReaderAt = (*os.File)(nil)
