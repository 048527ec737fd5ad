package main

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPointsMount: an ext4 disk whose files change between ten points;
// drfs points mount serves each point read-only from the target (a
// directory, a drfs target serve over TLS, and Azure Blob on Azurite), all
// ten mounted at once, and a read-only loop mount of each point's disk
// holds the files as they were at that cut (and not those written after
// it). Writes are refused; drfs points umount ends each command.
func TestPointsMount(t *testing.T) {
	needFUSE(t)
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	t.Run("dir", func(t *testing.T) {
		d := newDirs(t)
		testPointsMount(t, d, "dir://"+filepath.Join(filepath.Dir(d.src), "target"))
	})
	t.Run("https", func(t *testing.T) {
		tgt, tls := serveTarget(t)
		testPointsMount(t, newDirs(t), tgt, tls...)
	})
	t.Run("azblob", func(t *testing.T) {
		testPointsMount(t, newDirs(t), azuriteTarget(t))
	})
}

func testPointsMount(t *testing.T, d dirs, tgt string, tls ...string) {
	const generations = 10
	m := startMount(t, d.src, d.mnt, d.state, append([]string{"--target", tgt, "--interval", "1s"}, tls...)...)
	rng := rand.New(rand.NewPCG(seed(t), 22))
	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	files := ext4Files(rng, 12, 3)
	type state struct {
		point  string
		files  map[string][]byte
		absent []string // files written after the point
	}
	var states []state
	for i := range generations {
		if i > 0 {
			next := maps.Clone(files)
			for name, data := range ext4Files(rng, 3, 3) { // new content for three of the first names
				next[name] = data
			}
			next[fmt.Sprintf("new/%d", i)] = []byte(fmt.Sprintf("written before point %d", i))
			files = next
		}
		withLoopExt4(t, disk, i == 0, func(root string) { writeFiles(t, root, files) })
		gen := waitCut(t, d.state, "vm1", time.Now())
		states = append(states, state{point: fmt.Sprint(gen), files: files})
	}
	for i := range states {
		for j := i + 1; j < len(states); j++ {
			states[i].absent = append(states[i].absent, fmt.Sprintf("new/%d", j))
		}
	}
	m.stop(t)
	states[len(states)-1].point = "latest"

	mounts := make([]*pointsMount, len(states))
	for i, s := range states {
		mounts[i] = startPointsMount(t, tgt, "vm1", s.point, tls...)
		defer mounts[i].stop(t)
	}
	for i, s := range states {
		img := filepath.Join(mounts[i].dir, "disk.img")
		if i == 0 {
			if f, err := os.OpenFile(img, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
				if f != nil {
					f.Close()
				}
				t.Errorf("opening the point's disk for writing: %v, want EROFS", err)
			}
		}
		checkExt4ReadOnly(t, img, s.files, s.absent...)
	}
	for _, pm := range mounts {
		pm.stop(t)
	}
}

// checkExt4ReadOnly loop-mounts the ext4 image img read-only (noload: no
// journal replay, so nothing is written) and checks that it holds files.
func checkExt4ReadOnly(t *testing.T, img string, files map[string][]byte, absent ...string) {
	t.Helper()
	root := t.TempDir()
	if out, err := exec.Command("mount", "-o", "ro,loop,noload", img, root).CombinedOutput(); err != nil {
		t.Fatalf("mount -o ro,loop,noload %s: %v: %s", img, err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", "-d", root).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", root, err, out)
		}
	}()
	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil || string(got) != string(data) {
			t.Errorf("%s in %s: %v (%d bytes, want %d)", name, img, err, len(got), len(data))
		}
	}
	for _, name := range absent {
		if _, err := os.Stat(filepath.Join(root, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s in %s, written after its point: %v", name, img, err)
		}
	}
}
