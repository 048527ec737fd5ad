package main

import (
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/orchestrator"
)

var (
	killSeed   = flag.Uint64("kill-seed", 0, "seed of TestKillNineCycles (0: from the clock)")
	killCycles = flag.Int("kill-cycles", 20, "kill -9 cycles of TestKillNineCycles")
)

// findLine returns the first line of text that contains sub, or "".
func findLine(text, sub string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

// recoveredRx matches the mount's account of a recovery from a crash.
var recoveredRx = regexp.MustCompile(`(\d+) change\(s\) in flight recorded again \(([^)]+) read from the disks\)`)

// TestKillNineCycles: kill -9 of a replicating mount at random moments
// under random O_DIRECT writers that fsync now and then. After each kill
// the mount starts again, recovers from its in-flight table without
// flagging the disk (it says what it read again: at most the writes that
// were in flight), stops cleanly, and drfs verify finds the replica equal
// to the source. Replay with -kill-seed; -kill-cycles 100 for the
// issue's run.
func TestKillNineCycles(t *testing.T) {
	needFUSE(t)
	s := *killSeed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -kill-seed %d -kill-cycles %d)", s, s, *killCycles)
	rng := rand.New(rand.NewPCG(s, 23))
	const size, writers, maxWrite = 16 << 20, 4, 64 << 10
	d := newDirsSize(t, size)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	args := []string{"--target", tgt, "--interval", "1s", "--resync-window", "always"}
	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	var reread []int64
	var acked int
	for cycle := range *killCycles {
		m := startMount(t, d.src, d.mnt, d.state, args...)
		var wg sync.WaitGroup
		var mu sync.Mutex
		for w := range writers {
			wrng := rand.New(rand.NewPCG(s, uint64(cycle*writers+w)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := randomDirectWrites(disk, wrng, size, maxWrite)
				mu.Lock()
				acked += n
				mu.Unlock()
			}()
		}
		time.Sleep(time.Duration(50+rng.IntN(1500)) * time.Millisecond)
		m.kill(t)
		wg.Wait()

		m = startMount(t, d.src, d.mnt, d.state, args...)
		line := findLine(m.stderr.String(), "in-flight table")
		sub := recoveredRx.FindStringSubmatch(line)
		if sub == nil {
			m.stop(t)
			t.Fatalf("cycle %d: the mount did not say how it recovered from the kill:\n%s", cycle, m.stderr)
		}
		inFlight, _ := strconv.Atoi(sub[1])
		n, err := units.ParseSize(sub[2])
		if err != nil {
			t.Fatal(err)
		}
		reread = append(reread, n)
		if inFlight > writers || n > int64(inFlight)*(maxWrite+8<<10) {
			t.Errorf("cycle %d: %d change(s) in flight and %s read again; %d writers of at most %s each were running",
				cycle, inFlight, sub[2], writers, units.Bytes(maxWrite))
		}
		if ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img"); ds.Resync {
			t.Errorf("cycle %d: the disk is flagged after a kill -9: %s", cycle, ds.Reason)
		}
		m.stop(t)
		verifyInSync(t, tgt, d.src, "vm1")
		if t.Failed() {
			t.Fatalf("cycle %d failed (seed %d)", cycle, s)
		}
	}
	slices.Sort(reread)
	t.Logf("%d cycles, %d writes acknowledged; read again per recovery: median %s, max %s (the disk is %s)",
		len(reread), acked, units.Bytes(reread[len(reread)/2]), units.Bytes(reread[len(reread)-1]), units.Bytes(size))
}

// randomDirectWrites writes random bytes at random 4 KiB-aligned places of
// the file through O_DIRECT, 4 KiB to max bytes at a time, with an fsync
// after about one write in eight, until a write fails (the mount was
// killed). It returns how many writes were acknowledged.
func randomDirectWrites(path string, rng *rand.Rand, size, max int64) int {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return 0
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, int(max), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return 0
	}
	defer unix.Munmap(buf)
	acked := 0
	for {
		n := (1 + rng.Int64N(max/4096)) * 4096
		for i := range buf[:n] {
			buf[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(buf[:n], rng.Int64N((size-n)/4096+1)*4096); err != nil {
			return acked
		}
		acked++
		if rng.IntN(8) == 0 && f.Sync() != nil {
			return acked
		}
	}
}

// TestHostCrashHotExtents: after a crash of the host the agent compares
// only the hot extents its activity log names, at once although the
// resync window never opens, finds there a write whose log record the
// crash lost, and is Protected again with a replica equal to the source.
// drfs log before the restart says what will be recovered.
//
// The crash is simulated: the in-flight table is removed (its pages are
// never synced, so a power loss takes it), a write is made to the disk's
// file in a hot extent behind the log's back (one that reached the file
// while its record was lost), and the host "boots" after it
// (DRFS_TEST_BOOT_TIME). The QEMU power-cut test loses the page cache for
// real.
func TestHostCrashHotExtents(t *testing.T) {
	needFUSE(t)
	d := newDirsSize(t, 256<<20)
	tgt := "dir://" + t.TempDir()
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	args := []string{"--target", tgt, "--interval", "1s", "--resync-window", "never"}
	a := startAgent(t, d, socket, args...)
	if out, err := drfsRun(t, "protect", "vm1", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1: %v\n%s", err, out)
	}
	rng := rand.New(rand.NewPCG(seed(t), 31))
	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	writeRandom(t, rng, disk, 256<<20, 20)
	// Shipped, and cooled: an extent leaves the activity log after a
	// whole cooling period (5 s) without changes, at the sync after it.
	time.Sleep(11 * time.Second)
	// Two hot extents, written just before the crash.
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	hot := []int64{100<<20 + 8192, 200<<20 + 4096}
	for _, off := range hot {
		b := make([]byte, 8192)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	a.kill(t)
	if err := os.Remove(filepath.Join(d.state, "inflight")); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(d.src, "vm1", "disk.img")
	sf, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	lost := make([]byte, 4096)
	for i := range lost {
		lost[i] = byte(rng.Uint32())
	}
	if _, err := sf.WriteAt(lost, hot[1]+64<<10); err != nil {
		t.Fatal(err)
	}
	sf.Close()
	time.Sleep(10 * time.Millisecond)
	t.Setenv("DRFS_TEST_BOOT_TIME", strconv.FormatInt(time.Now().UnixNano(), 10))

	out, err := drfsRun(t, "log", d.state)
	if err != nil || !strings.Contains(out, "recovering ") || !strings.Contains(out, "hot extent(s)") || strings.Contains(out, "REQUIRED") {
		t.Errorf("drfs log after the crash, before the restart: %v\n%s", err, out)
	}
	a = startAgent(t, d, socket, args...)
	waitState(t, a, "vm1", orchestrator.Protected)
	line := findLine(a.stderr.String(), "resync against point")
	m := regexp.MustCompile(`(\d+) chunks compared`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no resync after the crash:\n%s", a.stderr)
	}
	t.Log(findLine(a.stderr.String(), "hot extent(s)"))
	t.Log(line)
	// The 4 chunks of 1 MiB of each hot extent, then 16 of 64 KiB and 16
	// of 4 KiB inside the one that differs: far less than the disk's 256
	// chunks of 1 MiB. What it sends is the lost write.
	if n, _ := strconv.Atoi(m[1]); n > 64 || !strings.Contains(line, "sending 4.0 KiB") {
		t.Errorf("the resync compared %s chunks and sent: %s", m[1], line)
	}
	a.stop(t)
	verifyInSync(t, tgt, d.src, "vm1")
}
