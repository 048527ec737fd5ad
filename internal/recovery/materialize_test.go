package recovery

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/storetest"
)

// TestMaterialize writes every point of a model VM (disks in folders,
// sizes changing) out of a directory store, by sparse copy and through
// the replica files (a reflink clone where the file system has them, the
// undo data of later generations written over it), and compares each disk
// with the model. Progress hears of every copied disk once finished.
func TestMaterialize(t *testing.T) {
	ctx := context.Background()
	seed := storetest.Seed(t)
	t.Logf("seed %d (STORETEST_SEED replays it)", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	st, err := dirstore.Open(filepath.Join(dir, "store"), dirstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, g := storetest.NewVM(rng, "vm", "root.img", "data/d1.raw")
	if err := g.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	for gen := uint64(2); gen <= 5; gen++ {
		g := m.Next(gen)
		g.RandomGen(rng, storetest.RandomOptions{Changes: 8, MaxGrow: 9000, MinSize: 512})
		if err := g.Apply(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	points, err := st.Points(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	replicas := ReflinkSource("dir://"+filepath.Join(dir, "store"), "vm", points)
	if replicas != filepath.Join(dir, "store", "vm", "replica") {
		t.Fatalf("ReflinkSource: %q", replicas)
	}
	if ReflinkSource("https://h:1", "vm", points) != "" {
		t.Fatal("ReflinkSource of a remote target")
	}
	for i, p := range points {
		for _, clone := range []bool{false, true} {
			out := filepath.Join(dir, "out", p.ID(), map[bool]string{false: "copy", true: "clone"}[clone])
			o := Options{}
			finished := map[string]bool{}
			o.Progress = func(disk string, done, total int64, fin bool) {
				if done > total {
					t.Errorf("%s: progress %d of %d", disk, done, total)
				}
				if fin {
					finished[disk] = true
				}
			}
			if clone {
				o.Replicas = replicas
			}
			res, err := Materialize(ctx, st, "vm", p, out, o)
			if err != nil {
				t.Fatalf("point %s (clone %v): %v", p.ID(), clone, err)
			}
			if len(res.Disks) != len(p.Disks) || res.Reflinks+res.Copies != len(p.Disks) {
				t.Fatalf("point %s: %+v", p.ID(), res)
			}
			for _, d := range p.Disks {
				got, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(d.Name)))
				if err != nil {
					t.Fatal(err)
				}
				if want := m.Points[i].Disks[d.Name]; !bytes.Equal(got, want) {
					t.Fatalf("point %s disk %s (%s): differs from the model", p.ID(), d.Name, res.Method())
				}
				if res.Copies > 0 && !finished[d.Name] && !clone {
					t.Errorf("point %s disk %s: no finished progress", p.ID(), d.Name)
				}
			}
		}
	}
	// A point that is not there: nothing is left behind.
	out := filepath.Join(dir, "gone")
	if _, err := Materialize(ctx, st, "vm", target.Point{Generation: 99, Disks: points[0].Disks}, out, Options{}); err == nil {
		t.Fatal("materialising a point the store does not hold worked")
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}
