package fs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLockSource: a second claim on a source, by another path, fails
// naming the holder (here this process) until the first is released; the
// source gets no new file.
func TestLockSource(t *testing.T) {
	src := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(src, link); err != nil {
		t.Fatal(err)
	}
	l, err := LockSource(src)
	if errors.Is(err, ErrLockUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	_, err = LockSource(link)
	var busy *SourceBusyError
	if !errors.As(err, &busy) {
		t.Fatalf("second LockSource: %v, want a *SourceBusyError", err)
	}
	self, _ := os.Executable()
	if busy.PID != os.Getpid() || !strings.HasPrefix(busy.Cmdline, filepath.Base(self)) {
		t.Errorf("holder pid %d %q, want %d %s...", busy.PID, busy.Cmdline, os.Getpid(), filepath.Base(self))
	}
	if want := "source " + link + " is already served by drfs (pid "; !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), "; stop it first") {
		t.Errorf("error %q", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	l2, err := LockSource(link)
	if err != nil {
		t.Fatalf("LockSource after Release: %v", err)
	}
	l2.Release()
	if names, _ := os.ReadDir(src); len(names) != 0 {
		t.Errorf("the source got files: %v", names)
	}
}
