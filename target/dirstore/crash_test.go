package dirstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// The crash tests run the operation in a child process (this test binary,
// running TestCrashChild) that exits at its n-th step, then open the store
// in the parent and check that it is at a complete point that reads back
// exactly: the old one if the child died before the commit's marker, the
// new one from the marker on.

const crashEnv = "DIRSTORE_CRASH_CHILD"

// crashJob is what the child does.
type crashJob struct {
	Dir    string
	Op     string // "commit", "expire", "open", "stage"
	VM     string
	Gen    uint64
	Commit target.Commit
	Before time.Time
	Keep   int
	Disk   string
	Stream []byte
	Crash  int // exit at this step (0-based); -1: never
}

const crashExit = 42

func TestCrashChild(t *testing.T) {
	spec := os.Getenv(crashEnv)
	if spec == "" {
		t.Skip("run by the crash tests")
	}
	var job crashJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		t.Fatal(err)
	}
	n := 0
	hook := func(step string) {
		if n == job.Crash {
			fmt.Fprintf(os.Stderr, "crash at step %d %q\n", n, step)
			os.Exit(crashExit)
		}
		n++
	}
	st, err := open(job.Dir, Options{}, hook)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	switch job.Op {
	case "commit":
		err = st.Commit(ctx, job.VM, job.Gen, job.Commit)
	case "expire":
		err = st.Expire(ctx, job.VM, job.Before, job.Keep)
	case "stage":
		err = st.Stage(ctx, job.VM, job.Gen, job.Disk, strings.NewReader(string(job.Stream)))
	case "open":
	}
	if err != nil {
		t.Fatal(err)
	}
}

// runChild runs job in a child process and reports whether it crashed.
func runChild(t *testing.T, job crashJob) bool {
	t.Helper()
	b, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return false
	case errors.As(err, &exit) && exit.ExitCode() == crashExit:
		return true
	}
	t.Fatalf("child %s crash at %d: %v\n%s", job.Op, job.Crash, err, out)
	return false
}

// recordSteps runs fn on a store whose steps are recorded.
func recordSteps(t *testing.T, dir string, fn func(*Store) error) []string {
	t.Helper()
	var steps []string
	st, err := open(dir, Options{}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := fn(st); err != nil {
		t.Fatal(err)
	}
	return steps
}

func openT(t testing.TB, dir string) *Store {
	t.Helper()
	st, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

var bg = context.Background()

// crashScenario builds in st a VM with points (none if first) and stages
// the next generation, from a fixed seed: the same every call. With a nil
// st it only builds the model.
func crashScenario(t *testing.T, st target.Store, first bool) (*storetest.VM, *storetest.Gen) {
	t.Helper()
	if st == nil {
		st = nullStore{}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	m, g := storetest.NewVM(rng, "vm", "a", "b/c", "gone")
	if !first {
		must(t, g.Apply(bg, st))
		for gen := uint64(2); gen <= 3; gen++ {
			g = m.Next(gen)
			if gen == 3 {
				g.Remove("gone")
			}
			g.RandomGen(rng, storetest.RandomOptions{Changes: 20, MaxGrow: 20000, MinSize: 4096})
			must(t, g.Apply(bg, st))
		}
		g = m.Next(5)
		g.Resize("a", int64(len(g.Contents("a")))-10000)        // shrink
		g.Resize("b/c", int64(len(g.Contents("b/c")))+3*4096+7) // grow
		g.Add("new/disk", 6*4096)
		g.RandomGen(rng, storetest.RandomOptions{Changes: 30})
	}
	must(t, g.Build())
	must(t, g.Stage(bg, st))
	return m, g
}

// scenarioDir builds the crash scenario once in a directory and returns a
// function that copies it to a new one.
func scenarioDir(t *testing.T, build func(st *Store)) func() string {
	t.Helper()
	tmpl := t.TempDir()
	st := openT(t, tmpl)
	build(st)
	must(t, st.Close())
	return func() string {
		dir := t.TempDir()
		must(t, os.CopyFS(dir, os.DirFS(tmpl)))
		return dir
	}
}

// nullStore takes everything and keeps nothing: for building models.
type nullStore struct{ target.Store }

func (nullStore) Stage(context.Context, string, uint64, string, io.Reader) error { return nil }
func (nullStore) Commit(context.Context, string, uint64, target.Commit) error    { return nil }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkClean checks that a store at rest has no leftovers: no marker, no
// temporary files, no staging of committed generations, undo data only for
// the points after the oldest.
func checkClean(t *testing.T, st *Store, vm string) {
	t.Helper()
	if ok, _ := st.exists(markerPath(vm)); ok {
		t.Error("the applying marker is still there")
	}
	if ok, _ := st.exists(tmpDir(vm)); ok {
		st.walkFiles(tmpDir(vm), func(rel string) error {
			t.Errorf("temporary file %s left", rel)
			return nil
		})
	}
	pts, err := st.Points(bg, vm)
	if err != nil {
		return
	}
	newest := pts[len(pts)-1].Generation
	for _, root := range []string{stagingRoot(vm), blocksRoot(vm)} {
		for _, g := range st.genDirs(root) {
			if g <= newest {
				t.Errorf("%s of committed generation %d left", root, g)
			}
		}
	}
	var want []uint64
	for _, p := range pts[1:] {
		want = append(want, p.Generation)
	}
	for _, g := range st.genDirs(undoRoot(vm)) {
		if !slices.Contains(want, g) {
			t.Errorf("undo data of generation %d left; points %v", g, want)
		}
	}
}

func TestCrashDuringCommit(t *testing.T) {
	for _, first := range []bool{false, true} {
		t.Run(fmt.Sprintf("first=%v", first), func(t *testing.T) {
			newDir := scenarioDir(t, func(st *Store) { crashScenario(t, st, first) })
			_, g := crashScenario(t, nil, first)
			steps := recordSteps(t, newDir(), func(st *Store) error { return st.Commit(bg, "vm", g.Gen, g.Commit()) })
			marker := slices.Index(steps, "marker")
			if marker < 0 {
				t.Fatalf("no marker step in %q", steps)
			}
			t.Logf("%d steps: %q", len(steps), steps)
			for k, step := range steps {
				t.Run(fmt.Sprintf("%02d-%s", k, strings.ReplaceAll(step, "/", "_")), func(t *testing.T) {
					dir := newDir()
					m, g := crashScenario(t, nil, first)
					job := crashJob{Dir: dir, Op: "commit", VM: "vm", Gen: g.Gen, Commit: g.Commit(), Crash: k}
					if !runChild(t, job) {
						t.Fatalf("the child did not reach step %d", k)
					}
					st := openT(t, dir)
					defer st.Close()
					if k >= marker {
						g.Committed() // recovery finished the commit
					}
					checkModel(t, st, m)
					checkClean(t, st, "vm")
					if k < marker {
						// The staging survived: the retry needs no Stage.
						must(t, st.Commit(bg, "vm", g.Gen, g.Commit()))
						g.Committed()
						checkModel(t, st, m)
						checkClean(t, st, "vm")
					}
				})
			}
		})
	}
}

// checkModel checks the store against the model, which may have no points.
func checkModel(t *testing.T, st *Store, m *storetest.VM) {
	t.Helper()
	if len(m.Points) == 0 {
		if _, err := st.Points(bg, m.Name); !errors.Is(err, target.ErrNotFound) {
			t.Fatalf("Points of a VM never committed: %v", err)
		}
		return
	}
	m.CheckPoints(t, st)
}

// TestCrashDuringRecovery crashes the commit right after its marker, then
// the recovery at each of its steps, then recovers for good.
func TestCrashDuringRecovery(t *testing.T) {
	newDir := scenarioDir(t, func(st *Store) { crashScenario(t, st, false) })
	_, g := crashScenario(t, nil, false)
	steps := recordSteps(t, newDir(), func(st *Store) error { return st.Commit(bg, "vm", g.Gen, g.Commit()) })
	marker := slices.Index(steps, "marker")

	dir := newDir()
	job := crashJob{Dir: dir, Op: "commit", VM: "vm", Gen: g.Gen, Commit: g.Commit(), Crash: marker}
	if !runChild(t, job) {
		t.Fatal("the child did not crash")
	}
	// Record the recovery's steps on a copy-free rerun: crash it at each
	// step in turn until it gets through.
	for k := 0; ; k++ {
		if !runChild(t, crashJob{Dir: dir, Op: "open", Crash: k}) {
			t.Logf("recovery ran through after %d crashes", k)
			break
		}
		if k > 50 {
			t.Fatal("recovery does not finish")
		}
	}
	m, g := crashScenario(t, nil, false)
	g.Committed()
	st := openT(t, dir)
	defer st.Close()
	checkModel(t, st, m)
	checkClean(t, st, "vm")
}

func TestCrashDuringExpire(t *testing.T) {
	model := func() *storetest.VM {
		m, g := crashScenario(t, nil, false)
		g.Committed()
		return m
	}
	newDir := scenarioDir(t, func(st *Store) {
		_, g := crashScenario(t, st, false)
		must(t, st.Commit(bg, "vm", g.Gen, g.Commit()))
	})
	before := model().Points[2].Frozen.Add(time.Minute) // drops 3 of 4, and disk "gone"
	steps := recordSteps(t, newDir(), func(st *Store) error { return st.Expire(bg, "vm", before, 1) })
	t.Logf("%d steps: %q", len(steps), steps)
	for k := range steps {
		t.Run(fmt.Sprint(k), func(t *testing.T) {
			dir := newDir()
			m := model()
			if !runChild(t, crashJob{Dir: dir, Op: "expire", VM: "vm", Before: before, Keep: 1, Crash: k}) {
				t.Fatal("the child did not crash")
			}
			st := openT(t, dir)
			defer st.Close()
			m.Points = m.Points[3:] // the manifest is the first step
			checkModel(t, st, m)
			checkClean(t, st, "vm")
			if ok, _ := st.exists(replicaPath("vm", "gone")); ok {
				t.Error("the replica of a disk no point holds is left")
			}
		})
	}
}

// TestCrashDuringStage crashes a Stage at each of its steps (the blocks
// file partly written, whole, the record written, installed): the store
// stays at its point with nothing staged but what was installed, no blocks
// file is left that no record names, and the generation applies afterwards.
func TestCrashDuringStage(t *testing.T) {
	build := func(t *testing.T) (*storetest.VM, *storetest.Gen) {
		m, g := crashScenario(t, nil, false)
		g.Committed()
		next := m.Next(6)
		next.RandomGen(rand.New(rand.NewPCG(1, 1)), storetest.RandomOptions{Changes: 10})
		must(t, next.Build())
		return m, next
	}
	newDir := scenarioDir(t, func(st *Store) {
		_, g := crashScenario(t, st, false)
		must(t, st.Commit(bg, "vm", g.Gen, g.Commit()))
	})
	_, next := build(t)
	disk := next.StagedDisks()[0]
	steps := recordSteps(t, newDir(), func(st *Store) error {
		return st.Stage(bg, "vm", 6, disk, bytes.NewReader(next.Streams[disk]))
	})
	installed := slices.Index(steps, "stage installed")
	if installed < 0 || !slices.Contains(steps, "stage partial") {
		t.Fatalf("steps %q", steps)
	}
	t.Logf("%d steps: %q", len(steps), steps)
	for k, step := range steps {
		t.Run(fmt.Sprintf("%02d-%s", k, step), func(t *testing.T) {
			dir := newDir()
			m, next := build(t)
			job := crashJob{Dir: dir, Op: "stage", VM: "vm", Gen: 6, Disk: disk, Stream: next.Streams[disk], Crash: k}
			if !runChild(t, job) {
				t.Fatal("the child did not crash")
			}
			st := openT(t, dir)
			defer st.Close()
			checkClean(t, st, "vm")
			ok, _ := st.exists(stagedPath("vm", 6, disk))
			if ok != (k >= installed) {
				t.Errorf("staged after a crash at step %d: %v", k, ok)
			}
			if n := countFiles(t, st, blocksDir("vm", 6)); n != map[bool]int{false: 0, true: 1}[ok] {
				t.Errorf("%d blocks files left, staged %v", n, ok)
			}
			m.CheckPoints(t, st)
			must(t, next.Apply(bg, st))
			m.CheckPoints(t, st)
			checkClean(t, st, "vm")
		})
	}
}

func countFiles(t *testing.T, st *Store, dir string) int {
	t.Helper()
	n := 0
	must(t, st.walkFiles(dir, func(string) error { n++; return nil }))
	return n
}
