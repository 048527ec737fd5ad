package fs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMountErrors: bad arguments get a one-line error that says what to do,
// and Mount changes nothing.
func TestMountErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	mnt := filepath.Join(dir, "mnt")
	file := filepath.Join(dir, "file")
	for _, d := range []string{src, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, src, mnt string
		want           []string
		is             error
	}{
		{"SourceMissing", filepath.Join(dir, "nope"), mnt, []string{"source", "does not exist", "directory that holds the disk images"}, fs.ErrNotExist},
		{"SourceIsFile", file, mnt, []string{"source", "is not a directory"}, nil},
		{"MountPointMissing", src, filepath.Join(dir, "nomnt"), []string{"mount point", "does not exist", "create an empty directory"}, fs.ErrNotExist},
		{"MountPointIsFile", src, file, []string{"mount point", "is not a directory"}, nil},
		{"MountPointInSource", src, src, []string{"overlap"}, nil},
		{"SourceInMountPoint", mnt, dir, []string{"overlap"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := Mount(tc.src, tc.mnt, newTestRecorder(t, tc.src, 4096), Options{})
			if err == nil {
				srv.Unmount()
				t.Fatal("Mount succeeded")
			}
			checkMountError(t, err, tc.want, tc.is)
			if cerr := CheckMount(tc.src, tc.mnt); cerr == nil || cerr.Error() != err.Error() {
				t.Errorf("CheckMount: %v, want the error of Mount", cerr)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nomnt")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed Mount created the mount point: %v", err)
	}
}

// TestMountPointBusy: mounting on a mount point in use fails and leaves the
// first mount working.
func TestMountPointBusy(t *testing.T) {
	tm := newTestMount(t, mountConfig{})
	other := t.TempDir()
	srv, err := Mount(other, tm.mnt, nil, Options{})
	if err == nil {
		srv.Unmount()
		t.Fatal("second Mount on a busy mount point succeeded")
	}
	checkMountError(t, err, []string{"mount point", "is busy", "unmount it first"}, nil)
	if err := CheckMount(other, tm.mnt); err == nil {
		t.Error("CheckMount of a busy mount point succeeded")
	}
	if err := CheckMount(other, t.TempDir()); err != nil {
		t.Errorf("CheckMount of good arguments: %v", err)
	}
	if err := os.WriteFile(tm.path("still"), []byte("works"), 0o644); err != nil {
		t.Errorf("first mount broken after the failed second one: %v", err)
	}
}

func TestCheckPrivileges(t *testing.T) {
	checkMountError(t, checkPrivileges(1000, "/dev/fuse"),
		[]string{"drfs mount needs root and /dev/fuse", "uid 1000", "run it as root"}, nil)
	checkMountError(t, checkPrivileges(0, filepath.Join(t.TempDir(), "fuse")),
		[]string{"drfs mount needs root and /dev/fuse", "no such file", "load the fuse module"}, fs.ErrNotExist)
}

func checkMountError(t *testing.T, err error, want []string, is error) {
	t.Helper()
	msg := err.Error()
	t.Logf("error: %s", msg)
	if strings.Contains(msg, "\n") {
		t.Errorf("error is not one line: %q", msg)
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q lacks %q", msg, w)
		}
	}
	if is != nil && !errors.Is(err, is) {
		t.Errorf("error %q is not %v", msg, is)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/plain`:         "/mnt/plain",
		`/mnt/with\040space`: "/mnt/with space",
		`/a\011b\012c\134d`:  "/a\tb\nc\\d",
		`/trailing\04`:       `/trailing\04`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
