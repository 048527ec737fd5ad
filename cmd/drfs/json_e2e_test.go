package main

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The JSON of the commands as a script reads it: the keys are spelled here
// rather than taken from the command's own types, so that renaming one
// fails these tests.

type jsonPoint struct {
	Generation    uint64    `json:"generation"`
	Cut           time.Time `json:"cut"`
	Kind          string    `json:"kind"`
	AppConsistent bool      `json:"app_consistent"`
}

type jsonDisk struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Size int64  `json:"size"`
}

type jsonCopy struct {
	VM             string     `json:"vm"`
	Point          jsonPoint  `json:"point"`
	Dir            string     `json:"dir"`
	Disks          []jsonDisk `json:"disks"`
	BytesWritten   int64      `json:"bytes_written"`
	BytesShared    int64      `json:"bytes_shared"`
	DisksReflinked int        `json:"disks_reflinked"`
	DisksCopied    int        `json:"disks_copied"`
	ElapsedSeconds float64    `json:"elapsed_seconds"`
	// failover
	Type       string  `json:"type"`
	DryRun     bool    `json:"dry_run"`
	RTOSeconds float64 `json:"rto_seconds"`
	Hook       *struct {
		Command        string  `json:"command"`
		ExitCode       int     `json:"exit_code"`
		ElapsedSeconds float64 `json:"elapsed_seconds"`
		Error          string  `json:"error"`
	} `json:"hook"`
	// a plan's VM
	Status string `json:"status"`
}

// drfsJSON runs drfs and decodes its standard output, which must be one
// JSON document, into v; it returns the exit status and the standard
// error.
func drfsJSON(t *testing.T, v any, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(drfsBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("drfs %v: %v", args, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("drfs %v (exit %d): standard output is not one JSON document: %v\n%s\nstderr:\n%s", args, code, err, out, stderr.String())
	}
	return code, stderr.String()
}

// checkCopy checks that a restore's or failover's JSON names point p and
// the source's disks in dir, each written as it is in want.
func checkCopy(t *testing.T, what string, got jsonCopy, dir string, p jsonPoint, want map[string][]byte) {
	t.Helper()
	if got.VM != "vm1" || got.Dir != dir || got.Point.Generation != p.Generation || !got.Point.Cut.Equal(p.Cut) || got.Point.Kind != p.Kind {
		t.Errorf("%s: vm %q dir %q point %+v, want vm1, %s, %+v", what, got.VM, got.Dir, got.Point, dir, p)
	}
	if len(got.Disks) != len(want) || got.DisksCopied+got.DisksReflinked != len(want) {
		t.Errorf("%s: disks %+v (%d copied, %d reflinked), want %d", what, got.Disks, got.DisksCopied, got.DisksReflinked, len(want))
	}
	for _, d := range got.Disks {
		data, ok := want[d.Name]
		if !ok || d.Size != int64(len(data)) || d.Path != filepath.Join(dir, d.Name) {
			t.Errorf("%s: disk %+v, want one of the source's, its size and path in %s", what, d, dir)
		}
	}
	if got.BytesWritten+got.BytesShared <= 0 {
		t.Errorf("%s: bytes written %d, shared %d", what, got.BytesWritten, got.BytesShared)
	}
	compareDir(t, dir, what, want)
}

// TestJSONRecoverySite: restore, verify, failover (unplanned with a hook,
// a failing hook, a dry run, test), failover cleanup, plan validate and a
// plan's failover, each with --json: standard output is one JSON document
// that carries what the text says, and the exit status is the text's.
func TestJSONRecoverySite(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	os.WriteFile(filepath.Join(d.src, "vm1", "boot.img"), []byte(strings.Repeat("boot", 1<<18)), 0o644)
	base := filepath.Dir(d.src)
	tgt := "dir://" + filepath.Join(base, "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s")
	writeRandom(t, rand.New(rand.NewPCG(seed(t), 21)), filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 5)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	want := readAll(t, filepath.Join(d.src, "vm1"), "disk.img", "boot.img")
	pts := points(t, tgt, "vm1") // drfs points --json
	if len(pts) == 0 {
		t.Fatal("no point")
	}
	p := pts[len(pts)-1]
	newest := jsonPoint{Generation: p.Generation, Cut: p.Frozen, Kind: string(p.Kind)}

	// restore
	dir := filepath.Join(base, "restored")
	var rs jsonCopy
	if code, stderr := drfsJSON(t, &rs, "restore", "--target", tgt, "vm1", "--to", dir, "--json"); code != 0 {
		t.Fatalf("restore --json: exit %d\n%s", code, stderr)
	}
	checkCopy(t, "restore --json", rs, dir, newest, want)
	if rs.ElapsedSeconds <= 0 {
		t.Errorf("restore --json: elapsed_seconds %v", rs.ElapsedSeconds)
	}

	// verify: in sync, then a source that diverges (exit 1, still JSON).
	type verifyJSON struct {
		VM             string    `json:"vm"`
		Point          jsonPoint `json:"point"`
		InSync         bool      `json:"in_sync"`
		ChunksCompared int64     `json:"chunks_compared"`
		Disks          []struct {
			Name           string `json:"name"`
			InSync         bool   `json:"in_sync"`
			Size           int64  `json:"size"`
			PointSize      int64  `json:"point_size"`
			BytesDiffering int64  `json:"bytes_differing"`
			ChunksCompared int64  `json:"chunks_compared"`
			Ranges         []struct {
				Offset int64 `json:"offset"`
				Length int64 `json:"length"`
			} `json:"ranges"`
		} `json:"disks"`
		Repair string `json:"repair"`
	}
	verify := []string{"verify", "--target", tgt, "--source", d.src, "vm1", "--json", "--socket", filepath.Join(base, "none.sock")}
	var v verifyJSON
	if code, stderr := drfsJSON(t, &v, verify...); code != 0 || !v.InSync || v.VM != "vm1" || v.Point.Generation != newest.Generation || len(v.Disks) != 2 || v.ChunksCompared == 0 {
		t.Errorf("verify --json: exit %d, %+v\n%s", code, v, stderr)
	}
	for _, disk := range v.Disks {
		if !disk.InSync || disk.BytesDiffering != 0 || disk.ChunksCompared == 0 || disk.Size != int64(len(want[disk.Name])) {
			t.Errorf("verify --json: disk %+v", disk)
		}
	}
	f, err := os.OpenFile(filepath.Join(d.src, "vm1", "boot.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("changed outside"), 100<<10)
	f.Close()
	v = verifyJSON{}
	code, stderr := drfsJSON(t, &v, verify...)
	if code != 1 || v.InSync || v.Repair == "" || !strings.Contains(stderr, "diverges") {
		t.Errorf("verify --json of a diverged source: exit %d, %+v\n%s", code, v, stderr)
	}
	for _, disk := range v.Disks {
		if diverged := disk.Name == "boot.img"; disk.InSync == diverged || (disk.BytesDiffering > 0) != diverged || len(disk.Ranges) > 0 != diverged {
			t.Errorf("verify --json of a diverged boot.img: disk %+v", disk)
		} else if diverged && (disk.Ranges[0].Offset > 100<<10 || disk.Ranges[0].Offset+disk.Ranges[0].Length < 100<<10+15) {
			t.Errorf("verify --json: ranges %+v do not hold the change at %d", disk.Ranges, 100<<10)
		}
	}

	// failover: the point of points --json, the hook's output on stderr.
	dir = filepath.Join(base, "fo")
	var fo jsonCopy
	code, stderr = drfsJSON(t, &fo, "failover", "vm1", "--type", "unplanned", "--target", tgt, "--to", dir, "--hook", "echo hook-says-hello", "--json")
	if code != 0 || fo.Type != "unplanned" || fo.RTOSeconds <= 0 || fo.Hook == nil || fo.Hook.ExitCode != 0 || fo.Hook.Command != "echo hook-says-hello" {
		t.Errorf("failover --json: exit %d, %+v, hook %+v\n%s", code, fo, fo.Hook, stderr)
	}
	if !strings.Contains(stderr, "hook-says-hello") {
		t.Errorf("failover --json: the hook's output is not on stderr:\n%s", stderr)
	}
	checkCopy(t, "failover --json", fo, dir, newest, want)

	fo = jsonCopy{}
	dir = filepath.Join(base, "fo-hookfail")
	code, _ = drfsJSON(t, &fo, "failover", "vm1", "--type", "unplanned", "--target", tgt, "--to", dir, "--hook", "exit 7", "--json")
	if code != 7 || fo.Hook == nil || fo.Hook.ExitCode != 7 || fo.Hook.Error == "" || len(fo.Disks) != 2 {
		t.Errorf("failover --json with a failing hook: exit %d, %+v, hook %+v", code, fo, fo.Hook)
	}

	fo = jsonCopy{}
	dir = filepath.Join(base, "fo-dry")
	if code, _ = drfsJSON(t, &fo, "failover", "vm1", "--type", "test", "--target", tgt, "--to", dir, "--dry-run", "--json"); code != 0 || !fo.DryRun || fo.Point.Generation != newest.Generation || fo.BytesWritten != 0 {
		t.Errorf("failover --dry-run --json: exit %d, %+v", code, fo)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("failover --dry-run --json made %s", dir)
	}

	// A test failover, a file of the operator's in it, cleanup.
	fo = jsonCopy{}
	dir = filepath.Join(base, "fo-test")
	if code, _ = drfsJSON(t, &fo, "failover", "vm1", "--type", "test", "--target", tgt, "--to", dir, "--json"); code != 0 || fo.Type != "test" {
		t.Fatalf("failover --type test --json: exit %d, %+v", code, fo)
	}
	os.WriteFile(filepath.Join(dir, "vm.xml"), nil, 0o644)
	var cl struct {
		Dir        string   `json:"dir"`
		VM         string   `json:"vm"`
		Removed    []string `json:"removed"`
		Kept       []string `json:"kept"`
		DirRemoved bool     `json:"dir_removed"`
	}
	code, _ = drfsJSON(t, &cl, "failover", "cleanup", dir, "--json")
	for _, disk := range fo.Disks {
		if !slices.Contains(cl.Removed, disk.Path) {
			t.Errorf("failover cleanup --json: %s not in removed %q", disk.Path, cl.Removed)
		}
	}
	if code != 0 || cl.VM != "vm1" || cl.Dir != dir || cl.DirRemoved || !slices.Equal(cl.Kept, []string{filepath.Join(dir, "vm.xml")}) {
		t.Errorf("failover cleanup --json: exit %d, %+v", code, cl)
	}

	// plan validate: a plan, a plan with mistakes.
	plan := writePlan(t, "name: j\ngroups:\n  - name: only\n    vms: [vm1]\n    post:\n      - run: echo post-hook; exit 5\n")
	type validation struct {
		Name   string `json:"name"`
		Valid  bool   `json:"valid"`
		Groups []struct {
			Name string   `json:"name"`
			VMs  []string `json:"vms"`
		} `json:"groups"`
		VMs   []string `json:"vms"`
		Steps []struct {
			N      int    `json:"n"`
			Kind   string `json:"kind"`
			Status string `json:"status"`
		} `json:"steps"`
		Problems []struct {
			Line    int    `json:"line"`
			Message string `json:"message"`
		} `json:"problems"`
	}
	var pv validation
	if code, _ = drfsJSON(t, &pv, "plan", "validate", plan, "--target", tgt, "--json"); code != 0 || !pv.Valid || pv.Name != "j" ||
		len(pv.Groups) != 1 || pv.Groups[0].Name != "only" || !slices.Equal(pv.VMs, []string{"vm1"}) || len(pv.Steps) != 2 || len(pv.Problems) != 0 {
		t.Errorf("plan validate --json: exit %d, %+v", code, pv)
	}
	pv = validation{}
	bad := writePlan(t, "name: bad\ngroups:\n  - vms: [vm1, vm1]\n    scripts: []\n")
	if code, _ = drfsJSON(t, &pv, "plan", "validate", bad, "--json"); code != 1 || pv.Valid || len(pv.Problems) != 2 || pv.Problems[0].Line == 0 {
		t.Errorf("plan validate --json of a plan with mistakes: exit %d, %+v", code, pv)
	}

	// A plan whose post hook fails: exit 5, its VM failed over, the step failed.
	var pf struct {
		Plan      string     `json:"plan"`
		Completed bool       `json:"completed"`
		Error     string     `json:"error"`
		VMs       []jsonCopy `json:"vms"`
		Steps     []struct {
			Kind   string `json:"kind"`
			Status string `json:"status"`
		} `json:"steps"`
	}
	dir = filepath.Join(base, "plan")
	code, stderr = drfsJSON(t, &pf, "failover", "--plan", plan, "--type", "test", "--target", tgt, "--to", dir, "--state-dir", filepath.Join(base, "plans"), "--json")
	if code != 5 || pf.Plan != "j" || pf.Completed || !strings.Contains(pf.Error, "exit status 5") || len(pf.VMs) != 1 || pf.VMs[0].Status != "failed_over" ||
		len(pf.Steps) != 2 || pf.Steps[0].Status != "done" || pf.Steps[1].Status != "failed" || !strings.Contains(stderr, "post-hook") {
		t.Errorf("failover --plan --json: exit %d, %+v\n%s", code, pf, stderr)
	}
	if len(pf.VMs) == 1 {
		checkCopy(t, "failover --plan --json", pf.VMs[0], filepath.Join(dir, "vm1"), newest, want)
	}
}

// TestJSONProtectUnprotect: protect --wait --json gives the job and the
// VM Protected; unprotect --json the generations and bytes of change log
// it dropped and the recovery points it kept, as many as the target lists.
func TestJSONProtectUnprotect(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	base := filepath.Dir(d.state)
	tgt := "dir://" + filepath.Join(base, "target")
	socket := filepath.Join(base, "agent.sock")
	a := startAgent(t, d, socket, "--target", tgt)

	var pr struct {
		VM  string `json:"vm"`
		Job struct {
			ID   uint64 `json:"id"`
			Kind string `json:"kind"`
			VM   string `json:"vm"`
		} `json:"job"`
		Status *struct {
			State string  `json:"state"`
			RPO   float64 `json:"rpo_seconds"`
		} `json:"status"`
	}
	// A long interval: what is written next stays in the change log.
	code, stderr := drfsJSON(t, &pr, "protect", "vm1", "--interval", "1h", "--wait", "--json", "--socket", socket)
	if code != 0 || pr.VM != "vm1" || pr.Job.ID == 0 || pr.Job.Kind != "enable-protection" || pr.Job.VM != "vm1" ||
		pr.Status == nil || pr.Status.State != "Protected" || pr.Status.RPO < 0 {
		t.Fatalf("protect --wait --json: exit %d, %+v %+v\n%s", code, pr, pr.Status, stderr)
	}
	// Protected already: its settings change, and no job starts.
	var again map[string]any
	if code, stderr = drfsJSON(t, &again, "protect", "vm1", "--interval", "2h", "--json", "--socket", socket); code != 0 || again["settings_changed"] == nil || again["job"] != nil {
		t.Errorf("protect --json of a protected VM: exit %d, %v\n%s", code, again, stderr)
	}
	writeRandom(t, rand.New(rand.NewPCG(seed(t), 22)), filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 5)

	var ur struct {
		VM                 string `json:"vm"`
		Target             string `json:"target"`
		GenerationsDropped int    `json:"generations_dropped"`
		BytesDropped       int64  `json:"bytes_dropped"`
		PointsKept         int    `json:"points_kept"`
	}
	code, stderr = drfsJSON(t, &ur, "unprotect", "vm1", "--json", "--socket", socket)
	if code != 0 || ur.VM != "vm1" || ur.Target != tgt || ur.GenerationsDropped < 1 || ur.BytesDropped <= 0 || ur.PointsKept < 1 {
		t.Errorf("unprotect --json: exit %d, %+v\n%s", code, ur, stderr)
	}
	a.stop(t)
	if n := len(points(t, tgt, "vm1")); n != ur.PointsKept {
		t.Errorf("unprotect --json kept %d points, the target lists %d", ur.PointsKept, n)
	}
}
