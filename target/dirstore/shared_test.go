package dirstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// A flock belongs to an open file, so a writing Store and read-only Stores
// of one process exclude each other exactly as they would from different
// processes: these tests need no child process.

func openReadOnlyT(t testing.TB, dir string) *Store {
	t.Helper()
	st, err := OpenReadOnly(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestReadersWhileWriting reads random points through two read-only Stores
// while the writer commits random generations and expires old points:
// every byte a reader returns is the byte of its point, no reader fails
// for a point it holds open, and the writer's points stay exact.
// STORETEST_SEED replays a run.
func TestReadersWhileWriting(t *testing.T) {
	seed := storetest.Seed(t)
	t.Logf("seed %d (STORETEST_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	dir := t.TempDir()
	w := openT(t, dir)
	defer w.Close()

	var mu sync.Mutex
	want := map[uint64]map[string][]byte{} // generation → disk → contents
	record := func(g *storetest.Gen) {
		m := map[string][]byte{}
		for _, d := range g.Disks() {
			m[d] = g.Contents(d)
		}
		mu.Lock()
		want[g.Gen] = m
		mu.Unlock()
	}
	m, g := storetest.NewVM(rng, "vm", "a.img", "data/b.raw")
	record(g)
	must(t, g.Apply(bg, w))

	done := make(chan struct{})
	var reads sync.WaitGroup
	var nread, nheld, nexpired int64
	var countMu sync.Mutex
	for i := range 3 {
		r := openReadOnlyT(t, dir)
		defer r.Close()
		rrng := rand.New(rand.NewPCG(seed, uint64(10+i)))
		reads.Add(1)
		go func() {
			defer reads.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				pts, err := r.Points(bg, "vm")
				if err != nil {
					t.Errorf("reader %d: Points: %v", i, err)
					return
				}
				p := pts[rrng.IntN(len(pts))]
				disk := p.Disks[rrng.IntN(len(p.Disks))].Name
				mu.Lock()
				exp := want[p.Generation][disk]
				mu.Unlock()
				dr, err := r.Open(bg, "vm", p.Generation, disk)
				if errors.Is(err, target.ErrNotFound) {
					countMu.Lock()
					nexpired++ // expired between Points and Open
					countMu.Unlock()
					continue
				}
				if err != nil {
					t.Errorf("reader %d: Open point %d %s: %v", i, p.Generation, disk, err)
					return
				}
				// Slow reads, so that commits and expiries run meanwhile.
				slow := rrng.IntN(3) == 0
				got := make([]byte, dr.Size())
				for off := 0; off < len(got); off += 4096 {
					if _, err := dr.ReadAt(got[off:min(off+4096, len(got))], int64(off)); err != nil && err != io.EOF {
						t.Errorf("reader %d: point %d %s at %d: %v", i, p.Generation, disk, off, err)
						dr.Close()
						return
					}
					if slow {
						time.Sleep(time.Millisecond)
					}
				}
				dr.Close()
				if !bytes.Equal(got, exp) {
					t.Errorf("reader %d: point %d disk %s: the bytes differ from the point's (first at %d)", i, p.Generation, disk, firstDiffAt(got, exp))
					return
				}
				countMu.Lock()
				nread++
				if slow {
					nheld++
				}
				countMu.Unlock()
			}
		}()
	}

	for gen := uint64(2); gen <= 40; gen++ {
		g := m.Next(gen)
		g.RandomGen(rng, storetest.RandomOptions{Changes: 8, MaxGrow: 3 * 4096, MinSize: 512})
		record(g)
		must(t, g.Apply(bg, w))
		if gen%4 == 0 {
			// Retention: keep the points of the last 5 hours (the model's
			// points are an hour apart).
			before := m.Newest().Frozen.Add(-5 * time.Hour)
			must(t, w.Expire(bg, "vm", before, 1))
			pts, err := w.Points(bg, "vm")
			must(t, err)
			m.Points = slices.DeleteFunc(m.Points, func(p storetest.Point) bool {
				return !slices.ContainsFunc(pts, func(q target.Point) bool { return q.Generation == p.Gen })
			})
		}
		time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
	}
	close(done)
	reads.Wait()
	t.Logf("%d whole-disk reads (%d slow), %d points expired before Open", nread, nheld, nexpired)
	if nread == 0 {
		t.Fatal("the readers read nothing")
	}
	m.CheckPoints(t, w)
	r := openReadOnlyT(t, dir)
	defer r.Close()
	m.CheckPoints(t, r)
}

func firstDiffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestSecondWriterRefused: a second writing Store gets an error naming the
// holder; read-only Stores open meanwhile and refuse changes; once the
// writer closes, another may open.
func TestSecondWriterRefused(t *testing.T) {
	dir := t.TempDir()
	w := openT(t, dir)
	rng := rand.New(rand.NewPCG(1, 2))
	_, g := storetest.NewVM(rng, "vm", "d")
	must(t, g.Apply(bg, w))

	_, err := Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("already open for writing by pid %d", os.Getpid())) {
		t.Fatalf("second writer: %v, want the holder named", err)
	}
	r := openReadOnlyT(t, dir)
	defer r.Close()
	if _, err := r.Points(bg, "vm"); err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{
		"Commit": r.Commit(bg, "vm", 2, g.Commit()),
		"Expire": r.Expire(bg, "vm", time.Now(), 1),
		"Stage":  r.Stage(bg, "vm", 2, "d", strings.NewReader("")),
	} {
		if !errors.Is(err, errReadOnly) || !target.IsPermanent(err) {
			t.Errorf("%s on a read-only store: %v, want a permanent read-only error", what, err)
		}
	}
	must(t, w.Close())
	w2 := openT(t, dir)
	must(t, w2.Close())
}

// TestReaderPinsPoint: a point that a read-only Store's reader holds open
// is not expired by the writer until the reader closes.
func TestReaderPinsPoint(t *testing.T) {
	dir := t.TempDir()
	w := openT(t, dir)
	defer w.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	m, g := storetest.NewVM(rng, "vm", "d")
	must(t, g.Apply(bg, w))
	for gen := uint64(2); gen <= 4; gen++ {
		g := m.Next(gen)
		g.RandomGen(rng, storetest.RandomOptions{Changes: 8})
		must(t, g.Apply(bg, w))
	}
	r := openReadOnlyT(t, dir)
	defer r.Close()
	dr, err := r.Open(bg, "vm", 1, "d")
	must(t, err)
	future := time.Now().Add(time.Hour)
	must(t, w.Expire(bg, "vm", future, 1))
	m.CheckPoints(t, w) // nothing dropped: point 1 is held, and points go oldest first
	got := make([]byte, dr.Size())
	if _, err := dr.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(got, m.Points[0].Disks["d"]) {
		t.Fatal("the held point reads other bytes")
	}
	must(t, dr.Close())
	must(t, w.Expire(bg, "vm", future, 1))
	pts, err := r.Points(bg, "vm")
	must(t, err)
	if len(pts) != 1 || pts[0].Generation != 4 {
		t.Fatalf("after the reader closed, Expire left %v", pts)
	}
	m.Points = m.Points[3:]
	m.CheckPoints(t, r)
	if pins := w.genDirs(pinsDir("vm")); slices.ContainsFunc(pins, func(g uint64) bool { return g < 4 }) {
		t.Errorf("pin files of expired points left: %v", pins)
	}
}

// TestReadOnlyAfterCrash: a commit interrupted by a crash after its marker
// is finished by a read-only Store when no writer runs; while a writer holds
// the directory without having loaded the VM, a reader is told to retry
// rather than read a half-applied replica.
func TestReadOnlyAfterCrash(t *testing.T) {
	newDir := scenarioDir(t, func(st *Store) { crashScenario(t, st, false) })
	_, g := crashScenario(t, nil, false)
	steps := recordSteps(t, newDir(), func(st *Store) error { return st.Commit(bg, "vm", g.Gen, g.Commit()) })
	k := slices.IndexFunc(steps, func(s string) bool { return strings.HasPrefix(s, "apply ") })
	if k < 0 {
		t.Fatalf("no apply step in %q", steps)
	}

	crashed := func() (string, *storetest.VM, *storetest.Gen) {
		dir := newDir()
		m, g := crashScenario(t, nil, false)
		if !runChild(t, crashJob{Dir: dir, Op: "commit", VM: "vm", Gen: g.Gen, Commit: g.Commit(), Crash: k}) {
			t.Fatalf("the child did not reach step %d", k)
		}
		return dir, m, g
	}

	t.Run("no writer", func(t *testing.T) {
		dir, m, g := crashed()
		r := openReadOnlyT(t, dir)
		defer r.Close()
		g.Committed()
		m.CheckPoints(t, r)
	})
	t.Run("writer running", func(t *testing.T) {
		dir, m, g := crashed()
		lockf, err := os.OpenFile(dir+"/"+lockName, os.O_RDWR, 0)
		must(t, err)
		must(t, flock(lockf, lockExclusive, true)) // a writer that has not loaded the VM yet
		r := openReadOnlyT(t, dir)
		defer r.Close()
		if _, err := r.Points(bg, "vm"); err == nil || !strings.Contains(err.Error(), "interrupted") || target.IsPermanent(err) {
			t.Fatalf("Points with a commit half applied: %v, want a retryable error", err)
		}
		lockf.Close()
		w := openT(t, dir) // the writer loads it
		w.Close()
		g.Committed()
		m.CheckPoints(t, r)
	})
}
