package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/wrap"
	"github.com/drfs-project/drfs/tracker"
)

// These tests run the agent without FUSE: a fakeMount stands for the
// tracking mount (its writes go to the source files and into a real
// change log, its holds block them, its snapshots are copies), the target
// is a real directory store in a temporary directory, and the time is a
// fake clock that the test moves. They check what the operator is told
// (the views of drfs status, the jobs) and the data (every point equal to
// the source at its cut).

const (
	diskSize = 1 << 20
	interval = time.Minute
)

// testAgent is an agent over a source with one VM, vm1, of one disk.
type testAgent struct {
	*agent
	t     *testing.T
	src   string
	state string
	url   string
	clk   *clock.Fake
	mount *fakeMount
	flaky *flakyStore
	log   *tracker.Log
	// cfgText is the agent's configuration file.
	cfgText string
}

// newTestAgent starts an agent; extra is added to its configuration.
func newTestAgent(t *testing.T, extra string) *testAgent {
	t.Helper()
	src, state, tgt := t.TempDir(), t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "vm1"), 0o755)
	data := make([]byte, diskSize)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := os.WriteFile(filepath.Join(src, "vm1", "disk.img"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{t: t, src: src, state: state, url: "dir://" + tgt,
		clk: clock.NewFake(time.Now())}
	// Generations are cut at the interval only (max-generation 0), so
	// that the agent waits on two timers when idle (see idle).
	ta.cfgText = fmt.Sprintf("source: %s\nmountpoint: %s\nstate: %s\ntarget: %s\nsource-id: host-a\ninterval: 1m\nretention: 1h\nmax-generation: 0\n%s",
		src, t.TempDir(), state, ta.url, extra)
	ta.start()
	t.Cleanup(ta.close)
	return ta
}

// start opens the change log and starts an agent on it (again, after
// close: a restart).
func (ta *testAgent) start() {
	t := ta.t
	t.Helper()
	// A clock of its own, at the time the last one reached: the timers
	// a stopped agent left pending do not count as the new one's (idle).
	ta.clk = clock.NewFake(ta.clk.Now())
	cfg, err := orchestrator.ParseConfig("test", []byte(ta.cfgText))
	if err != nil {
		t.Fatal(err)
	}
	if ta.log, err = tracker.Open(tracker.Options{Dir: ta.state, Source: ta.src, BlockSize: 4096, Clock: ta.clk}); err != nil {
		t.Fatal(err)
	}
	a, err := newAgent(cfg, targets.TLS{}, ta.log, 4096, ta.clk)
	if err != nil {
		t.Fatal(err)
	}
	a.retry = wrap.Policy{Retries: 0, Delay: time.Millisecond} // the rounds' back-off is under test
	// The agent's store of the target, behind a switch that cuts it.
	s, err := targets.Open(ta.url, targets.TLS{})
	if err != nil {
		t.Fatal(err)
	}
	ta.flaky = &flakyStore{Store: s}
	a.stores.m = map[string]targets.Store{ta.url: ta.flaky}
	ta.mount = &fakeMount{source: ta.src, log: ta.log}
	ta.mount.cond.L = &ta.mount.mu
	a.mount = ta.mount
	ta.agent = a
	a.start()
}

// close stops the agent as drfs agent does once its mount is gone.
func (ta *testAgent) close() {
	if ta.agent == nil {
		return
	}
	ta.mount.stopped.Store(true)
	ta.agent.stop(time.Minute)
	ta.agent.closeStores()
	if err := ta.log.Close(); err != nil {
		ta.t.Error(err)
	}
	ta.agent = nil
}

// view returns what drfs status says of vm1.
func (ta *testAgent) view() VMView {
	for _, v := range ta.views("vm1") {
		return v
	}
	ta.t.Fatal("no view of vm1")
	return VMView{}
}

// until waits (in real time, up to a minute) for cond to hold of vm1's
// view; the clock does not move meanwhile.
func (ta *testAgent) until(what string, cond func(v VMView) bool) VMView {
	ta.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		v := ta.view()
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			ta.t.Fatalf("waited for %s; vm1 is %s (%s), health %s %s, error %q", what, v.State, v.Describe, v.Health.Level, v.Health.Reason, v.LastError)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// idle waits until the agent waits on the clock: vm1's supervisor for
// its next round, and the loop that drops the log of unprotected VMs.
func (ta *testAgent) idle() {
	ta.t.Helper()
	if err := ta.clk.WaitTimers(2, time.Minute); err != nil {
		ta.t.Fatal(err)
	}
}

// advance moves the clock on by d once the agent waits on it.
func (ta *testAgent) advance(d time.Duration) {
	ta.t.Helper()
	ta.idle()
	ta.clk.Advance(d)
}

// protect protects vm1 and waits for its initial replication to end.
func (ta *testAgent) protect() VMView {
	ta.t.Helper()
	if _, err := ta.agent.protect(ProtectRequest{VM: "vm1"}); err != nil {
		ta.t.Fatal(err)
	}
	return ta.until("protected", func(v VMView) bool { return v.State == orchestrator.Protected })
}

// reader opens the target as the recovery site's commands do: read-only,
// beside the agent that writes to it.
func (ta *testAgent) reader() targets.Store {
	ta.t.Helper()
	s, err := targets.OpenExisting(ta.url, targets.TLS{})
	if err != nil {
		ta.t.Fatal(err)
	}
	ta.t.Cleanup(func() { s.Close() })
	return s
}

// points lists the points of vm1 on the target.
func (ta *testAgent) points() []target.Point {
	ta.t.Helper()
	s, err := targets.OpenExisting(ta.url, targets.TLS{})
	if err != nil {
		ta.t.Fatal(err)
	}
	defer s.Close()
	ps, err := s.Points(context.Background(), "vm1")
	if err != nil && !errors.Is(err, target.ErrNotFound) {
		ta.t.Fatal(err)
	}
	return ps
}

// checkNewest checks that the newest point of vm1 is the source disk.
func (ta *testAgent) checkNewest() target.Point {
	ta.t.Helper()
	ps := ta.points()
	p := ps[len(ps)-1]
	r, err := recovery.VerifyFile(context.Background(), ta.reader(), "vm1", p.Generation, "disk.img", filepath.Join(ta.src, "vm1", "disk.img"))
	if err != nil || !r.InSync() {
		ta.t.Fatalf("point %s differs from the disk: %v (%d ranges)", p.ID(), err, len(r.Ranges))
	}
	return p
}

// write writes n random 4 KiB blocks of vm1's disk through the mount.
func (ta *testAgent) write(n int) {
	ta.t.Helper()
	for range n {
		b := make([]byte, 4096)
		for i := range b {
			b[i] = byte(rand.N(256))
		}
		if err := ta.mount.write("vm1/disk.img", int64(rand.N(diskSize/4096))*4096, b); err != nil {
			ta.t.Fatal(err)
		}
	}
}

// TestRounds: protect makes the initial copy from a snapshot (a
// consistent point), then a round every interval ships what was written,
// and each point is the disk at its cut; drfs status says Protected,
// health Normal, and the RPO is the age of the newest point. No round runs
// before its time.
func TestRounds(t *testing.T) {
	ta := newTestAgent(t, "")
	v := ta.protect()
	if ta.mount.snapshots.Load() != 1 {
		t.Errorf("%d snapshots for the initial copy, want 1", ta.mount.snapshots.Load())
	}
	ta.checkNewest()
	if first := ta.points()[0]; first.Kind != target.KindSnapshot {
		t.Errorf("the initial copy's point is %s, want %s", first.Kind, target.KindSnapshot)
	}
	if v.Health.Level != orchestrator.Normal {
		t.Errorf("health %s (%s) after the initial replication", v.Health.Level, v.Health.Reason)
	}
	for round := range 3 {
		ta.write(20)
		before := ta.points()
		// Not before the interval is over...
		ta.advance(interval - time.Second)
		time.Sleep(100 * time.Millisecond)
		if len(ta.points()) != len(before) {
			t.Fatalf("round %d: a point was made before the interval", round)
		}
		// ... then at once.
		ta.advance(time.Second)
		ta.until("the next point", func(VMView) bool { return len(ta.points()) > len(before) })
		p := ta.checkNewest()
		if !p.Kind.Consistent() || !p.Frozen.Equal(ta.clk.Now()) {
			t.Errorf("round %d: point %s is %s, cut at %v, want a consistent one cut now (%v)", round, p.ID(), p.Kind, p.Frozen, ta.clk.Now())
		}
		v = ta.until("the round recorded", func(v VMView) bool { return v.NewestPoint.Equal(p.Frozen) })
		if v.State != orchestrator.Protected || v.Health.Level != orchestrator.Normal || v.Failures != 0 || v.RPO != 0 {
			t.Errorf("round %d: %s, health %s (%s), %d failures, RPO %vs", round, v.State, v.Health.Level, v.Health.Reason, v.Failures, v.RPO)
		}
	}
}

// TestBackoff: a target that fails is retried after 1, 2, 4, 8, 10 and then
// every 30 minutes, never sooner, drfs status saying so (failures, next
// retry, health Warning); once it is back the next retry ships everything
// written meanwhile, and health is Normal again with the next point. A
// permanent error stops the retries (health Critical) until drfs resume.
func TestBackoff(t *testing.T) {
	ta := newTestAgent(t, "")
	ta.protect()
	ta.flaky.down.Store(true)
	ta.write(10)
	ta.advance(interval)
	want := []time.Duration{1, 2, 4, 8, 10, 30, 30}
	for i, d := range want {
		v := ta.until(fmt.Sprintf("failure %d", i+1), func(v VMView) bool { return v.Failures == i+1 })
		if !strings.Contains(v.LastError, errTargetDown.Error()) {
			t.Errorf("failure %d: last error %q", i+1, v.LastError)
		}
		if got := v.NextRetry.Sub(v.LastFailure); got != d*time.Minute {
			t.Errorf("failure %d: next retry %v after it, want %v", i+1, got, d*time.Minute)
		}
		if v.Health.Level != orchestrator.Warning || !strings.Contains(v.Health.Reason, "next retry in") {
			t.Errorf("failure %d: health %s (%s), want Warning with the next retry", i+1, v.Health.Level, v.Health.Reason)
		}
		if i == len(want)-1 {
			break
		}
		// Not a second sooner.
		ta.advance(v.NextRetry.Sub(ta.clk.Now()) - time.Second)
		time.Sleep(100 * time.Millisecond)
		if v := ta.view(); v.Failures != i+1 {
			t.Fatalf("retried before the back-off of %v was over", d*time.Minute)
		}
		ta.advance(time.Second)
	}
	ta.flaky.down.Store(false)
	ta.advance(ta.view().NextRetry.Sub(ta.clk.Now()))
	// Each retry cut the generation again: the point it ships is the
	// disk at the retry.
	v := ta.until("a round that succeeds", func(v VMView) bool { return v.Failures == 0 && v.NewestPoint.Equal(ta.clk.Now()) })
	if p := ta.checkNewest(); !p.Frozen.Equal(ta.clk.Now()) {
		t.Errorf("the point shipped at the retry was cut %v before it", ta.clk.Now().Sub(p.Frozen))
	}
	if v.State != orchestrator.Protected || v.Health.Level != orchestrator.Normal {
		t.Errorf("after the target came back: %s, health %s (%s)", v.State, v.Health.Level, v.Health.Reason)
	}

	// A permanent error (the target refuses this host) stops the retries:
	// health Critical until drfs resume.
	ta.flaky.refuse.Store(true)
	ta.write(1)
	ta.advance(interval)
	v = ta.until("stopped", func(v VMView) bool { return v.Stopped })
	if v.Health.Level != orchestrator.Critical || !strings.Contains(v.Health.Reason, "resume") {
		t.Errorf("after a permanent error: health %s (%s), want Critical", v.Health.Level, v.Health.Reason)
	}
	failures := v.Failures
	ta.advance(24 * time.Hour)
	time.Sleep(100 * time.Millisecond)
	if v := ta.view(); v.Failures != failures {
		t.Errorf("a stopped VM was retried: %d failures, then %d", failures, v.Failures)
	}
	ta.flaky.refuse.Store(false)
	if err := ta.resume("vm1"); err != nil {
		t.Fatal(err)
	}
	ta.until("health Normal after resume", func(v VMView) bool { return v.Health.Level == orchestrator.Normal && !v.Stopped })
	ta.checkNewest()
}

// TestResyncTrigger: a disk whose tracking is lost (here, changed behind
// the mount's back and flagged, as the tracker does) makes the next round
// resynchronize the VM: drfs status and the job say it waits for the
// resync window, health is not Normal, and drfs resync --now runs it at
// once; only the chunks that differ travel, and its point, read from a
// snapshot at the cut, is consistent and equals the disk.
func TestResyncTrigger(t *testing.T) {
	ta := newTestAgent(t, "resync-window: never\n")
	ta.protect()
	path := filepath.Join(ta.src, "vm1", "disk.img")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xEE}, 8192), 256<<10) // behind the mount's back
	f.Close()
	ta.log.MarkResync("vm1", "disk.img", "changed outside the mount")
	ta.advance(interval)
	v := ta.until("the resync to wait", func(v VMView) bool {
		return v.State == orchestrator.Resynchronizing && v.Job != nil && v.Job.State == orchestrator.JobWaiting
	})
	if !strings.Contains(v.Job.Message, "waiting for the resync window") {
		t.Errorf("waiting resync job says %q", v.Job.Message)
	}
	if v.Health.Level == orchestrator.Normal {
		t.Error("health Normal while a disk waits for its resync")
	}
	if _, err := ta.resyncNow("vm1"); err != nil {
		t.Fatal(err)
	}
	v = ta.until("protected again", func(v VMView) bool { return v.State == orchestrator.Protected })
	if v.Health.Level != orchestrator.Normal {
		t.Errorf("after the resync: health %s (%s)", v.Health.Level, v.Health.Reason)
	}
	p := ta.checkNewest()
	if !p.Kind.Consistent() {
		t.Errorf("the resync's point is %s", p.Kind)
	}
	var resync *orchestrator.Job
	for _, j := range ta.jobs.List("vm1") {
		if j.Kind == orchestrator.JobResync {
			resync = &j
		}
	}
	if resync == nil || resync.State != orchestrator.JobSucceeded {
		t.Fatalf("resync job: %+v", resync)
	}
}

// TestPlannedFailoverSteps: a planned failover holds the VM's writes,
// ships its last generation, checks the point against the disks, and
// materialises it; the VM is FailedOver with its writes held until the
// failover is cancelled, which lets them go and replication resume.
func TestPlannedFailoverSteps(t *testing.T) {
	ta := newTestAgent(t, "")
	ta.protect()
	ta.write(30)
	to := filepath.Join(t.TempDir(), "vm1")
	job, err := ta.plannedFailover(context.Background(), FailoverRequest{VM: "vm1", To: to})
	if err != nil {
		t.Fatal(err)
	}
	if job.State != orchestrator.JobSucceeded || !strings.Contains(job.Message, "no data lost") {
		t.Errorf("failover job: %s %q", job.State, job.Message)
	}
	if v := ta.view(); v.State != orchestrator.FailedOver {
		t.Errorf("after a planned failover: %s", v.State)
	}
	want, _ := os.ReadFile(filepath.Join(ta.src, "vm1", "disk.img"))
	got, _ := os.ReadFile(filepath.Join(to, "disk.img"))
	if !bytes.Equal(got, want) {
		t.Error("the materialised disk differs from the source")
	}
	// Held: a write waits.
	wrote := make(chan error, 1)
	go func() { wrote <- ta.mount.write("vm1/disk.img", 0, make([]byte, 4096)) }()
	select {
	case err := <-wrote:
		t.Fatalf("a write went through while the VM is failed over (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := ta.cancelFailover("vm1"); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	before := len(ta.points())
	ta.advance(interval)
	ta.until("replication again", func(v VMView) bool {
		return v.State == orchestrator.Protected && len(ta.points()) > before
	})
	ta.checkNewest()
}

// TestRestart: an agent stopped and started again on the same state (as
// after a reboot) finds the VM Protected, its points kept, and goes on with
// its rounds from the next generation; nothing is copied again.
func TestRestart(t *testing.T) {
	ta := newTestAgent(t, "")
	ta.protect()
	ta.write(5)
	n := len(ta.points())
	ta.close() // ships the last generation
	if len(ta.points()) != n+1 {
		t.Errorf("stopping shipped %d point(s), want 1", len(ta.points())-n)
	}
	last := ta.checkNewest()
	ta.start()
	if v := ta.view(); v.State != orchestrator.Protected {
		t.Fatalf("after a restart: %s", v.State)
	}
	ta.idle() // its first round, at once, is over
	n = len(ta.points())
	ta.write(5)
	ta.advance(interval)
	ta.until("a point after the restart", func(VMView) bool { return len(ta.points()) > n })
	p := ta.checkNewest()
	if p.Generation <= last.Generation || p.Kind != target.KindGeneration {
		t.Errorf("after the restart: point %s (%s), the last before it %s", p.ID(), p.Kind, last.ID())
	}
	if ta.mount.snapshots.Load() != 0 {
		t.Error("the restarted agent copied the disks again")
	}
}

// crash leaves the agent's state directory as a kill -9 of the agent
// would, and starts the agent again on it: it copies the directory while
// the agent runs (the change log not closed, the in-flight table as it
// is), then closes the agent. hostCrash removes the copy's in-flight table,
// as a crash of the host leaves it in effect (its pages were in memory).
//
// A host crash loses the in-flight table (its pages are never synced) and
// the host boots again (DRFS_TEST_BOOT_TIME) before the agent starts;
// without activity, the activity log is lost too, as when the agent kept
// none.
func (ta *testAgent) crash(hostCrash, activity bool) {
	ta.t.Helper()
	crashed := ta.t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(ta.state)); err != nil {
		ta.t.Fatal(err)
	}
	if hostCrash {
		if err := os.Remove(filepath.Join(crashed, "inflight")); err != nil {
			ta.t.Fatal(err)
		}
		if !activity {
			if err := os.Remove(filepath.Join(crashed, "activity")); err != nil {
				ta.t.Fatal(err)
			}
		}
		ta.t.Setenv("DRFS_TEST_BOOT_TIME", strconv.FormatInt(time.Now().UnixNano(), 10))
	}
	ta.close()
	ta.state = crashed
	ta.cfgText = replaceSetting(ta.cfgText, "state", crashed)
	ta.start()
}

// shippedAndLogged protects vm1 and leaves it with three points on the
// target and writes in the log that are not shipped yet, the agent idle.
func (ta *testAgent) shippedAndLogged() {
	ta.t.Helper()
	ta.protect()
	ta.write(5)
	ta.advance(interval)
	ta.until("a point", func(VMView) bool { return len(ta.points()) == 3 })
	ta.write(5) // in the log, not shipped
	ta.idle()
}

// TestCrashRestart: an agent killed (kill -9: the change log not closed,
// the page cache intact) and started again is Protected again at once,
// without resynchronizing anything: what it logged before the crash is
// shipped, and the next point equals the disk.
func TestCrashRestart(t *testing.T) {
	ta := newTestAgent(t, "resync-window: always\n")
	ta.shippedAndLogged()
	ta.crash(false, true)
	if v := ta.view(); v.State != orchestrator.Protected || v.ResyncReason != "" {
		t.Fatalf("after a crash of the agent: %s (resync reason %q)", v.State, v.ResyncReason)
	}
	ta.until("the writes before the crash shipped", func(v VMView) bool { return len(ta.points()) > 3 })
	if p := ta.checkNewest(); !p.Kind.Consistent() {
		t.Errorf("the point after the crash is %s", p.Kind)
	}
	for _, j := range ta.jobs.List("vm1") {
		if j.Kind == orchestrator.JobResync {
			t.Errorf("a resync job after a crash of the agent: %+v", j)
		}
	}
	if ta.mount.snapshots.Load() > 1 {
		t.Errorf("%d snapshots after the crash", ta.mount.snapshots.Load())
	}
}

// TestHostCrashRestart: after a crash of the host (the in-flight table
// lost with the page cache) the restarted agent says why its disks are
// resynchronized, compares them with the target (only what differs
// travels; with an activity log, only its hot extents, and outside the
// resync window), and is Protected again with a point equal to the disk;
// nothing is copied whole again.
func TestHostCrashRestart(t *testing.T) {
	for _, activity := range []bool{true, false} {
		t.Run(fmt.Sprintf("activity=%v", activity), func(t *testing.T) {
			testHostCrashRestart(t, activity)
		})
	}
}

func testHostCrashRestart(t *testing.T, activity bool) {
	window, want := "resync-window: always\n", "dirty shutdown"
	if activity {
		// A resync window that never opens: the hot extents do not wait.
		window, want = "resync-window: never\n", "hot extent(s)"
	}
	ta := newTestAgent(t, window)
	ta.shippedAndLogged()
	ta.crash(true, activity)
	v := ta.until("a resync after the crash", func(v VMView) bool {
		return v.State == orchestrator.Resynchronizing || v.State == orchestrator.Protected && len(ta.points()) > 4
	})
	if v.State == orchestrator.Resynchronizing && !strings.Contains(v.ResyncReason, want) {
		t.Errorf("resynchronizing after a crash, for the reason %q, want %q", v.ResyncReason, want)
	}
	if activity && v.State == orchestrator.Resynchronizing && v.Health.Level == orchestrator.Critical {
		// The hot extents are compared at once: a consistent point is
		// on its way, whatever the resync window.
		t.Errorf("health while the hot extents are compared: %s (%s)", v.Health.Level, v.Health.Reason)
	}
	v = ta.until("protected again", func(v VMView) bool { return v.State == orchestrator.Protected && v.Job == nil })
	if v.Health.Level != orchestrator.Normal {
		t.Errorf("after the resync: health %s (%s)", v.Health.Level, v.Health.Reason)
	}
	if p := ta.checkNewest(); !p.Kind.Consistent() {
		t.Errorf("the point after the crash's resync is %s", p.Kind)
	}
	if ta.mount.snapshots.Load() > 1 {
		t.Errorf("%d snapshots after the crash", ta.mount.snapshots.Load())
	}
	resynced := false
	for _, j := range ta.jobs.List("vm1") {
		resynced = resynced || j.Kind == orchestrator.JobResync && j.State == orchestrator.JobSucceeded
	}
	if !resynced {
		t.Error("no resync job after the crash")
	}
}

// replaceSetting sets the value of a top-level setting of a configuration.
func replaceSetting(cfg, name, value string) string {
	var out []string
	for _, line := range strings.Split(cfg, "\n") {
		if strings.HasPrefix(line, name+":") {
			line = name + ": " + value
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// TestResetSettings: a setting drfs protect gave a protected VM goes
// back to the agent's configuration with --reset, in place: drfs status
// shows it, the rounds follow it, and a restart keeps it.
func TestResetSettings(t *testing.T) {
	ta := newTestAgent(t, "")
	if _, err := ta.agent.protect(ProtectRequest{VM: "vm1", Policy: Overrides{Interval: 5 * time.Minute, MaxPoints: 4}}); err != nil {
		t.Fatal(err)
	}
	ta.until("protected", func(v VMView) bool { return v.State == orchestrator.Protected })
	if v := ta.view(); v.Interval != "5m" || v.MaxPoints != 4 {
		t.Fatalf("protected with interval %s, max-points %d; want 5m, 4", v.Interval, v.MaxPoints)
	}
	p := ta.protection("vm1")
	if _, err := ta.changeSettings(p, ProtectRequest{VM: "vm1", Policy: Overrides{Interval: time.Minute}, Reset: []string{"interval"}}); err == nil {
		t.Error("an interval both given and reset was accepted")
	}
	msg, err := ta.changeSettings(p, ProtectRequest{VM: "vm1", Reset: []string{"interval"}})
	if err != nil || !strings.Contains(msg, "interval 5m → 1m") {
		t.Fatalf("reset interval: %q, %v", msg, err)
	}
	if v := ta.view(); v.Interval != "1m" || v.MaxPoints != 4 || v.State != orchestrator.Protected {
		t.Errorf("after the reset: interval %s, max-points %d, %s; want 1m, 4, Protected", v.Interval, v.MaxPoints, v.State)
	}
	ta.idle() // the round the change runs at once
	ta.write(3)
	n := len(ta.points())
	ta.advance(interval)
	ta.until("a point one configured interval later", func(VMView) bool { return len(ta.points()) > n })
	ta.checkNewest()
	ta.close()
	ta.start()
	if v := ta.view(); v.Interval != "1m" || v.MaxPoints != 4 {
		t.Errorf("after a restart: interval %s, max-points %d; want 1m, 4", v.Interval, v.MaxPoints)
	}
}

// TestRetarget: drfs protect --target of a protected VM moves its
// protection to that target in place, once the target answers: a target
// that does not leaves it as it was; the new one gets an initial copy from
// a snapshot, the VM keeps its settings, and its points on the old target
// stay.
func TestRetarget(t *testing.T) {
	ta := newTestAgent(t, "")
	if _, err := ta.agent.protect(ProtectRequest{VM: "vm1", Policy: Overrides{MaxPoints: 5}}); err != nil {
		t.Fatal(err)
	}
	ta.until("protected", func(v VMView) bool { return v.State == orchestrator.Protected })
	ta.write(5)
	ta.advance(interval)
	ta.until("a point", func(VMView) bool { return len(ta.points()) == 3 })
	old := ta.checkNewest()
	p := ta.protection("vm1")
	if _, _, err := ta.retarget(p, ProtectRequest{VM: "vm1", Target: "https://127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "still replicates to "+ta.url) {
		t.Errorf("a target that does not answer: %v", err)
	}
	if v := ta.view(); v.State != orchestrator.Protected || v.Target != ta.url {
		t.Fatalf("after a refused move: %s to %s", v.State, v.Target)
	}
	ta.idle()
	from := ta.url
	to := "dir://" + t.TempDir()
	job, msg, err := ta.retarget(p, ProtectRequest{VM: "vm1", Target: to})
	if err != nil || job.ID == 0 || !strings.Contains(msg, "target "+from+" → "+to) || !strings.Contains(msg, "stay (3 point(s))") {
		t.Fatalf("move: job %d, %q, %v", job.ID, msg, err)
	}
	ta.url = to
	v := ta.until("protected to the new target", func(v VMView) bool { return v.State == orchestrator.Protected && v.Target == to })
	if v.MaxPoints != 5 {
		t.Errorf("max-points %d after the move, want 5", v.MaxPoints)
	}
	if n := ta.mount.snapshots.Load(); n != 2 {
		t.Errorf("%d snapshots, want 2 (an initial copy to each target)", n)
	}
	ta.checkNewest()
	ta.url = from
	if ps := ta.points(); len(ps) != 3 || ps[2].Generation != old.Generation {
		t.Errorf("the old target holds %d point(s) after the move, want its 3", len(ps))
	}
}

// fakeMount is a Mount for the tests: write writes to a disk of the
// source and records it in the change log, as the FUSE mount does; a hold
// waits for the writes in flight and blocks new ones; a snapshot copies
// the disks while they are held.
type fakeMount struct {
	source    string
	log       *tracker.Log
	stopped   atomic.Bool
	snapshots atomic.Int32

	mu       sync.Mutex
	cond     sync.Cond // on mu: held or inflight changed
	held     int       // holds in force (they nest)
	inflight int
}

func (m *fakeMount) write(rel string, off int64, data []byte) error {
	m.mu.Lock()
	for m.held > 0 {
		m.cond.Wait()
	}
	m.inflight++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.inflight--
		m.cond.Broadcast()
		m.mu.Unlock()
	}()
	f, err := os.OpenFile(filepath.Join(m.source, filepath.FromSlash(rel)), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	d, err := m.log.OpenDisk(rel, st.Size())
	if err != nil {
		return err
	}
	defer d.Release()
	// As fs does: Begin before the file changes, End after the report.
	tok := d.Begin(off, int64(len(data)))
	defer d.End(tok)
	if _, err := f.WriteAt(data, off); err != nil {
		return err
	}
	d.Written(off, data, f)
	return d.Sync()
}

func (m *fakeMount) QuiescePaths(ctx context.Context, paths []string) (func(), error) {
	if m.stopped.Load() {
		return nil, errors.New("mount stopped")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.held++
	for m.inflight > 0 {
		m.cond.Wait()
	}
	return sync.OnceFunc(func() {
		m.mu.Lock()
		m.held--
		m.cond.Broadcast()
		m.mu.Unlock()
	}), nil
}

func (m *fakeMount) Snapshot(disks []string, dir string) (Snapshot, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &fakeSnapshot{dir: dir, views: map[string]*shipper.FileView{}}
	for _, rel := range disks {
		data, err := os.ReadFile(filepath.Join(m.source, filepath.FromSlash(rel)))
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, url.PathEscape(rel))
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
		v, err := shipper.OpenFileView(path)
		if err != nil {
			return nil, err
		}
		s.views[rel] = v
		s.bytes += int64(len(data))
	}
	m.snapshots.Add(1)
	return s, nil
}

func (m *fakeMount) Stopped() bool { return m.stopped.Load() }

type fakeSnapshot struct {
	dir   string
	bytes int64
	views map[string]*shipper.FileView
}

func (s *fakeSnapshot) View(rel string) (shipper.DiskView, error) {
	v, ok := s.views[rel]
	if !ok {
		return nil, fmt.Errorf("%s is not in the snapshot", rel)
	}
	return v, nil
}

func (s *fakeSnapshot) Bytes() int64 { return s.bytes }

func (s *fakeSnapshot) Delete() error {
	for _, v := range s.views {
		v.Close()
	}
	return nil
}

// errTargetDown is what a cut target answers (a transient error).
var errTargetDown = errors.New("connection refused (test: target down)")

// errRefused is what a target that refuses this host answers (permanent).
var errRefused = permanentError{"certificate refused (test)"}

type permanentError struct{ msg string }

func (e permanentError) Error() string   { return e.msg }
func (e permanentError) Permanent() bool { return true }

// flakyStore is a store that fails every staging while down or refuse is
// set.
type flakyStore struct {
	targets.Store
	down, refuse atomic.Bool
}

func (s *flakyStore) Stage(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error {
	switch {
	case s.refuse.Load():
		return errRefused
	case s.down.Load():
		return errTargetDown
	}
	return s.Store.Stage(ctx, vm, gen, disk, r)
}

// Checksums passes the directory store's on: resynchronizations compare
// chunk checksums.
func (s *flakyStore) Checksums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	if s.down.Load() {
		return nil, errTargetDown
	}
	return s.Store.(target.Checksummer).Checksums(ctx, vm, gen, disk, chunk, ranges)
}
