package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/target"
)

// pointsOf returns the recovery points of vm on tgt (drfs points --json).
func pointsOf(t *testing.T, tgt, vm string) []target.Point {
	t.Helper()
	out, err := exec.Command(drfsBin, "points", "--target", tgt, vm, "--json").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("drfs points %s: %v\n%s%s", vm, err, out, stderr)
	}
	var all map[string][]target.Point
	if err := json.Unmarshal(out, &all); err != nil {
		t.Fatalf("drfs points --json: %v\n%s", err, out)
	}
	return all[vm]
}

// TestProtectSettings: drfs protect of a VM protected already changes its
// interval, retention and max-points in place, says what changed, keeps
// its state and points, and the new settings take effect from the next
// round and survive a restart (kept in the agent's state); another target
// moves the protection there, once it answers.
func TestProtectSettings(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.state), "target")
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	a := startAgent(t, d, socket, "--target", tgt, "--resync-window", "always")
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "2s", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect: %v\n%s\n%s", err, out, a.stderr)
	}
	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	write := func(n int) {
		f, err := os.OpenFile(disk, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 4096)
		for i := range n {
			buf[0] = byte(i + 1)
			if _, err := f.WriteAt(buf, int64(i)*1<<20); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(4)

	out, err := drfsRun(t, "protect", "vm1", "--interval", "1s", "--retention", "1h", "--max-points", "2", "--socket", socket)
	if err != nil {
		t.Fatalf("drfs protect vm1 --interval 1s (protected already): %v\n%s\n%s", err, out, a.stderr)
	}
	for _, want := range []string{"vm1: interval 2s → 1s", "retention 24h → 1h", "max-points no limit → 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("drfs protect with new settings says %q, want %q", out, want)
		}
	}
	check := func(when string) {
		t.Helper()
		v := vmStatus(t, socket, "vm1")
		if v.Interval != "1s" || v.Retention != "1h" || v.MaxPoints != 2 || v.Target != tgt {
			t.Errorf("%s: status shows interval %q, retention %q, max-points %d, target %q; want 1s, 1h, 2, %s",
				when, v.Interval, v.Retention, v.MaxPoints, v.Target, tgt)
		}
		if v.State != orchestrator.Protected {
			t.Errorf("%s: vm1 is %s, want Protected", when, v.State)
		}
	}
	check("after the change")
	if out, _ := drfsRun(t, "status", "vm1", "--socket", socket); !strings.Contains(out, "every 1s to "+tgt+", points kept 1h (at most 2)") {
		t.Errorf("drfs status does not show the new settings:\n%s", out)
	}
	if out, err := drfsRun(t, "protect", "vm1", "--retention", "1h", "--socket", socket); err != nil || !strings.Contains(out, "settings unchanged") {
		t.Errorf("drfs protect with the same settings: %v\n%s", err, out)
	}

	// The new max-points expires the older points from the next rounds
	// (counted once the agent let go of the target).
	for range 4 {
		write(2)
		time.Sleep(1500 * time.Millisecond)
	}
	a.stop(t)
	if n := len(pointsOf(t, tgt, "vm1")); n < 1 || n > 2 {
		t.Errorf("%d points of vm1 on the target with max-points 2\n%s", n, a.stderr)
	}
	a = startAgent(t, d, socket, "--target", tgt, "--resync-window", "always")
	waitState(t, a, "vm1", orchestrator.Protected)
	check("after a restart")

	// Nothing to change is refused, and so is a policy that does not
	// hold.
	if out, err := drfsRun(t, "protect", "vm1", "--socket", socket); err == nil || !strings.Contains(out, "protected already") {
		t.Errorf("drfs protect with no setting: %v\n%s", err, out)
	}
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "2h", "--socket", socket); err == nil || !strings.Contains(out, "retention 1h is out of range") {
		t.Errorf("drfs protect with an interval over the retention: %v\n%s", err, out)
	}
	check("after refused changes")
	verifyInSync(t, tgt, d.src, "vm1")

	// Another target moves the protection there in place, once it
	// answers: the VM keeps its settings, gets an initial copy there, and
	// its points on the old target stay.
	if out, err := drfsRun(t, "protect", "vm1", "--target", "https://127.0.0.1:1", "--socket", socket); err == nil || !strings.Contains(out, "vm1 still replicates to "+tgt) {
		t.Errorf("drfs protect with a target that does not answer: %v\n%s", err, out)
	}
	check("after a target that does not answer")
	kept := len(pointsOf(t, tgt, "vm1"))
	other := "dir://" + filepath.Join(filepath.Dir(d.state), "other")
	out, err = drfsRun(t, "protect", "vm1", "--target", other, "--wait", "--socket", socket)
	if err != nil || !strings.Contains(out, "vm1: target "+tgt+" → "+other) || !strings.Contains(out, "vm1: Protected") {
		t.Fatalf("drfs protect with a new target: %v\n%s\n%s", err, out, a.stderr)
	}
	if v := vmStatus(t, socket, "vm1"); v.Target != other || v.State != orchestrator.Protected || v.Interval != "1s" || v.MaxPoints != 2 {
		t.Errorf("after the move: target %s, %s, interval %s, max-points %d; want %s, Protected, 1s, 2", v.Target, v.State, v.Interval, v.MaxPoints, other)
	}
	write(3)
	a.stop(t)
	verifyInSync(t, other, d.src, "vm1")
	if n := len(pointsOf(t, tgt, "vm1")); n != kept {
		t.Errorf("the old target holds %d point(s) after the move, %d before", n, kept)
	}
}

// TestChangedBehindMount: a process that writes a protected VM's disk in
// the source directory itself, not through the mount, is noticed at the
// next cut: the VM is flagged with why and resynchronizes (window
// always), and the replica is then the disk again. The mount's own writes
// are never taken for such a change.
func TestChangedBehindMount(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.state), "target")
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	a := startAgent(t, d, socket, "--target", tgt, "--resync-window", "always")
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "1s", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect: %v\n%s\n%s", err, out, a.stderr)
	}
	rng := rand.New(rand.NewPCG(seed(t), 3))
	const size = 64 << 20

	// Writes through the mount, a chmod and a touch: the mount's own.
	mounted := filepath.Join(d.mnt, "vm1", "disk.img")
	behindBack(t, rng, mounted, size, 16)
	os.Chmod(mounted, 0o600)
	os.Chtimes(mounted, time.Now(), time.Now())
	time.Sleep(4 * time.Second)
	if v := vmStatus(t, socket, "vm1"); v.State != orchestrator.Protected || strings.Contains(a.stderr.String(), "changed outside the mount") {
		t.Fatalf("after writes through the mount vm1 is %s (%s)\n%s", v.State, v.ResyncReason, a.stderr)
	}

	// A few blocks written into the source file itself.
	behindBack(t, rng, filepath.Join(d.src, "vm1", "disk.img"), size, 4)
	// (The resync, at the round after the flag, may end before a look at
	// the status: the agent's log says it too.)
	deadline := time.Now().Add(30 * time.Second)
	for {
		v := vmStatus(t, socket, "vm1")
		if v.State == orchestrator.Resynchronizing || strings.Contains(v.ResyncReason, "changed outside the mount while mounted") {
			t.Logf("vm1: %s, health %s: %s", v.State, v.Health.Level, v.ResyncReason)
			break
		}
		if strings.Contains(a.stderr.String(), "vm1: Protected → Resynchronizing") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm1 is %s (health %s) 30s after its disk was written behind the mount's back\n%s", v.State, v.Health.Level, a.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(a.stderr.String(), "vm1/disk.img: resynchronization required: changed outside the mount while mounted: ") {
		t.Errorf("the agent did not say why vm1 resynchronizes\n%s", a.stderr)
	}
	// The resync (window always) repairs the replica.
	waitState(t, a, "vm1", orchestrator.Protected)
	if out, err := drfsRun(t, "jobs", "--all", "--vm", "vm1", "--socket", socket); err != nil || !strings.Contains(out, "resync") {
		t.Errorf("no resync job of vm1: %v\n%s", err, out)
	}
	a.stop(t)
	verifyInSync(t, tgt, d.src, "vm1")
	// The point cut when the change was noticed is fuzzy; the resync's,
	// read from a snapshot, is consistent again.
	pts := pointsOf(t, tgt, "vm1")
	fuzzy := slices.IndexFunc(pts, func(p target.Point) bool { return p.Kind == target.KindResync })
	if fuzzy < 0 || !slices.ContainsFunc(pts[fuzzy:], func(p target.Point) bool { return p.Kind == target.KindSnapshot }) {
		t.Errorf("want a fuzzy point, then the resync's consistent one; points: %+v", pts)
	}
}
