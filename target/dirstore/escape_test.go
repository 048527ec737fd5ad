package dirstore

import (
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/drfs-project/drfs/target/storetest"
)

// tree returns every file under dir with its contents.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	must(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	}))
	return out
}

// TestSymlinkEscape plants symbolic links inside the store that point
// outside it, where a VM directory, the replica, staging and undo
// directories or a replica file should be. Every operation through them
// fails, and nothing outside is read or written.
func TestSymlinkEscape(t *testing.T) {
	outside := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(outside, "replica"), 0o700))
	must(t, os.WriteFile(filepath.Join(outside, "points.json"),
		[]byte(`{"format":1,"vm":"evil","points":[{"vm":"evil","generation":1,"disks":[{"name":"d","size":4}]}]}`), 0o600))
	must(t, os.WriteFile(filepath.Join(outside, "replica", "d"), []byte("leak"), 0o600))
	must(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600))
	before := tree(t, outside)

	dir := t.TempDir()
	must(t, os.Symlink(outside, filepath.Join(dir, "evil"))) // absolute
	rel, err := filepath.Rel(dir, outside)
	must(t, err)
	must(t, os.Symlink(rel, filepath.Join(dir, "evil2"))) // relative, climbing out

	st := openT(t, dir)
	defer st.Close()
	rng := rand.New(rand.NewPCG(5, 5))

	// VM directories that are links out.
	vms, err := st.VMs(bg)
	must(t, err)
	if len(vms) != 0 {
		t.Fatalf("VMs = %q, want none", vms)
	}
	for _, vm := range []string{"evil", "evil2"} {
		if _, err := st.Points(bg, vm); err == nil {
			t.Errorf("Points(%s) read a manifest outside the store", vm)
		}
		if r, err := st.Open(bg, vm, 1, "d"); err == nil {
			r.Close()
			t.Errorf("Open(%s) opened a replica outside the store", vm)
		}
		_, g := storetest.NewVM(rng, vm, "d")
		must(t, g.Build())
		if err := g.Stage(bg, st); err == nil {
			t.Errorf("Stage to %s succeeded", vm)
		}
		if err := st.Commit(bg, vm, 1, g.Commit()); err == nil {
			t.Errorf("Commit to %s succeeded", vm)
		}
	}

	// Inside a real VM: each of its directories in turn becomes a link out.
	m, g := storetest.NewVM(rng, "vm", "d", "sub/e")
	must(t, g.Apply(bg, st))
	for _, sub := range []string{"replica", "staging", "undo", "tmp", "replica/sub"} {
		t.Run(sub, func(t *testing.T) {
			p := filepath.Join(dir, "vm", filepath.FromSlash(sub))
			aside := p + ".aside"
			if _, err := os.Lstat(p); err == nil {
				must(t, os.Rename(p, aside))
			}
			must(t, os.Symlink(outside, p))
			defer func() {
				must(t, os.Remove(p))
				if _, err := os.Lstat(aside); err == nil {
					must(t, os.Rename(aside, p))
				}
			}()
			g := m.Next(m.Newest().Gen + 1)
			g.RandomGen(rng, storetest.RandomOptions{Changes: 5})
			must(t, g.Build())
			err := g.Stage(bg, st)
			if err == nil {
				err = st.Commit(bg, "vm", g.Gen, g.Commit())
			}
			if err == nil {
				t.Errorf("Stage and Commit through %s, a link out of the store, succeeded", sub)
				g.Committed()
			}
			for _, d := range []string{"d", "sub/e"} {
				if r, err := st.Open(bg, "vm", m.Newest().Gen, d); err == nil {
					if sub == "replica" || sub == "replica/sub" && d == "sub/e" {
						t.Errorf("Open of %s through %s succeeded", d, sub)
					}
					r.Close()
				}
			}
		})
	}

	// A replica file that is a link to a file outside.
	p := filepath.Join(dir, "vm", "replica", "d")
	must(t, os.Rename(p, p+".aside"))
	must(t, os.Symlink(filepath.Join(outside, "secret"), p))
	if r, err := st.Open(bg, "vm", m.Newest().Gen, "d"); err == nil {
		r.Close()
		t.Error("Open of a replica linked outside succeeded")
	}
	g = m.Next(m.Newest().Gen + 1)
	g.RandomGen(rng, storetest.RandomOptions{Changes: 5})
	must(t, g.Build())
	if err := g.Stage(bg, st); err == nil {
		if err := st.Commit(bg, "vm", g.Gen, g.Commit()); err == nil && slices.Contains(g.StagedDisks(), "d") {
			t.Error("Commit through a replica linked outside succeeded")
		}
	}

	if after := tree(t, outside); !maps.Equal(after, before) {
		t.Errorf("files outside the store changed:\n%q\nwant\n%q", after, before)
	}
	// Nothing of the store's landed outside either.
	for p := range tree(t, outside) {
		if _, ok := before[p]; !ok {
			t.Errorf("%s created outside the store", p)
		}
	}
}
