package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
)

// TestReadersDuringReplication: while a mount replicates heavy writes to a
// dir:// target every second with a retention of 8 s, other processes use
// the same directory: drfs points, a test failover of an older point and a
// drfs points mount of it, held open past the point's retention. The
// mounted point reads the same bytes before and after its retention
// passed (the pin keeps it), and the same as the test failover's copy and
// as a restore of the point made after replication stopped; it is a
// prefix of the writes (consistent), and replication's own newest point
// equals the source. A second writer is refused with the holder named.
func TestReadersDuringReplication(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	tdir := filepath.Join(filepath.Dir(d.src), "target")
	tgt := "dir://" + tdir
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--retention", "8s")
	rng := rand.New(rand.NewPCG(seed(t), 31))
	base := make([]byte, 64<<20)
	w := &seqWriter{}
	stopWriters := heavyWriters(t, w, filepath.Join(d.mnt, "vm1", "disk.img"), rng, 4096)
	defer func() {
		if stopWriters != nil {
			stopWriters()
		}
	}()

	// An older consistent point, once a few exist.
	var p target.Point
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no two consistent points within 60s")
		}
		pts := slices.DeleteFunc(points(t, tgt, "vm1"), func(p target.Point) bool { return !p.Kind.Consistent() })
		if len(pts) >= 3 {
			p = pts[len(pts)-2]
			break
		}
	}
	t.Logf("point %s, cut %v, of kind %s", p.ID(), p.Frozen, p.Kind)

	// A second writer of the target is refused, naming the first.
	d2 := newDirs(t)
	out, err := drfsRun(t, "mount", d2.src, d2.mnt, "--state", d2.state, "--target", tgt)
	if err == nil || !bytes.Contains([]byte(out), []byte("already open for writing by pid")) {
		t.Errorf("a second mount replicating to the same directory: %v, want the holder named\n%s", err, out)
	}

	pm := startPointsMount(t, tgt, "vm1", p.ID())
	defer pm.stop(t)
	mounted := filepath.Join(pm.dir, "disk.img")
	first, err := os.ReadFile(mounted)
	if err != nil {
		t.Fatal(err)
	}
	failed := filepath.Join(t.TempDir(), "test-failover")
	if out, err := drfsRun(t, "failover", "vm1", "--type", "test", "--target", tgt, "--point", p.ID(), "--to", failed); err != nil {
		t.Fatalf("drfs failover --type test while replicating: %v\n%s", err, out)
	}
	copied, err := os.ReadFile(filepath.Join(failed, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}

	// Past the point's retention, replication goes on and the point stays
	// while it is mounted.
	time.Sleep(time.Until(p.Frozen.Add(12 * time.Second)))
	pts := points(t, tgt, "vm1")
	if !slices.ContainsFunc(pts, func(q target.Point) bool { return q.Generation == p.Generation }) {
		t.Fatalf("point %s expired while mounted: points %v", p.ID(), gensOf(pts))
	}
	if pts[len(pts)-1].Generation <= p.Generation+2 {
		t.Errorf("replication made no new points while readers ran: newest %d", pts[len(pts)-1].Generation)
	}
	again, err := os.ReadFile(mounted)
	if err != nil {
		t.Fatal(err)
	}
	stopWriters()
	stopWriters = nil
	m.stop(t)

	restored := filepath.Join(t.TempDir(), "restore")
	if out, err := drfsRun(t, "restore", "--target", tgt, "vm1", "--point", p.ID(), "--to", restored); err != nil {
		t.Fatalf("restore point %s: %v\n%s", p.ID(), err, out)
	}
	want, err := os.ReadFile(filepath.Join(restored, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string][]byte{"the mounted point": first, "the mounted point past its retention": again, "the test failover's copy": copied} {
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from a restore of point %s made after replication stopped", what, p.ID())
		}
	}
	if k, err := w.checkPrefix(want, base); err != nil {
		t.Errorf("point %s is not consistent: %v", p.ID(), err)
	} else {
		t.Logf("point %s holds writes 1..%d of %d", p.ID(), k, w.acked())
	}
	src, err := os.ReadFile(filepath.Join(d.src, "vm1", "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, tgt, "vm1", "latest", map[string][]byte{"disk.img": src})
}

func gensOf(pts []target.Point) []uint64 {
	var g []uint64
	for _, p := range pts {
		g = append(g, p.Generation)
	}
	return g
}

// pointsMount is a running drfs points mount.
type pointsMount struct {
	dir    string
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

// startPointsMount mounts point id of vm (with extra flags: TLS, an
// overlay) and waits for it.
func startPointsMount(t *testing.T, tgt, vm, id string, extra ...string) *pointsMount {
	t.Helper()
	pm := &pointsMount{dir: filepath.Join(t.TempDir(), "point"), stderr: &syncBuffer{}, done: make(chan error, 1)}
	pm.cmd = exec.Command(drfsBin, append([]string{"points", "mount", "--target", tgt, vm, pm.dir, "--point", id}, extra...)...)
	pm.cmd.Stderr = pm.stderr
	if err := pm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { pm.done <- pm.cmd.Wait() }()
	for deadline := time.Now().Add(20 * time.Second); !isMounted(pm.dir); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-pm.done:
			t.Fatalf("drfs points mount --point %s exited: %v\n%s", id, err, pm.stderr)
		default:
		}
		if time.Now().After(deadline) {
			pm.cmd.Process.Kill()
			t.Fatalf("point %s not mounted after 20s\n%s", id, pm.stderr)
		}
	}
	return pm
}

// stop unmounts with drfs points umount and waits for the command.
func (pm *pointsMount) stop(t *testing.T) {
	t.Helper()
	if pm.cmd == nil {
		return
	}
	if out, err := drfsRun(t, "points", "umount", pm.dir); err != nil {
		t.Errorf("drfs points umount: %v\n%s", err, out)
	}
	select {
	case err := <-pm.done:
		if err != nil {
			t.Errorf("drfs points mount after umount: %v\n%s", err, pm.stderr)
		}
	case <-time.After(20 * time.Second):
		pm.cmd.Process.Kill()
		t.Errorf("drfs points mount still running after umount\n%s", pm.stderr)
	}
	pm.cmd = nil
}
