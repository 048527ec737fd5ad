package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/target"
)

// compareDir checks that dir holds exactly the bytes of want, disk by disk.
func compareDir(t *testing.T, dir, what string, want map[string][]byte) {
	t.Helper()
	for disk, data := range want {
		got, err := os.ReadFile(filepath.Join(dir, disk))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: %s differs from the source at its cut (%d bytes, want %d)", what, disk, len(got), len(data))
		}
	}
}

// failover runs drfs failover and fails the test if it fails.
func failover(t *testing.T, args ...string) string {
	t.Helper()
	start := time.Now()
	out, err := drfsRun(t, append([]string{"failover"}, args...)...)
	t.Logf("drfs failover %v: %v", args, time.Since(start))
	if err != nil {
		t.Fatalf("drfs failover %v: %v\n%s", args, err, out)
	}
	return out
}

// withXFS mounts a small XFS with reflinks on a loop device at a new
// directory, or skips the test where that cannot be done.
func withXFS(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		t.Skip("needs mkfs.xfs for a file system with reflinks")
	}
	base := t.TempDir()
	img, root := filepath.Join(base, "xfs.img"), filepath.Join(base, "xfs")
	os.Mkdir(root, 0o755)
	if err := os.Truncate(img, 512<<20); err != nil {
		os.WriteFile(img, nil, 0o644)
		os.Truncate(img, 512<<20)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.xfs: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, root).CombinedOutput(); err != nil {
		t.Skipf("mount xfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", root).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", root, err, out)
		}
	})
	return root
}

// TestFailoverUnplanned: a mount replicates while a writer works in bursts;
// with the source gone (the mount stopped), failover at latest, at each
// older point by number and by time, and at latest-processed each equals
// the source at that cut; the hook sees the documented environment; a
// failing hook fails the command with its status and the disks stay.
// The target lives on XFS where it can, so that latest is a reflink.
func TestFailoverUnplanned(t *testing.T) {
	needFUSE(t)
	rng := rand.New(rand.NewPCG(seed(t), 11))
	d := newDirs(t)
	const size = 16 << 20
	if err := os.WriteFile(filepath.Join(d.src, "vm1", "boot.img"), bytes.Repeat([]byte("drfs"), size/4), 0o644); err != nil {
		t.Fatal(err)
	}
	site := filepath.Dir(d.src)
	reflinks := false
	if _, err := exec.LookPath("mkfs.xfs"); err == nil {
		site, reflinks = withXFS(t), true
	}
	tgt := "dir://" + filepath.Join(site, "target")
	disks := []string{"disk.img", "boot.img"}
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s")
	want := map[uint64]map[string][]byte{}
	for burst := 0; burst < 3; burst++ {
		writeRandom(t, rng, filepath.Join(d.mnt, "vm1", disks[burst%2]), size, 10)
		gen := waitCut(t, d.state, "vm1", time.Now())
		want[gen] = readAll(t, filepath.Join(d.src, "vm1"), disks...)
	}
	m.stop(t)
	final := readAll(t, filepath.Join(d.src, "vm1"), disks...)
	pts := points(t, tgt, "vm1")
	newest := pts[len(pts)-1]

	// latest, with a hook that records its environment.
	dir := filepath.Join(site, "fo-latest")
	env := filepath.Join(t.TempDir(), "env")
	hook := fmt.Sprintf(`echo hook-says-hello; printf '%%s\n' "$DRFS_VM" "$DRFS_POINT" "$DRFS_FAILOVER_TYPE" "$DRFS_DIR" "$DRFS_DISKS" > %s`, env)
	out := failover(t, "vm1", "--type", "unplanned", "--target", tgt, "--to", dir, "--hook", hook)
	compareDir(t, dir, "failover at latest", final)
	for _, s := range []string{"(RTO)", "written", "hook-says-hello"} {
		if !strings.Contains(out, s) {
			t.Errorf("failover output does not say %q:\n%s", s, out)
		}
	}
	if reflinks && !strings.Contains(out, "reflink") {
		t.Errorf("failover at latest on XFS did not use reflinks:\n%s", out)
	}
	gotEnv, _ := os.ReadFile(env)
	wantEnv := fmt.Sprintf("vm1\n%d\nunplanned\n%s\n%s %s\n", newest.Generation, dir, filepath.Join(dir, "boot.img"), filepath.Join(dir, "disk.img"))
	if string(gotEnv) != wantEnv {
		t.Errorf("hook environment:\n%s\nwant:\n%s", gotEnv, wantEnv)
	}
	var mk recovery.Marker
	if data, err := os.ReadFile(filepath.Join(dir, recovery.MarkerName)); err != nil || json.Unmarshal(data, &mk) != nil || mk.VM != "vm1" || mk.Point != newest.Generation || mk.Type != "unplanned" {
		t.Errorf("marker: %+v, %v", mk, err)
	}

	// Each older point by number, one by its cut time; latest-processed.
	byTime := false
	for gen, w := range want {
		failover(t, "vm1", "--type", "unplanned", "--target", tgt, "--point", fmt.Sprint(gen), "--to", filepath.Join(site, fmt.Sprint("fo-", gen)))
		compareDir(t, filepath.Join(site, fmt.Sprint("fo-", gen)), fmt.Sprintf("failover at point %d", gen), w)
		for _, p := range pts {
			if p.Generation == gen && !byTime {
				byTime = true // one is enough: each failover costs seconds under the race detector
				dir := filepath.Join(site, fmt.Sprint("fo-time-", gen))
				failover(t, "vm1", "--type", "unplanned", "--target", tgt, "--point", p.Frozen.Format(time.RFC3339Nano), "--to", dir)
				compareDir(t, dir, fmt.Sprintf("failover at the cut time of point %d", gen), w)
			}
		}
	}
	dir = filepath.Join(site, "fo-processed")
	failover(t, "vm1", "--type", "unplanned", "--target", tgt, "--point", "latest-processed", "--to", dir)
	compareDir(t, dir, "failover at latest-processed", final)

	// A failing hook: its status, its output, the disks kept.
	dir = filepath.Join(site, "fo-hookfail")
	cmd := exec.Command(drfsBin, "failover", "vm1", "--type", "unplanned", "--target", tgt, "--to", dir, "--hook", "echo hook-failing; exit 7")
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("failover with a failing hook: %v, want exit status 7\n%s", err, b)
	}
	if !strings.Contains(string(b), "hook-failing") || !strings.Contains(string(b), "stay in") {
		t.Errorf("failing hook output does not show the hook's output or say the disks stay:\n%s", b)
	}
	compareDir(t, dir, "failover with a failing hook", final)
	t.Logf("failover at latest:\n%s", out)
}

// TestFailoverExt4: the failed-over image of an ext4-on-loop VM passes
// e2fsck -fn and holds its files.
func TestFailoverExt4(t *testing.T) {
	needFUSE(t)
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	d := newDirs(t)
	os.Truncate(filepath.Join(d.src, "vm1", "disk.img"), 128<<20)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s")
	files := ext4Files(rand.New(rand.NewPCG(13, 14)), 20, 3)
	withLoopExt4(t, filepath.Join(d.mnt, "vm1", "disk.img"), true, func(root string) { writeFiles(t, root, files) })
	m.stop(t)
	dir := filepath.Join(t.TempDir(), "failover")
	failover(t, "vm1", "--type", "unplanned", "--target", tgt, "--to", dir)
	checkExt4(t, filepath.Join(dir, "disk.img"), files)
}

// serveTarget starts drfs target serve over mutual TLS and returns its URL
// and the client's TLS flags.
func serveTarget(t *testing.T) (string, []string) {
	t.Helper()
	pki := tlstest.New(t)
	certs := t.TempDir()
	srvCert, srvKey := pki.Server.WriteFiles(t, certs, "server")
	aCert, aKey := pki.ClientA.WriteFiles(t, certs, "a")
	ca := pki.CA.WriteFile(t, certs, "ca")
	return startServe(t, srvCert, srvKey, ca), []string{"--tls-cert", aCert, "--tls-key", aKey, "--tls-ca", ca}
}

// TestFailoverTestWhileReplicating: a test failover through drfs target
// serve while the mount replicates and a writer runs: the copy is the point
// it names, new points keep arriving, cleanup removes the copy and refuses
// what drfs did not make or what is not a test.
func TestFailoverTestWhileReplicating(t *testing.T) {
	needFUSE(t)
	tgt, tlsFlags := serveTarget(t)
	d := newDirs(t)
	m := startMount(t, d.src, d.mnt, d.state, append([]string{"--target", tgt, "--interval", "1s"}, tlsFlags...)...)
	rng := rand.New(rand.NewPCG(seed(t), 12))
	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	writeRandom(t, rng, disk, 64<<20, 5)
	waitCut(t, d.state, "vm1", time.Now())

	dir := filepath.Join(t.TempDir(), "test-copy")
	out := failover(t, append([]string{"vm1", "--type", "test", "--target", tgt, "--to", dir}, tlsFlags...)...)
	if !strings.Contains(out, "(RTO)") {
		t.Errorf("no RTO in:\n%s", out)
	}
	before := points(t, tgt, "vm1", tlsFlags...)
	for i := 0; i < 2; i++ {
		writeRandom(t, rng, disk, 64<<20, 5)
		waitCut(t, d.state, "vm1", time.Now())
	}
	after := points(t, tgt, "vm1", tlsFlags...)
	if after[len(after)-1].Generation <= before[len(before)-1].Generation {
		t.Errorf("no new recovery points after the test failover: before %d, after %d", before[len(before)-1].Generation, after[len(after)-1].Generation)
	}
	m.stop(t)
	data, err := os.ReadFile(filepath.Join(dir, recovery.MarkerName))
	var mk recovery.Marker
	if err != nil || json.Unmarshal(data, &mk) != nil || mk.Type != "test" {
		t.Fatalf("test failover marker: %v %s", err, data)
	}
	restoreAndCompare(t, tgt, "vm1", fmt.Sprint(mk.Point), readAll(t, dir, "disk.img"), tlsFlags...)

	// Cleanup refuses a directory drfs did not make, and an unplanned failover.
	mine := t.TempDir()
	os.WriteFile(filepath.Join(mine, "precious"), []byte("x"), 0o644)
	if out, err := drfsRun(t, "failover", "cleanup", mine); err == nil || !strings.Contains(out, "not made by drfs") {
		t.Errorf("cleanup of a directory drfs did not make: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(mine, "precious")); err != nil {
		t.Errorf("cleanup touched a directory drfs did not make: %v", err)
	}
	prod := filepath.Join(t.TempDir(), "prod")
	failover(t, append([]string{"vm1", "--type", "unplanned", "--target", tgt, "--to", prod}, tlsFlags...)...)
	if out, err := drfsRun(t, "failover", "cleanup", prod); err == nil || !strings.Contains(out, "only test failovers") {
		t.Errorf("cleanup of an unplanned failover: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(prod, "disk.img")); err != nil {
		t.Errorf("cleanup removed an unplanned failover's disk: %v", err)
	}
	// A file the test VM left is kept and named.
	os.WriteFile(filepath.Join(dir, "vm.xml"), []byte("<domain/>"), 0o644)
	if out, err := drfsRun(t, "failover", "cleanup", dir); err != nil || !strings.Contains(out, "vm.xml") {
		t.Errorf("cleanup: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "disk.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cleanup left the test copy's disk: %v", err)
	}
	os.Remove(filepath.Join(dir, "vm.xml"))
	os.Remove(dir)
}

// TestFailoverBadInput: a clear one-line error and nothing created.
func TestFailoverBadInput(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	base := filepath.Dir(d.src)
	tgt := "dir://" + filepath.Join(base, "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s")
	writeRandom(t, rand.New(rand.NewPCG(1, 2)), filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 3)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	fresh := filepath.Join(base, "fresh")
	fo := func(args ...string) []string {
		return append([]string{"failover"}, append(args, "--target", tgt)...)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown VM", fo("nope", "--type", "unplanned", "--to", fresh), "VM nope is not on"},
		{"unknown point", fo("vm1", "--type", "unplanned", "--point", "999", "--to", fresh), "no recovery point 999"},
		{"dir not empty", fo("vm1", "--type", "unplanned", "--to", full), "not empty"},
		{"time before the oldest", fo("vm1", "--type", "test", "--point", "2000-01-01T00:00:00Z", "--to", fresh), "no recovery point cut at or before"},
		{"relative time before the oldest", fo("vm1", "--type", "test", "--point=-1000h", "--to", fresh), "the oldest"},
		{"bad time", fo("vm1", "--type", "test", "--point", "yesterday", "--to", fresh), "RFC 3339"},
		{"bad type", fo("vm1", "--type", "sideways", "--to", fresh), "--type"},
		{"no VM", fo("--type", "test", "--to", fresh), "name one VM"},
		{"inside the target", fo("vm1", "--type", "test", "--to", filepath.Join(base, "target", "x")), "inside the target"},
		{"plan with a point number", fo("--plan", writePlan(t, "name: p\ngroups:\n  - vms: [vm1]\n"), "--type", "test", "--point", "3", "--to", fresh), "one VM's"},
		{"plan with an unknown VM", fo("--plan", writePlan(t, "name: p\ngroups:\n  - vms: [vm1, vm9]\n"), "--type", "test", "--to", fresh), "vm9 is not on the target"},
		{"cleanup of a directory drfs did not make", []string{"failover", "cleanup", full}, "not made by drfs"},
		{"continue a plan that does not wait", []string{"plan", "continue", "p", "--state-dir", filepath.Join(base, "plans")}, "not waiting"},
	}
	for _, c := range cases {
		out, err := drfsRun(t, c.args...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: drfs %v: err %v, output %q, want it to mention %q", c.name, c.args, err, out, c.want)
		}
		if n := strings.Count(strings.TrimSpace(out), "\n"); n > 0 && c.name != "bad type" {
			t.Errorf("%s: %d lines of error, want one:\n%s", c.name, n+1, out)
		}
		if _, err := os.Stat(fresh); err == nil {
			t.Fatalf("%s: %s was created", c.name, fresh)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(base, "target", "x")); len(entries) > 0 {
		t.Errorf("a failover wrote into the target")
	}
	if pts := points(t, tgt, "vm1"); len(pts) == 0 || pts[0].Kind != target.KindSnapshot {
		t.Errorf("points after the bad input: %+v", pts)
	}
}

func writePlan(t *testing.T, text string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestPlanTwoGroups: a two-group test failover plan: group 1's pre hook,
// its VM, a manual step that waits until drfs plan continue, group 2's VM,
// and a failing post hook that stops the plan with its status and a list
// of what was done; the copies are each VM's point; plan validate and
// --dry-run change nothing; cleanup removes the plan's copies.
func TestPlanTwoGroups(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	os.MkdirAll(filepath.Join(d.src, "vm2"), 0o755)
	os.WriteFile(filepath.Join(d.src, "vm2", "data.img"), bytes.Repeat([]byte("vm2!"), 1<<20), 0o644)
	base := filepath.Dir(d.src)
	tgt := "dir://" + filepath.Join(base, "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s")
	rng := rand.New(rand.NewPCG(seed(t), 13))
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 4)
	writeRandom(t, rng, filepath.Join(d.mnt, "vm2", "data.img"), 4<<20, 4)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	want1 := readAll(t, filepath.Join(d.src, "vm1"), "disk.img")
	want2 := readAll(t, filepath.Join(d.src, "vm2"), "data.img")

	log := filepath.Join(t.TempDir(), "hooks.log")
	plan := writePlan(t, fmt.Sprintf(`name: e2e
groups:
  - name: first
    vms: [vm1]
    pre:
      - run: echo "pre $DRFS_GROUP $DRFS_VMS $DRFS_FAILOVER_TYPE" >> %[1]s
    post:
      - manual: Check vm1 before the second group.
  - name: second
    vms: [vm2]
    post:
      - run: echo "post $DRFS_GROUP $DRFS_VMS" >> %[1]s; echo post-hook-failing; exit 5
`, log))
	if out, err := drfsRun(t, "plan", "validate", plan, "--target", tgt); err != nil || !strings.Contains(out, "plan e2e is valid") || !strings.Contains(out, "5. second: post hook") {
		t.Errorf("plan validate: %v\n%s", err, out)
	}
	bad := writePlan(t, "name: bad\ngroups:\n  - vms: [vm1, vm1]\n    scripts: []\n  - vms: []\n")
	if out, err := drfsRun(t, "plan", "validate", bad); err == nil || !strings.Contains(out, "twice") || !strings.Contains(out, `unknown key "scripts"`) || !strings.Contains(out, "no VMs") {
		t.Errorf("plan validate of a bad plan: %v\n%s", err, out)
	}
	missing := writePlan(t, "name: m\ngroups:\n  - vms: [vm1, vm7]\n")
	if out, err := drfsRun(t, "plan", "validate", missing, "--target", tgt); err == nil || !strings.Contains(out, "vm7 is not on the target") {
		t.Errorf("plan validate with a VM missing on the target: %v\n%s", err, out)
	}

	dir := filepath.Join(base, "recovered")
	states := filepath.Join(base, "plans")
	args := []string{"failover", "--plan", plan, "--type", "test", "--target", tgt, "--to", dir, "--state-dir", states}
	out, err := drfsRun(t, append(args, "--dry-run")...)
	if err != nil || !strings.Contains(out, "dry run") || !strings.Contains(out, "waits for: drfs plan continue e2e") || !strings.Contains(out, "test failover of vm2 at point") {
		t.Errorf("dry run: %v\n%s", err, out)
	}
	for _, p := range []string{dir, states} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("the dry run created %s", p)
		}
	}
	if _, err := os.Stat(log); err == nil {
		t.Errorf("the dry run ran a hook")
	}

	run := exec.Command(drfsBin, args...)
	output := &syncBuffer{}
	run.Stdout, run.Stderr = output, output
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- run.Wait() }()
	t.Cleanup(func() {
		if run.ProcessState == nil {
			run.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(output.String(), "is waiting") {
		if time.Now().After(deadline) {
			t.Fatalf("the plan does not wait at its manual step:\n%s", output)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // it keeps waiting
	if _, err := os.Stat(filepath.Join(dir, "vm2")); err == nil {
		t.Errorf("group 2 started before drfs plan continue:\n%s", output)
	}
	compareDir(t, filepath.Join(dir, "vm1"), "plan's vm1", want1)
	if out, err := drfsRun(t, "plan", "continue", "e2e", "--state-dir", states); err != nil {
		t.Fatalf("plan continue: %v\n%s", err, out)
	}
	var ee *exec.ExitError
	select {
	case err := <-done:
		if !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Errorf("plan with a failing post hook: %v, want exit status 5\n%s", err, output)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the plan did not end after drfs plan continue:\n%s", output)
	}
	text := output.String()
	for _, s := range []string{"Check vm1 before the second group.", "post-hook-failing", "stopped at step 5 of 5", "done:", "first post manual step continued", "vm1 failed over (test)", "vm2 failed over (test)"} {
		if !strings.Contains(text, s) {
			t.Errorf("plan output does not say %q:\n%s", s, text)
		}
	}
	compareDir(t, filepath.Join(dir, "vm2"), "plan's vm2", want2)
	hooks, _ := os.ReadFile(log)
	if string(hooks) != "pre first vm1 test\npost second vm2\n" {
		t.Errorf("hooks ran as:\n%s", hooks)
	}
	if out, err := drfsRun(t, "plan", "continue", "e2e", "--state-dir", states); err == nil {
		t.Errorf("plan continue after the plan ended:\n%s", out)
	}

	if out, err := drfsRun(t, "failover", "cleanup", dir); err != nil {
		t.Errorf("cleanup of the plan's test failover: %v\n%s", err, out)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(dir)
		t.Errorf("cleanup left %s: %v", dir, entries)
	}
	t.Logf("plan output:\n%s", text)
}
