package dirstore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

func TestOneStorePerDirectory(t *testing.T) {
	dir := t.TempDir()
	st := openT(t, dir)
	if st2, err := Open(dir, Options{}); err == nil {
		st2.Close()
		t.Fatal("a second Store opened the same directory")
	}
	must(t, st.Close())
	must(t, openT(t, dir).Close())
}

func TestAppliedClock(t *testing.T) {
	now := time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC)
	st, err := Open(t.TempDir(), Options{Clock: clock.NewFake(now)})
	must(t, err)
	defer st.Close()
	_, g := storetest.NewVM(rand.New(rand.NewPCG(1, 2)), "vm", "d")
	must(t, g.Apply(bg, st))
	pts, err := st.Points(bg, "vm")
	must(t, err)
	if !pts[0].Applied.Equal(now) {
		t.Fatalf("Applied = %v, want %v", pts[0].Applied, now)
	}
}

// TestNameClash: a disk cannot be a directory of another ("a", "a/b").
func TestNameClash(t *testing.T) {
	st := openT(t, t.TempDir())
	defer st.Close()
	rng := rand.New(rand.NewPCG(1, 3))
	_, g := storetest.NewVM(rng, "vm", "a", "a/b")
	must(t, g.Build())
	err := g.Stage(bg, st)
	if err == nil {
		err = st.Commit(bg, "vm", 1, g.Commit())
	}
	if !errors.Is(err, target.ErrBadName) {
		t.Fatalf("disks a and a/b: %v, want ErrBadName", err)
	}
	// Across points: "x" held by a retained point, "x/y" new.
	m, g := storetest.NewVM(rng, "vm2", "x")
	must(t, g.Apply(bg, st))
	g = m.Next(2)
	g.Remove("x")
	g.Add("x/y", 4096)
	must(t, g.Build())
	err = g.Stage(bg, st)
	if err == nil {
		err = st.Commit(bg, "vm2", 2, g.Commit())
	}
	if !errors.Is(err, target.ErrBadName) {
		t.Fatalf("disk x/y while x is held: %v, want ErrBadName", err)
	}
	m.CheckPoints(t, st)
}

// TestTrailingData: Stage stops at the stream's trailer; what follows is
// neither staged nor an error (a transport may carry more).
func TestTrailingData(t *testing.T) {
	st := openT(t, t.TempDir())
	defer st.Close()
	m, g := storetest.NewVM(rand.New(rand.NewPCG(1, 4)), "vm", "d")
	must(t, g.Build())
	stream := g.Streams["d"]
	src := bufio.NewReader(io.MultiReader(bytes.NewReader(stream), strings.NewReader("next")))
	must(t, st.Stage(bg, "vm", 1, "d", src))
	if rest, _ := io.ReadAll(src); string(rest) != "next" {
		t.Errorf("Stage read %q past the trailer", "next"[:4-len(rest)])
	}
	staged, err := st.readStaged("vm", 1, "d")
	must(t, err)
	if want := int64(len(g.Contents("d"))); staged.diskSize != want {
		t.Errorf("the staged record says %d bytes, the disk has %d", staged.diskSize, want)
	}
	must(t, st.Commit(bg, "vm", 1, g.Commit()))
	g.Committed()
	m.CheckPoints(t, st)
}

// TestUnknownFormat: a stream of a newer major version is refused as
// corrupt (permanent), not retried forever.
func TestUnknownFormat(t *testing.T) {
	st := openT(t, t.TempDir())
	defer st.Close()
	_, g := storetest.NewVM(rand.New(rand.NewPCG(1, 6)), "vm", "d")
	must(t, g.Build())
	s := bytes.Clone(g.Streams["d"])
	s[len(frame.Magic)] = frame.Version + 1
	err := st.Stage(bg, "vm", 1, "d", bytes.NewReader(s))
	if !errors.Is(err, target.ErrCorrupt) || !target.IsPermanent(err) {
		t.Fatalf("a newer format: %v, want a permanent ErrCorrupt", err)
	}
	if _, err := os.Stat(filepath.Join(st.root.Name(), "vm", "staging")); err == nil {
		t.Error("a refused stream created the staging directory")
	}
}

// TestRandomHistory runs a long random history on one VM: disks added,
// removed and added again, sizes up and down, points expired by age and
// count, readers held across commits and expiry; every retained point is
// checked against the model as it goes.
func TestRandomHistory(t *testing.T) {
	seed := storetest.Seed(t)
	rng := rand.New(rand.NewPCG(seed, 99))
	defer func() {
		if t.Failed() {
			t.Logf("replay with STORETEST_SEED=%d", seed)
		}
	}()
	st := openT(t, t.TempDir())
	defer st.Close()
	m, g := storetest.NewVM(rng, "vm", "a", "b/c")
	must(t, g.Apply(bg, st))
	spare := []string{"d", "e/f", "b/g"}
	type held struct {
		r    target.DiskReader
		want []byte
	}
	var readers []held
	for gen := uint64(2); gen <= 30; gen++ {
		g := m.Next(gen)
		disks := g.Disks()
		switch x := rng.IntN(10); {
		case x == 0 && len(disks) > 1:
			g.Remove(disks[rng.IntN(len(disks))])
		case x == 1:
			for _, d := range spare {
				if g.Contents(d) == nil {
					g.Add(d, int64(rng.IntN(20))*4096+int64(rng.IntN(2))*1000)
					break
				}
			}
		}
		g.RandomGen(rng, storetest.RandomOptions{Changes: 10, MaxGrow: 5 * 4096, MinSize: 0, Unchanged: 0.3})
		must(t, g.Apply(bg, st))
		if rng.IntN(4) == 0 { // hold a reader of a random point
			p := m.Points[rng.IntN(len(m.Points))]
			for d, want := range p.Disks {
				r, err := st.Open(bg, "vm", p.Gen, d)
				must(t, err)
				readers = append(readers, held{r, want})
				break
			}
		}
		if rng.IntN(5) == 0 {
			keep := 1 + rng.IntN(4)
			before := m.Points[rng.IntN(len(m.Points))].Frozen
			must(t, st.Expire(bg, "vm", before, keep))
			pts, err := st.Points(bg, "vm")
			must(t, err)
			m.Points = m.Points[len(m.Points)-len(pts):]
		}
		if gen%10 == 0 {
			m.CheckPoints(t, st)
			for _, h := range readers {
				got := make([]byte, h.r.Size())
				if n, err := h.r.ReadAt(got, 0); n != len(got) || !bytes.Equal(got, h.want) {
					t.Fatalf("a held reader reads %d bytes, %v, not its point", n, err)
				}
				h.r.Close()
			}
			readers = nil
		}
	}
	m.CheckPoints(t, st)
	for _, h := range readers {
		h.r.Close()
	}
	must(t, st.Expire(bg, "vm", m.Newest().Frozen, 0))
	m.Points = m.Points[len(m.Points)-1:]
	m.CheckPoints(t, st)
	checkClean(t, st, "vm")
}

// TestDamage: a damaged manifest or undo file is a permanent error of that
// VM only, and a damaged undo payload fails the reads that need it.
func TestDamage(t *testing.T) {
	dir := t.TempDir()
	st := openT(t, dir)
	rng := rand.New(rand.NewPCG(1, 7))
	m, g := storetest.NewVM(rng, "vm", "d")
	must(t, g.Apply(bg, st))
	g = m.Next(2)
	g.RandomGen(rng, storetest.RandomOptions{Changes: 50})
	must(t, g.Apply(bg, st))
	other, g2 := storetest.NewVM(rng, "other", "d")
	must(t, g2.Apply(bg, st))
	must(t, st.Close())

	// Flip a byte of every undo payload.
	up := filepath.Join(dir, "vm", "undo", "2", "d")
	b, err := os.ReadFile(up)
	must(t, err)
	indexAt := int(binary.LittleEndian.Uint64(b[len(b)-undoFooterLen:]))
	if indexAt == undoHeaderLen {
		t.Fatal("the undo file has no data")
	}
	for i := undoHeaderLen; i < indexAt; i += 512 {
		b[i] ^= 0x40
	}
	must(t, os.WriteFile(up, b, 0o600))
	st = openT(t, dir)
	r, err := st.Open(bg, "vm", 1, "d")
	must(t, err)
	buf := make([]byte, r.Size())
	if _, err := r.ReadAt(buf, 0); err == nil || !target.IsPermanent(err) {
		t.Fatalf("reading through a damaged undo file: %v, want a permanent error", err)
	}
	r.Close()
	must(t, storetest.CheckDisk(st, "vm", 2, "d", m.Points[1].Disks["d"])) // the newest point does not need it
	must(t, st.Close())

	// A damaged manifest.
	must(t, os.WriteFile(filepath.Join(dir, "vm", "points.json"), []byte("{\"format\":1,"), 0o600))
	st = openT(t, dir)
	defer st.Close()
	if _, err := st.Points(bg, "vm"); err == nil || !target.IsPermanent(err) {
		t.Fatalf("Points with a damaged manifest: %v, want a permanent error", err)
	}
	vms, err := st.VMs(bg)
	must(t, err)
	if len(vms) != 2 {
		t.Fatalf("VMs = %q, want both listed", vms)
	}
	other.CheckPoints(t, st)
}

// TestStagedLayoutGuessedWrong: a disk staged packed (the newest point held
// it) that is new by the time of its commit (a commit in between removed
// it) still applies exactly, on a fresh replica.
func TestStagedLayoutGuessedWrong(t *testing.T) {
	st := openT(t, t.TempDir())
	defer st.Close()
	rng := rand.New(rand.NewPCG(9, 9))
	m, g := storetest.NewVM(rng, "vm", "a", "b")
	must(t, g.Apply(bg, st))

	g2 := m.Next(2)
	g2.Remove("a")
	g2.Touch("b")
	must(t, g2.Build())
	g2.Committed() // in the model only, for now
	g3 := m.Next(3)
	g3.Add("a", 20*4096)
	for b := range uint64(20) {
		if b%3 != 0 {
			g3.Write("a", b, storetest.RandomBlock(rng, 4096))
		}
	}
	must(t, g3.Build())

	must(t, st.Stage(bg, "vm", 3, "a", bytes.NewReader(g3.Streams["a"])))
	if rec, err := st.readStaged("vm", 3, "a"); err != nil || !rec.packed {
		t.Fatalf("staged record %+v, %v: want packed", rec, err)
	}
	must(t, g2.Stage(bg, st))
	must(t, st.Commit(bg, "vm", 2, g2.Commit()))
	must(t, st.Commit(bg, "vm", 3, g3.Commit()))
	g3.Committed()
	m.CheckPoints(t, st)
	checkClean(t, st, "vm")
}
