package recovery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLeftIn: what cleanup keeps in a directory is named once: neither
// what it named already nor the folder that holds it again.
func TestLeftIn(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"vm1/vm.xml", "vm2/other", "notes.txt", "vm10"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), nil, 0o644)
	}
	listed := []string{filepath.Join(dir, "vm1", "vm.xml"), filepath.Join(dir, "notes.txt")}
	got := leftIn(dir, listed)
	want := []string{filepath.Join(dir, "vm10"), filepath.Join(dir, "vm2")}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("leftIn(%v) = %q, want %q", listed, got, want)
	}
	if got := leftIn(filepath.Join(dir, "none"), nil); len(got) != 0 {
		t.Errorf("leftIn of a directory that is gone = %q", got)
	}
}
