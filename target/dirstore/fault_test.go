package dirstore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// faults fails writes of chosen kinds with ENOSPC, as a full disk does.
type faults struct {
	mu     sync.Mutex
	counts map[string]int
	failAt map[string]int // kind → the write that fails first
	once   bool           // only that write fails, not the ones after
}

func (f *faults) hook(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.counts[op]
	f.counts[op]++
	at, ok := f.failAt[op]
	if !ok || n < at || (f.once && n > at) {
		return nil
	}
	return &os.PathError{Op: "write", Path: op, Err: syscall.ENOSPC}
}

func (f *faults) set(once bool, failAt map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts, f.failAt, f.once = map[string]int{}, failAt, once
}

// wantFull fails t unless err is a retryable ENOSPC.
func wantFull(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || target.IsPermanent(err) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%s: %v, want a retryable ENOSPC", what, err)
	}
}

// faultScenario opens a store on a copy of the crash scenario with fault
// injection, and returns the model before and after the staged commit.
func faultScenario(t *testing.T, newDir func() string) (*Store, *faults, *storetest.VM, *storetest.Gen) {
	t.Helper()
	st := openT(t, newDir())
	t.Cleanup(func() { st.Close() })
	f := &faults{}
	f.set(false, nil)
	st.faultHook = f.hook
	m, g := crashScenario(t, nil, false)
	return st, f, m, g
}

func TestFullDiskStage(t *testing.T) {
	newDir := scenarioDir(t, func(st *Store) { crashScenario(t, st, false) })
	for _, at := range []int{0, 1, 3} {
		t.Run(fmt.Sprint(at), func(t *testing.T) {
			st, f, m, g := faultScenario(t, newDir)
			// A stream of a few MiB, so that the failure comes mid-stream.
			other := m.Next(g.Gen)
			const disk = "big"
			other.Add(disk, 2<<20)
			rng := rand.New(rand.NewPCG(3, 3))
			for b := range uint64(512) {
				other.Write(disk, b, storetest.RandomBlock(rng, 4096))
			}
			must(t, other.Build())
			f.set(false, map[string]int{"stage": at})
			err := st.Stage(bg, "vm", g.Gen, disk, bytes.NewReader(other.Streams[disk]))
			wantFull(t, "Stage on a full disk", err)
			f.set(false, nil)
			checkClean(t, st, "vm")
			if ok, _ := st.exists(stagedPath("vm", g.Gen, disk)); ok {
				t.Error("a stream that failed is staged")
			}
			must(t, st.Commit(bg, "vm", g.Gen, g.Commit()))
			g.Committed()
			m.CheckPoints(t, st)
		})
	}
}

func TestFullDiskCommit(t *testing.T) {
	newDir := scenarioDir(t, func(st *Store) { crashScenario(t, st, false) })
	for _, tc := range []struct {
		op   string
		at   int
		once bool
	}{
		{"undo", 0, false}, {"undo", 2, false},
		{"marker", 0, false},
		{"replica", 0, true}, {"replica", 1, true}, {"replica", 4, true}, {"replica", 9, false},
		{"manifest", 0, true},
	} {
		t.Run(fmt.Sprintf("%s-%d-once=%v", tc.op, tc.at, tc.once), func(t *testing.T) {
			st, f, m, g := faultScenario(t, newDir)
			f.set(tc.once, map[string]int{tc.op: tc.at})
			wantFull(t, "Commit on a full disk", st.Commit(bg, "vm", g.Gen, g.Commit()))
			f.set(false, nil)
			// At the last point, exactly, with nothing left over.
			m.CheckPoints(t, st)
			checkClean(t, st, "vm")
			if ok, _ := st.exists(undoDir("vm", g.Gen)); ok {
				t.Error("undo data of the failed commit left")
			}
			// The staging stayed: the retry needs no Stage.
			must(t, st.Commit(bg, "vm", g.Gen, g.Commit()))
			g.Committed()
			m.CheckPoints(t, st)
			checkClean(t, st, "vm")
		})
	}
}

// TestFullDiskNoRollback: the disk stays full while the commit tries to
// undo itself. The VM reports the error until space is back, then the
// commit is finished from its marker.
func TestFullDiskNoRollback(t *testing.T) {
	newDir := scenarioDir(t, func(st *Store) { crashScenario(t, st, false) })
	st, f, m, g := faultScenario(t, newDir)
	f.set(false, map[string]int{"replica": 5, "rollback": 0})
	wantFull(t, "Commit on a full disk", st.Commit(bg, "vm", g.Gen, g.Commit()))
	_, err := st.Points(bg, "vm")
	wantFull(t, "Points while the disk is still full", err)
	f.set(false, nil)
	g.Committed()
	m.CheckPoints(t, st)
	checkClean(t, st, "vm")
	must(t, st.Commit(bg, "vm", g.Gen, g.Commit())) // the shipper's retry: already there
	m.CheckPoints(t, st)
}
