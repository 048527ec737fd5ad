package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/orchestrator"
)

// scrapeSent returns the agent's drfs_shipped_bytes_total of vm.
func scrapeSent(t *testing.T, a *runningAgent, vm string) uint64 {
	t.Helper()
	body := scrapeMetrics(t, a)
	v := regexp.MustCompile(`(?m)^drfs_shipped_bytes_total\{vm="` + regexp.QuoteMeta(vm) + `"\} (\S+)$`).FindSubmatch(body)
	if v == nil {
		t.Fatalf("no drfs_shipped_bytes_total of %s in:\n%s", vm, body)
	}
	n, err := strconv.ParseFloat(string(v[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(n)
}

// writeAt writes data at off of the file at path, past any mount.
func writeAt(t *testing.T, path string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

// randomBytes returns n bytes that LZ4 cannot compress.
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

// TestInitialCopyCounted: the bytes of the initial replication count, once,
// in drfs status's SENT (bytes_sent) and in drfs_shipped_bytes_total, and
// the rounds after it add theirs.
func TestInitialCopyCounted(t *testing.T) {
	needFUSE(t)
	d := newDirs(t) // vm1/disk.img, 64 MiB, sparse
	rng := rand.New(rand.NewPCG(seed(t), 31))
	const data = 8 << 20
	writeAt(t, filepath.Join(d.src, "vm1", "disk.img"), randomBytes(rng, data), 16<<20)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.state), "target")
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	a := startAgent(t, d, socket, "--target", tgt, "--metrics-listen", "127.0.0.1:0")
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "1s", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1 --wait: %v\n%s\n%s", err, out, a.stderr)
	}
	before := waitState(t, a, "vm1", orchestrator.Protected).BytesSent
	sent := scrapeSent(t, a, "vm1")
	after := vmStatus(t, socket, "vm1").BytesSent
	// The copy's stream carries the 8 MiB raw (a dir:// target gets no
	// LZ4) with its framing; counted twice it would be 16 MiB.
	if before < data || before > data+data/4 {
		t.Errorf("bytes_sent after the initial replication of %d bytes of data: %d", data, before)
	}
	if sent < before || sent > after {
		t.Errorf("drfs_shipped_bytes_total %d disagrees with bytes_sent (%d, then %d)", sent, before, after)
	}
	out, _ := drfsRun(t, "status", "vm1", "--socket", socket)
	if !regexp.MustCompile(`vm1\s.*\s8\.\d+ MiB\s`).MatchString(out) {
		t.Errorf("drfs status does not show the initial copy's 8 MiB sent:\n%s", out)
	}

	// A round's bytes add to the copy's.
	writeAt(t, filepath.Join(d.mnt, "vm1", "disk.img"), randomBytes(rng, 1<<20), 40<<20)
	deadline := time.Now().Add(30 * time.Second)
	for vmStatus(t, socket, "vm1").BytesSent < after+1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("bytes_sent %d 30s after a 1 MiB write, had %d\n%s", vmStatus(t, socket, "vm1").BytesSent, after, a.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := scrapeSent(t, a, "vm1"); n < after+1<<20 {
		t.Errorf("drfs_shipped_bytes_total %d after a 1 MiB write, had %d", n, after)
	}
	a.stop(t)
	if strings.Contains(a.stderr.String(), "LZ4") {
		t.Errorf("the agent says LZ4 of what it shipped to a dir:// target uncompressed:\n%s", a.stderr)
	}
}

// TestFailoverCleanupListsOnce: drfs failover cleanup names each file it
// keeps once, of a VM's test failover and of a plan's, and not the folder
// of a plan's VM that holds one.
func TestFailoverCleanupListsOnce(t *testing.T) {
	vmCopy := func(dir, vm string, extra ...string) {
		t.Helper()
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "disk.img"), []byte("disk"), 0o644)
		for _, name := range extra {
			os.WriteFile(filepath.Join(dir, name), []byte("kept"), 0o644)
		}
		if err := recovery.WriteMarker(dir, recovery.Marker{Type: orchestrator.Test, Target: "dir:///x", VM: vm, Point: 3, Disks: []string{"disk.img"}}); err != nil {
			t.Fatal(err)
		}
	}
	kept := func(out string) []string {
		_, list, ok := strings.Cut(strings.TrimSpace(out), "kept what drfs did not write: ")
		if !ok {
			t.Fatalf("cleanup does not say what it kept:\n%s", out)
		}
		return strings.Fields(list)
	}

	one := filepath.Join(t.TempDir(), "test-copy")
	vmCopy(one, "vm1", "vm.xml")
	out, err := drfsRun(t, "failover", "cleanup", one)
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	if got, want := kept(out), []string{filepath.Join(one, "vm.xml")}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("cleanup of a VM's test failover kept %q, want %q:\n%s", got, want, out)
	}

	plan := filepath.Join(t.TempDir(), "plan-copy")
	vmCopy(filepath.Join(plan, "vm1"), "vm1", "vm.xml")
	vmCopy(filepath.Join(plan, "vm2"), "vm2")
	os.WriteFile(filepath.Join(plan, "notes.txt"), []byte("kept"), 0o644)
	if err := recovery.WriteMarker(plan, recovery.Marker{Type: orchestrator.Test, Target: "dir:///x", Plan: "p", VMs: []string{"vm1", "vm2"}}); err != nil {
		t.Fatal(err)
	}
	out, err = drfsRun(t, "failover", "cleanup", plan)
	if err != nil {
		t.Fatalf("cleanup of the plan: %v\n%s", err, out)
	}
	if got, want := kept(out), []string{filepath.Join(plan, "vm1", "vm.xml"), filepath.Join(plan, "notes.txt")}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("cleanup of a plan's test failover kept %q, want %q:\n%s", got, want, out)
	}
	if _, err := os.Stat(filepath.Join(plan, "vm2")); !os.IsNotExist(err) {
		t.Errorf("cleanup left the plan's vm2: %v", err)
	}
}

// TestShipMessageCompression: the mount's "recovery point N on target"
// line gives an LZ4 ratio only when the stream was compressed: never to a
// dir:// target with --compress auto, always to an https:// target with
// --compress lz4.
func TestShipMessageCompression(t *testing.T) {
	needFUSE(t)
	rng := rand.New(rand.NewPCG(seed(t), 32))
	ratio := regexp.MustCompile(`recovery point \d+ on target: .* sent \(LZ4 (\d+\.\d\d)x\)`)

	d := newDirs(t)
	m := startMount(t, d.src, d.mnt, d.state, "--target", "dir://"+filepath.Join(filepath.Dir(d.state), "target"), "--interval", "1s")
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 10)
	m.stop(t)
	if s := m.stderr.String(); !regexp.MustCompile(`recovery point \d+ on target: .* sent \(uncompressed\)`).MatchString(s) || strings.Contains(s, "LZ4") {
		t.Errorf("shipping to a dir:// target with --compress auto: want \"(uncompressed)\" and no LZ4:\n%s", s)
	}

	tgt, tls := serveTarget(t)
	d = newDirs(t)
	m = startMount(t, d.src, d.mnt, d.state, append([]string{"--target", tgt, "--interval", "1s", "--compress", "lz4"}, tls...)...)
	writeAt(t, filepath.Join(d.mnt, "vm1", "disk.img"), bytes.Repeat([]byte("compressible "), 1<<16), 0)
	m.stop(t)
	s := m.stderr.String()
	r := ratio.FindStringSubmatch(s)
	if r == nil || strings.Contains(s, "(uncompressed)") {
		t.Fatalf("shipping to an https:// target with --compress lz4: no LZ4 ratio, or \"(uncompressed)\":\n%s", s)
	}
	if x, _ := strconv.ParseFloat(r[1], 64); x <= 1 {
		t.Errorf("LZ4 ratio %s of repeated text, want above 1:\n%s", r[1], s)
	}
}

// TestVerifyRepairHint: drfs verify of a VM that diverges from its replica
// tells how to repair it where it runs: with no agent answering, both the
// agent's and a plain mount's drfs resync; for a VM an agent protects, the
// drfs resync of that agent's state directory, which then repairs it.
func TestVerifyRepairHint(t *testing.T) {
	needFUSE(t)
	rng := rand.New(rand.NewPCG(seed(t), 33))

	// A plain mount, stopped; the disk changed behind its back.
	d := newDirs(t)
	dirTgt := "dir://" + filepath.Join(filepath.Dir(d.state), "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", dirTgt, "--interval", "1s")
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 5)
	m.stop(t)
	writeAt(t, filepath.Join(d.src, "vm1", "disk.img"), randomBytes(rng, 4096), 1<<20)
	none := filepath.Join(t.TempDir(), "none.sock")
	out, err := drfsRun(t, "verify", "--target", dirTgt, "--source", d.src, "vm1", "--socket", none)
	for _, want := range []string{
		"no drfs agent answers on " + none,
		"under the drfs agent: drfs resync AGENT_STATEDIR vm1 --now",
		"under a plain mount:  drfs resync STATEDIR vm1 --now",
	} {
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("verify of a diverged VM with no agent: %v, want %q in:\n%s", err, want, out)
		}
	}
	if strings.Contains(out, "run drfs mount") {
		t.Errorf("verify still says to run drfs mount:\n%s", out)
	}
	t.Logf("verify with no agent answering:\n%s", out)

	// A VM the agent protects, changed behind its back (verified through
	// drfs target serve: the agent holds its target meanwhile).
	d = newDirs(t)
	tgt, tls := serveTarget(t)
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	a := startAgent(t, d, socket, append([]string{"--target", tgt}, tls...)...)
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "1s", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1 --wait: %v\n%s\n%s", err, out, a.stderr)
	}
	writeAt(t, filepath.Join(d.src, "vm1", "disk.img"), randomBytes(rng, 4096), 1<<20)
	verify := append([]string{"verify", "--target", tgt, "--source", d.src, "vm1", "--socket", socket}, tls...)
	out, err = drfsRun(t, verify...)
	want := fmt.Sprintf("protected by the drfs agent on %s (to %s): to repair it, run drfs resync %s vm1 --now", socket, tgt, d.state)
	if err == nil || !strings.Contains(out, want) || strings.Contains(out, "plain mount") {
		t.Fatalf("verify of a diverged VM the agent protects: %v, want %q (and no plain mount) in:\n%s", err, want, out)
	}
	t.Logf("verify of a VM the agent protects:\n%s", out)
	if out, err := drfsRun(t, "resync", d.state, "vm1", "--now"); err != nil {
		t.Fatalf("drfs resync %s vm1 --now: %v\n%s", d.state, err, out)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, err = drfsRun(t, verify...)
		if err == nil && strings.Contains(out, "in sync") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("verify 60s after the hinted drfs resync: %v\n%s\n%s", err, out, a.stderr)
		}
	}
	a.stop(t)
}
