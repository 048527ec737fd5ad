package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestPointsMountOverlay: drfs points mount --writable-overlay boots a
// point for a test without a copy: an ext4 disk of the point is mounted
// read-write (its journal replayed) and a file written into it; the writes
// land in the overlay directory, are there again when the point is mounted
// again with it, and never reach the target: the point without the
// overlay, and a restore of it, are the source as it was.
func TestPointsMountOverlay(t *testing.T) {
	needFUSE(t)
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1s")
	rng := rand.New(rand.NewPCG(seed(t), 41))
	files := ext4Files(rng, 8, 2)
	withLoopExt4(t, filepath.Join(d.mnt, "vm1", "disk.img"), true, func(root string) { writeFiles(t, root, files) })
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	src, err := os.ReadFile(filepath.Join(d.src, "vm1", "disk.img"))
	if err != nil {
		t.Fatal(err)
	}

	overlay := filepath.Join(t.TempDir(), "overlay")
	pm := startPointsMount(t, tgt, "vm1", "latest", "--writable-overlay", overlay)
	booted := map[string][]byte{"test/boot": []byte("written by a test boot")}
	withLoopExt4(t, filepath.Join(pm.dir, "disk.img"), false, func(root string) { writeFiles(t, root, booted) })
	pm.stop(t)
	if fi, err := os.Stat(filepath.Join(overlay, "disk.img")); err != nil || fi.Size() != int64(len(src)) {
		t.Fatalf("overlay file: %v", err)
	}

	all := map[string][]byte{}
	for k, v := range files {
		all[k] = v
	}
	for k, v := range booted {
		all[k] = v
	}
	pm = startPointsMount(t, tgt, "vm1", "latest", "--writable-overlay", overlay)
	checkExt4ReadOnly(t, filepath.Join(pm.dir, "disk.img"), all)
	pm.stop(t)

	pm = startPointsMount(t, tgt, "vm1", "latest")
	checkExt4ReadOnly(t, filepath.Join(pm.dir, "disk.img"), files, "test/boot")
	pm.stop(t)
	restored := filepath.Join(t.TempDir(), "restore")
	if out, err := drfsRun(t, "restore", "--target", tgt, "vm1", "--point", "latest", "--to", restored); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(restored, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src) {
		t.Fatal("the point on the target changed: the overlay's writes reached it")
	}
}
