package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/target"
)

// newDirsSize is newDirs with a disk of size bytes.
func newDirsSize(t *testing.T, size int64) dirs {
	d := newDirs(t)
	if err := os.Truncate(filepath.Join(d.src, "vm1", "disk.img"), size); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitStderr waits until the mount's output matches re at least n times,
// and returns the matches.
func waitStderr(t *testing.T, m *mounted, re string, n int, timeout time.Duration) [][]string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(timeout)
	for {
		if all := rx.FindAllStringSubmatch(m.stderr.String(), -1); len(all) >= n {
			return all
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d line(s) matching %q within %v:\n%s", n, re, timeout, m.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// behindBack writes k random 4 KiB blocks into the source file directly,
// where the tracker cannot see them: only a resync finds them.
func behindBack(t *testing.T, rng *rand.Rand, path string, size int64, k int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for range k {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf, rng.Int64N(size/4096)*4096); err != nil {
			t.Fatal(err)
		}
	}
}

func verifyInSync(t *testing.T, tgt, src, vm string) {
	t.Helper()
	if out, err := drfsRun(t, "verify", "--target", tgt, "--source", src, vm); err != nil || !strings.Contains(out, "in sync") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
}

var seedFlag = flag.Uint64("seed", 0, "base seed of the randomized end-to-end tests (0: from the clock); each prints its own")

// seeds counts, per test, the seeds seed has given it.
var seeds sync.Map // test name → *atomic.Uint64

// seed returns a seed for a randomized step of the test t: the test's base
// seed (-seed, or the clock), plus how many seeds it took before. The
// first call prints the base and how to replay the test with it.
func seed(t *testing.T) uint64 {
	t.Helper()
	n, loaded := seeds.LoadOrStore(t.Name(), new(atomic.Uint64))
	k := n.(*atomic.Uint64).Add(1) - 1
	base := *seedFlag
	if base == 0 {
		v, _ := seeds.LoadOrStore(t.Name()+"\x00base", uint64(time.Now().UnixNano()))
		base = v.(uint64)
	}
	if !loaded {
		t.Logf("seed %d (replay with: go test ./cmd/drfs -run '^%s$' -seed %d)", base, t.Name(), base)
	}
	return base + k
}

func TestResyncWindowDefault(t *testing.T) {
	if w, _ := orchestrator.ParseWindow("18:00-08:00,sat,sun"); w.String() != orchestrator.DefaultWindow().String() {
		t.Errorf("--resync-window's default is not orchestrator.DefaultWindowSpec %q", orchestrator.DefaultWindowSpec)
	}
}

// TestResyncWaitsForWindow: a resync asked for without --now waits for
// the window ("never" here); meanwhile replication goes on, its points are
// of kind resync (not crash-consistent), and status and log say why and
// when it runs; --now runs it, and the next point is consistent again.
func TestResyncWaitsForWindow(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	rng := rand.New(rand.NewPCG(seed(t), 1))
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--resync-window", "never")
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 20)
	waitCut(t, d.state, "vm1", time.Now())
	behindBack(t, rng, filepath.Join(d.src, "vm1", "disk.img"), 64<<20, 3)

	out, err := drfsRun(t, "resync", d.state, "vm1")
	if err != nil || !strings.Contains(out, "it never opens") {
		t.Fatalf("drfs resync without --now: %v\n%s", err, out)
	}
	cut := waitCut(t, d.state, "vm1", time.Now())
	if out, _ := drfsRun(t, "status", d.state); !strings.Contains(out, "resync window is never") {
		t.Errorf("drfs status does not say the resync waits:\n%s", out)
	}
	if out, _ := drfsRun(t, "log", d.state); !strings.Contains(out, "REQUIRED") || !strings.Contains(out, "drfs resync --now runs it") {
		t.Errorf("drfs log does not say the resync waits:\n%s", out)
	}
	if strings.Contains(m.stderr.String(), "resync against point") {
		t.Fatalf("the resync ran outside its window:\n%s", m.stderr)
	}

	if out, err := drfsRun(t, "resync", d.state, "vm1", "--now"); err != nil || !strings.Contains(out, "next replication round") {
		t.Fatalf("drfs resync --now: %v\n%s", err, out)
	}
	waitStderr(t, m, `3 differ: sending 12\.0 KiB`, 1, 30*time.Second)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	pts := points(t, tgt, "vm1")
	for _, p := range pts {
		if p.Generation == cut && p.Kind != target.KindResync {
			t.Errorf("point %d, shipped while a disk waited for its resync, is of kind %s", cut, p.Kind)
		}
	}
	// A fuzzy point is refused by restore and failover unless forced.
	to := filepath.Join(t.TempDir(), "r")
	if out, err := drfsRun(t, "restore", "--target", tgt, "vm1", "--point", fmt.Sprint(cut), "--to", to); err == nil || !strings.Contains(out, "fuzzy") {
		t.Errorf("restore of fuzzy point %d: %v\n%s", cut, err, out)
	}
	if out, err := drfsRun(t, "failover", "vm1", "--type", "test", "--target", tgt, "--point", fmt.Sprint(cut), "--to", to); err == nil || !strings.Contains(out, "fuzzy") {
		t.Errorf("test failover to fuzzy point %d: %v\n%s", cut, err, out)
	}
	if k := pts[len(pts)-1].Kind; !k.Consistent() {
		t.Errorf("the newest point after the resync is of kind %s", k)
	}
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))
	verifyInSync(t, tgt, d.src, "vm1")
}

// TestResyncThreshold: a disk whose change log reaches the threshold is
// flagged with the reason and resynchronized.
func TestResyncThreshold(t *testing.T) {
	needFUSE(t)
	t.Setenv("DRFS_TEST_RESYNC_MIN_LOG", "1")
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "2s", "--resync-window", "always", "--resync-threshold", "10%")
	waitCut(t, d.state, "vm1", time.Now())
	// 32 MiB of new data in one burst: whichever rounds it is split across,
	// one holds at least 16 MiB, over 10% of 64 MiB.
	f, err := os.OpenFile(filepath.Join(d.mnt, "vm1", "disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed(t), 2))
	buf := make([]byte, 1<<20)
	for i := range 32 {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		f.WriteAt(buf, int64(i)*2<<20)
	}
	f.Close()
	waitStderr(t, m, `resynchronization required: change log reached 10% of the disk \(\d+\.\d MiB of 64\.0 MiB\)`, 1, 30*time.Second)
	waitStderr(t, m, `resync against point`, 1, 30*time.Second)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))
	verifyInSync(t, tgt, d.src, "vm1")
}

// TestResyncEditedWhileUnmounted: a disk changed while no mount tracked it
// is resynchronized at the next mount.
func TestResyncEditedWhileUnmounted(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	rng := rand.New(rand.NewPCG(seed(t), 3))
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--resync-window", "always")
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 10)
	m.stop(t)
	behindBack(t, rng, filepath.Join(d.src, "vm1", "disk.img"), 64<<20, 4)
	m = startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--resync-window", "always")
	waitStderr(t, m, `4 differ: sending 16\.0 KiB`, 1, 30*time.Second)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))
	verifyInSync(t, tgt, d.src, "vm1")
}

// TestResyncWritesThroughout: a random writer runs before, during and
// after the resync of a 128 MiB disk; after the final rotation the latest
// point equals the source byte for byte.
func TestResyncWritesThroughout(t *testing.T) {
	needFUSE(t)
	const size = 128 << 20
	t.Setenv("DRFS_TEST_RESYNC_WINDOW", "8388608")
	t.Setenv("DRFS_TEST_RESYNC_PACE", "100ms")
	d := newDirsSize(t, size)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	s := seed(t)
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--resync-window", "always")
	waitCut(t, d.state, "vm1", time.Now())
	f, err := os.OpenFile(filepath.Join(d.mnt, "vm1", "disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(s, 4))
		for {
			select {
			case <-stop:
				return
			default:
			}
			buf := make([]byte, 1+rng.IntN(128<<10))
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if _, err := f.WriteAt(buf, rng.Int64N(size-int64(len(buf)))); err != nil {
				t.Errorf("write: %v", err)
				return
			}
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
		}
	}()
	behindBack(t, rand.New(rand.NewPCG(s, 5)), filepath.Join(d.src, "vm1", "disk.img"), size, 8)
	if out, err := drfsRun(t, "resync", d.state, "vm1", "--now"); err != nil {
		t.Fatalf("drfs resync --now: %v\n%s", err, out)
	}
	waitStderr(t, m, `resync compared`, 2, 30*time.Second) // the comparison runs while the writer does
	waitStderr(t, m, `resync against point`, 1, 30*time.Second)
	waitCut(t, d.state, "vm1", time.Now())
	close(stop)
	wg.Wait()
	f.Close()
	m.stop(t)
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))
	verifyInSync(t, tgt, d.src, "vm1")
}

// TestResyncResumesAfterKill: the mount is killed in the middle of a
// resync's comparison of a 256 MiB disk; the next mount resumes it from
// its cursor, even outside its resync window ("never"), since it had
// started, and the replica ends byte-identical to the source.
func TestResyncResumesAfterKill(t *testing.T) {
	needFUSE(t)
	const size = 256 << 20
	t.Setenv("DRFS_TEST_RESYNC_WINDOW", "4194304")
	t.Setenv("DRFS_TEST_RESYNC_PACE", "60ms")
	d := newDirsSize(t, size)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	rng := rand.New(rand.NewPCG(seed(t), 6))
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--resync-window", "always")
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), size, 20)
	waitCut(t, d.state, "vm1", time.Now())
	behindBack(t, rng, filepath.Join(d.src, "vm1", "disk.img"), size, 16)
	if out, err := drfsRun(t, "resync", d.state, "vm1", "--now"); err != nil {
		t.Fatalf("drfs resync --now: %v\n%s", err, out)
	}
	// The cursor is saved with each progress line, every 2 seconds: after
	// the second one it is well into the disk.
	waitStderr(t, m, `resync compared`, 2, 30*time.Second)
	m.kill(t)
	if strings.Contains(m.stderr.String(), "resync against point") {
		t.Fatalf("the comparison ended before the kill:\n%s", m.stderr)
	}

	m = startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--resync-window", "never")
	got := waitStderr(t, m, `resync resumed from its cursor at (\d+\.\d [KMG]iB)`, 1, 30*time.Second)
	t.Logf("resumed at %s", got[0][1])
	waitStderr(t, m, `resync against point`, 1, 30*time.Second)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	if strings.Contains(m.stderr.String(), "resync started over") {
		t.Errorf("the resync started over:\n%s", m.stderr)
	}
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))
	verifyInSync(t, tgt, d.src, "vm1")
}
