package main

import (
	"encoding/json"
	"errors"
	"flag"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/target"
)

// Every point listed as consistent is consistent, and the status never says
// better than the truth: these tests drive the built binary.

// heavyWriters runs n sequence-stamping O_DIRECT writers on the first
// nblocks blocks of path until the returned stop is called; w records what
// each acknowledged. They share one seqWriter so that a consistent cut is
// a prefix of one sequence.
func heavyWriters(t *testing.T, w *seqWriter, path string, rng *rand.Rand, nblocks int64) (stop func()) {
	ch := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.run(t, path, rand.New(rand.NewPCG(rng.Uint64(), 9)), nblocks, ch, 0)
	}()
	return func() { close(ch); wg.Wait() }
}

// newestConsistent returns the newest crash-consistent point of pts.
func newestConsistent(t *testing.T, pts []target.Point) target.Point {
	t.Helper()
	for i := len(pts) - 1; i >= 0; i-- {
		if pts[i].Kind.Consistent() {
			return pts[i]
		}
	}
	t.Fatalf("no consistent point among %d", len(pts))
	return target.Point{}
}

// checkConsistentPoints restores the newest few consistent points (and
// every snapshot copy, the points a resync made) of vm1 and checks that
// each is a prefix of w's writes over base.
func checkConsistentPoints(t *testing.T, tgt string, w *seqWriter, base []byte, tls ...string) {
	t.Helper()
	pts := points(t, tgt, "vm1", tls...)
	seen := 0
	for i := len(pts) - 1; i >= 0; i-- {
		p := pts[i]
		if !p.Kind.Consistent() || seen >= 3 && p.Kind != target.KindSnapshot {
			continue
		}
		seen++
		checkPointPrefix(t, tgt, p, w, base, tls...)
	}
}

// checkPointPrefix restores point p of vm1 and checks that its disk is a
// prefix of w's writes over base.
func checkPointPrefix(t *testing.T, tgt string, p target.Point, w *seqWriter, base []byte, tls ...string) {
	t.Helper()
	to := filepath.Join(t.TempDir(), "r")
	defer os.RemoveAll(to)
	if out, err := drfsRun(t, append([]string{"restore", "--target", tgt, "vm1", "--point", p.ID(), "--to", to}, tls...)...); err != nil {
		t.Fatalf("restore point %s: %v\n%s", p.ID(), err, out)
	}
	img, err := os.ReadFile(filepath.Join(to, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	if k, err := w.checkPrefix(img, base); err != nil {
		t.Errorf("point %s (kind %s) is listed as consistent but is not: %v", p.ID(), p.Kind, err)
	} else {
		t.Logf("point %s (%s): writes 1..%d of %d", p.ID(), p.Kind, k, w.acked())
	}
}

// checkRPOTruthful reads the agent's metrics (if a is given), its status,
// then the target's points: the status's newest point must be the cut of
// a consistent point on the target, never of a fuzzy one, and the metric's
// RPO no younger than the status's.
func checkRPOTruthful(t *testing.T, a *runningAgent, socket, tgt string, tls ...string) {
	t.Helper()
	var scraped time.Time
	var rpo float64
	if a != nil {
		scraped = time.Now()
		rpo = scrapeRPO(t, a)
	}
	v := vmStatus(t, socket, "vm1")
	pts := points(t, tgt, "vm1", tls...)
	if v.NewestPoint.IsZero() {
		return
	}
	i := slices.IndexFunc(pts, func(p target.Point) bool { return p.Frozen.Equal(v.NewestPoint) })
	switch {
	case i < 0:
		t.Errorf("status says the newest point was cut at %v (RPO %.1fs): no point on the target was", v.NewestPoint, v.RPO)
	case !pts[i].Kind.Consistent():
		t.Errorf("status counts point %s (kind %s, fuzzy) as its newest point (RPO %.1fs)", pts[i].ID(), pts[i].Kind, v.RPO)
	}
	if a != nil && scraped.Add(-time.Duration(rpo*float64(time.Second))).After(v.NewestPoint.Add(time.Second)) {
		t.Errorf("drfs_rpo_seconds %.1f at %v is younger than the status's newest consistent point, cut at %v", rpo, scraped, v.NewestPoint)
	}
}

// scrapeRPO returns vm1's drfs_rpo_seconds from the agent's metrics.
func scrapeRPO(t *testing.T, a *runningAgent) float64 {
	t.Helper()
	body := scrapeMetrics(t, a)
	v := regexp.MustCompile(`(?m)^drfs_rpo_seconds\{vm="vm1"\} (\S+)$`).FindSubmatch(body)
	if v == nil {
		t.Fatalf("no drfs_rpo_seconds of vm1 in:\n%s", body)
	}
	rpo, err := strconv.ParseFloat(string(v[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return rpo
}

// TestHeavyWriterAgent: a writer that passes the resync threshold every
// round (the threshold taken of the 64 MiB disk itself) for 30 s. The
// agent's points stay consistent, its RPO follows them, a kill -9 leaves a
// consistent point at most the interval and a few seconds old; after a
// restart, a clean stop leaves latest equal to the disk.
func TestHeavyWriterAgent(t *testing.T) {
	needFUSE(t)
	t.Setenv("DRFS_TEST_RESYNC_MIN_LOG", "1")
	s := seed(t)
	rng := rand.New(rand.NewPCG(s, 16))
	d := newDirs(t)
	base := make([]byte, 64<<20)
	tgt, tls := serveTarget(t)
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	args := append([]string{"--target", tgt, "--interval", "2s", "--resync-window", "always", "--resync-threshold", "10%",
		"--metrics-listen", "127.0.0.1:0"}, tls...)
	a := startAgent(t, d, socket, args...)
	if out, err := drfsRun(t, "protect", "vm1", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1: %v\n%s", err, out)
	}
	w := &seqWriter{}
	stop := heavyWriters(t, w, filepath.Join(d.mnt, "vm1", "disk.img"), rng, 16384)
	end := time.Now().Add(30 * time.Second)
	for time.Now().Before(end) {
		time.Sleep(3 * time.Second)
		checkRPOTruthful(t, a, socket, tgt, tls...)
	}
	stop() // the writes acknowledged before the kill are all recorded
	killed := time.Now()
	a.kill(t)
	if !strings.Contains(a.stderr.String(), "change log was dropped") {
		t.Errorf("the log never reached the threshold: the test did not test it\n%s", a.stderr)
	}
	pts := points(t, tgt, "vm1", tls...)
	newest := newestConsistent(t, pts)
	if age := killed.Sub(newest.Frozen); age > 2*time.Second+10*time.Second {
		t.Errorf("at the kill, the newest consistent point (%s, %s) was %v old, want at most the interval and 10s\nagent:\n%s",
			newest.ID(), newest.Kind, age.Round(time.Millisecond), a.stderr)
	}
	t.Logf("%d points, newest consistent %s (%s) %v before the kill", len(pts), newest.ID(), newest.Kind, killed.Sub(newest.Frozen).Round(time.Millisecond))
	checkConsistentPoints(t, tgt, w, base, tls...)

	// Restarted: recovered from the in-flight table; then a clean stop
	// leaves latest equal to the disk.
	a = startAgent(t, d, socket, args...)
	waitState(t, a, "vm1", orchestrator.Protected)
	a.stop(t)
	if out, err := drfsRun(t, append([]string{"verify", "--target", tgt, "--source", d.src, "vm1"}, tls...)...); err != nil {
		t.Errorf("verify after a clean stop: %v\n%s", err, out)
	}
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"), tls...)
}

// TestHeavyWriterStop: a clean stop of the agent right after a writer
// that kept the log over the threshold leaves latest equal to the disks.
func TestHeavyWriterStop(t *testing.T) {
	needFUSE(t)
	t.Setenv("DRFS_TEST_RESYNC_MIN_LOG", "1")
	rng := rand.New(rand.NewPCG(seed(t), 17))
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.state), "target")
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	a := startAgent(t, d, socket, "--target", tgt, "--interval", "2s", "--resync-window", "always", "--resync-threshold", "10%")
	if out, err := drfsRun(t, "protect", "vm1", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1: %v\n%s", err, out)
	}
	w := &seqWriter{}
	stop := heavyWriters(t, w, filepath.Join(d.mnt, "vm1", "disk.img"), rng, 16384)
	time.Sleep(15 * time.Second)
	stop()
	a.stop(t)
	pts := points(t, tgt, "vm1")
	if last := pts[len(pts)-1]; !last.Kind.Consistent() {
		t.Errorf("the last point after a clean stop is of kind %s", last.Kind)
	}
	if out, err := drfsRun(t, "verify", "--target", tgt, "--source", d.src, "vm1"); err != nil {
		t.Errorf("verify against latest after a clean stop: %v\n%s", err, out)
	}
}

// TestHeavyWriterMount: the same writer through a plain drfs mount
// replicating every second, then kill -9: the newest consistent point is
// at most the interval and a few seconds old, and every consistent point
// is a prefix of the writes.
func TestHeavyWriterMount(t *testing.T) {
	needFUSE(t)
	t.Setenv("DRFS_TEST_RESYNC_MIN_LOG", "1")
	rng := rand.New(rand.NewPCG(seed(t), 18))
	d := newDirs(t)
	base := make([]byte, 64<<20)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s", "--resync-window", "always", "--resync-threshold", "10%")
	waitCut(t, d.state, "vm1", time.Now())
	w := &seqWriter{}
	stop := heavyWriters(t, w, filepath.Join(d.mnt, "vm1", "disk.img"), rng, 16384)
	time.Sleep(30 * time.Second)
	out, _ := drfsRun(t, "status", d.state, "--json")
	stop()
	killed := time.Now()
	m.kill(t)
	var st []struct {
		LastConsistent    uint64    `json:"last_consistent"`
		LastConsistentCut time.Time `json:"last_consistent_cut"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 1 {
		t.Fatalf("drfs status --json: %v\n%s", err, out)
	}
	pts := points(t, tgt, "vm1")
	newest := newestConsistent(t, pts)
	if i := slices.IndexFunc(pts, func(p target.Point) bool { return p.Generation == st[0].LastConsistent }); i < 0 || !pts[i].Kind.Consistent() {
		t.Errorf("status named point %d as the newest consistent one; the target has %+v", st[0].LastConsistent, pts)
	}
	if age := killed.Sub(newest.Frozen); age > time.Second+10*time.Second {
		t.Errorf("at the kill, the newest consistent point (%s, %s) was %v old, want at most the interval and 10s",
			newest.ID(), newest.Kind, age.Round(time.Millisecond))
	}
	checkConsistentPoints(t, tgt, w, base)
}

// TestKillDuringInitialCopy: a kill -9 at 30-60% of the initial copy, with
// the resync window never open. The restarted agent copies again from a
// snapshot (the dirty shutdown's flag is moot for a whole copy), reaches
// Protected, and every later point is consistent; the cut-short job is
// shown failed with the progress it reached.
func TestKillDuringInitialCopy(t *testing.T) {
	needFUSE(t)
	rng := rand.New(rand.NewPCG(seed(t), 19))
	d := newDirsSize(t, 128<<20)
	buf := make([]byte, 128<<20)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(filepath.Join(d.src, "vm1", "disk.img"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
	tgt := "dir://" + filepath.Join(filepath.Dir(d.state), "target")
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	args := []string{"--target", tgt, "--interval", "2s", "--resync-window", "never", "--bandwidth", "8MiB/s", "--compress", "none"}
	a := startAgent(t, d, socket, args...)
	if out, err := drfsRun(t, "protect", "vm1", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1: %v\n%s", err, out)
	}
	var job orchestrator.Job
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if v := vmStatus(t, socket, "vm1"); v.Job != nil && v.Job.Kind == orchestrator.JobInitialReplication && v.Job.Progress >= 30 {
			job = *v.Job
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the initial copy did not reach 30%% in 60s\n%s", a.stderr)
		}
	}
	time.Sleep(5 * time.Second) // its progress is saved every 5 s
	a.kill(t)

	a = startAgent(t, d, socket, args[:len(args)-4]...) // no bandwidth limit now
	jobsOut, err := drfsRun(t, "jobs", "--all", "--json", "--socket", socket)
	if err != nil {
		t.Fatalf("drfs jobs: %v\n%s", err, jobsOut)
	}
	var jobs []orchestrator.Job
	if err := json.Unmarshal([]byte(jobsOut), &jobs); err != nil {
		t.Fatalf("drfs jobs --json: %v\n%s", err, jobsOut)
	}
	i := slices.IndexFunc(jobs, func(j orchestrator.Job) bool { return j.ID == job.ID })
	switch {
	case i < 0:
		t.Errorf("job %d, cut short by the kill, vanished: %+v", job.ID, jobs)
	case jobs[i].Kind != orchestrator.JobInitialReplication || jobs[i].State != orchestrator.JobFailed || jobs[i].Progress < 30:
		t.Errorf("job %d after the kill is %+v, want the initial replication failed at 30%% or more", job.ID, jobs[i])
	}
	start := time.Now()
	waitState(t, a, "vm1", orchestrator.Protected)
	t.Logf("Protected %v after the restart", time.Since(start).Round(time.Millisecond))
	if v := vmStatus(t, socket, "vm1"); v.Health.Level != orchestrator.Normal || v.RPO < 0 {
		t.Errorf("vm1 after the restart: health %s, RPO %.1f", v.Health, v.RPO)
	}
	time.Sleep(5 * time.Second)
	a.stop(t)
	for _, p := range points(t, tgt, "vm1") {
		if !p.Kind.Consistent() {
			t.Errorf("point %s after the restart is of kind %s: not consistent", p.ID(), p.Kind)
		}
	}
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))
}

var consistencySeed = flag.Uint64("consistency-seed", 0, "seed of TestConsistencyRandom (0: from the clock)")

// TestConsistencyRandom runs the agent through random steps: a resync
// window always or never open, a resync threshold the writer passes or
// not, a sequence-stamping writer for a random time, and an end by kill -9
// or by a clean stop. After each step every point listed as consistent
// restores to a prefix of the acknowledged writes, and the status never
// says the newest point is younger than the newest consistent one. At the
// end (the window open) the VM is Protected and latest equals the disk.
// Replay a run with -consistency-seed.
func TestConsistencyRandom(t *testing.T) {
	needFUSE(t)
	t.Setenv("DRFS_TEST_RESYNC_MIN_LOG", "1")
	s := *consistencySeed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -consistency-seed %d)", s, s)
	rng := rand.New(rand.NewPCG(s, 20))
	d := newDirs(t)
	base := make([]byte, 64<<20)
	tgt, tls := serveTarget(t)
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	w := &seqWriter{}
	checked := map[uint64]bool{}
	for step := range 5 {
		window := []string{"always", "never"}[rng.IntN(2)]
		threshold := []string{"10%", "50%"}[rng.IntN(2)]
		a := startAgent(t, d, socket, append([]string{"--target", tgt, "--interval", "2s", "--resync-window", window, "--resync-threshold", threshold}, tls...)...)
		if step == 0 {
			if out, err := drfsRun(t, "protect", "vm1", "--wait", "--socket", socket); err != nil {
				t.Fatalf("drfs protect vm1: %v\n%s", err, out)
			}
		}
		dur := time.Duration(2+rng.IntN(7)) * time.Second
		stop := heavyWriters(t, w, filepath.Join(d.mnt, "vm1", "disk.img"), rng, 16384)
		for end := time.Now().Add(dur); time.Now().Before(end); time.Sleep(time.Second) {
			checkRPOTruthful(t, nil, socket, tgt, tls...)
		}
		stop()
		how := "kill -9"
		if rng.IntN(2) == 0 {
			how = "SIGTERM"
			a.stop(t)
		} else {
			a.kill(t)
		}
		pts := points(t, tgt, "vm1", tls...)
		var fresh []target.Point
		for _, p := range pts {
			if !checked[p.Generation] && p.Kind.Consistent() {
				fresh = append(fresh, p)
				checked[p.Generation] = true
			}
		}
		t.Logf("step %d: window %s, threshold %s, %v of writes (%d acknowledged in all), then %s: %d points, %d new consistent ones",
			step, window, threshold, dur, w.acked(), how, len(pts), len(fresh))
		for _, p := range fresh {
			checkPointPrefix(t, tgt, p, w, base, tls...)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	a := startAgent(t, d, socket, append([]string{"--target", tgt, "--interval", "2s", "--resync-window", "always"}, tls...)...)
	waitState(t, a, "vm1", orchestrator.Protected)
	a.stop(t)
	if out, err := drfsRun(t, append([]string{"verify", "--target", tgt, "--source", d.src, "vm1"}, tls...)...); err != nil {
		t.Errorf("verify after the last clean stop: %v\n%s", err, out)
	}
}

// TestAgentResyncWaits: after a kill -9 and a change behind the dead
// agent's back, with the resync window never open, the VM's resync waits: its job is shown waiting (not running at 0%), its
// health is Critical (no consistent point can be made), its RPO is the age
// of the last consistent point; drfs resync --now repairs it.
func TestAgentResyncWaits(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	tgt, tls := serveTarget(t)
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	args := append([]string{"--target", tgt, "--interval", "1s", "--resync-window", "never"}, tls...)
	a := startAgent(t, d, socket, args...)
	if out, err := drfsRun(t, "protect", "vm1", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1: %v\n%s", err, out)
	}
	writeRandom(t, rand.New(rand.NewPCG(seed(t), 21)), filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 10)
	time.Sleep(3 * time.Second)
	a.kill(t)
	last := newestConsistent(t, points(t, tgt, "vm1", tls...))
	time.Sleep(300 * time.Millisecond)
	behindBack(t, rand.New(rand.NewPCG(seed(t), 22)), filepath.Join(d.src, "vm1", "disk.img"), 64<<20, 4)

	a = startAgent(t, d, socket, args...)
	var v agent.VMView
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		v = vmStatus(t, socket, "vm1")
		if v.Job != nil && v.Job.State == orchestrator.JobWaiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no waiting resync job 30s after the restart: %+v\n%s", v, a.stderr)
		}
	}
	time.Sleep(3 * time.Second) // rounds go on meanwhile
	v = vmStatus(t, socket, "vm1")
	if v.State != orchestrator.Resynchronizing || v.Job == nil || v.Job.Kind != orchestrator.JobResync || !strings.Contains(v.Job.Message, "waiting for the resync window never") {
		t.Errorf("vm1 while its resync waits: %s, job %+v", v.State, v.Job)
	}
	if v.Health.Level != orchestrator.Critical || !strings.Contains(v.Health.Reason, "no consistent point can be made") {
		t.Errorf("vm1's health while no consistent point can be made: %s", v.Health)
	}
	if !v.NewestPoint.Equal(last.Frozen) {
		t.Errorf("vm1's newest point while its resync waits is %v, want the last consistent point's cut %v", v.NewestPoint, last.Frozen)
	}
	checkRPOTruthful(t, nil, socket, tgt, tls...)
	out, _ := drfsRun(t, "status", "--socket", socket)
	if !strings.Contains(out, "Critical") {
		t.Errorf("drfs status does not say Critical:\n%s", out)
	}
	var ee *exec.ExitError
	if _, err := drfsRun(t, "status", "--check", "--socket", socket); !errors.As(err, &ee) || ee.ExitCode() != exitCrit {
		t.Errorf("drfs status --check while Critical: %v, want exit %d", err, exitCrit)
	}

	if out, err := drfsRun(t, "resync", d.state, "vm1", "--now"); err != nil {
		t.Fatalf("drfs resync --now: %v\n%s", err, out)
	}
	waitState(t, a, "vm1", orchestrator.Protected)
	if v := vmStatus(t, socket, "vm1"); v.Health.Level != orchestrator.Normal || !v.NewestPoint.After(last.Frozen) {
		t.Errorf("vm1 after the resync: health %s, newest point %v", v.Health, v.NewestPoint)
	}
	if out, err := drfsRun(t, "status", "--check", "--socket", socket); err != nil {
		t.Errorf("drfs status --check once Normal: %v\n%s", err, out)
	}
	a.stop(t)
	if out, err := drfsRun(t, append([]string{"verify", "--target", tgt, "--source", d.src, "vm1"}, tls...)...); err != nil {
		t.Errorf("verify after the resync: %v\n%s", err, out)
	}
}
