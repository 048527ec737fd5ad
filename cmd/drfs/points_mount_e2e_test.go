package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestPointsMount: an ext4 disk whose files change between two points;
// drfs points mount serves each point read-only from the target (a
// directory, a drfs target serve over TLS, and Azure Blob on Azurite), and a read-only loop mount
// of its disk holds the files as they were at that cut. Writes are
// refused; drfs points umount ends the command.
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
	m := startMount(t, d.src, d.mnt, d.state, append([]string{"--target", tgt, "--interval", "1s"}, tls...)...)
	rng := rand.New(rand.NewPCG(seed(t), 22))
	first := ext4Files(rng, 12, 3)
	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	withLoopExt4(t, disk, true, func(root string) { writeFiles(t, root, first) })
	genA := waitCut(t, d.state, "vm1", time.Now())
	second := map[string][]byte{}
	for name, data := range first {
		second[name] = data
	}
	changed := ext4Files(rng, 6, 3) // the same names as six of the first, new content
	for name, data := range changed {
		second[name] = data
	}
	second["new/file"] = []byte("written after the first point")
	withLoopExt4(t, disk, false, func(root string) { writeFiles(t, root, second) })
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)

	for _, c := range []struct {
		point string
		files map[string][]byte
	}{{fmt.Sprint(genA), first}, {"latest", second}} {
		mnt := filepath.Join(t.TempDir(), "point")
		cmd := exec.Command(drfsBin, append([]string{"points", "mount", "--target", tgt, "vm1", mnt, "--point", c.point}, tls...)...)
		stderr := &syncBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for deadline := time.Now().Add(20 * time.Second); !isMounted(mnt); time.Sleep(50 * time.Millisecond) {
			select {
			case err := <-done:
				t.Fatalf("drfs points mount --point %s exited: %v\n%s", c.point, err, stderr)
			default:
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("point %s not mounted after 20s\n%s", c.point, stderr)
			}
		}
		img := filepath.Join(mnt, "disk.img")
		if f, err := os.OpenFile(img, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
			if f != nil {
				f.Close()
			}
			t.Errorf("opening the point's disk for writing: %v, want EROFS", err)
		}
		checkExt4ReadOnly(t, img, c.files)
		if out, err := drfsRun(t, "points", "umount", mnt); err != nil {
			t.Errorf("drfs points umount: %v\n%s", err, out)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("drfs points mount after umount: %v\n%s", err, stderr)
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("drfs points mount still running after umount\n%s", stderr)
		}
	}
}

// checkExt4ReadOnly loop-mounts the ext4 image img read-only (noload: no
// journal replay, so nothing is written) and checks that it holds files.
func checkExt4ReadOnly(t *testing.T, img string, files map[string][]byte) {
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
}
