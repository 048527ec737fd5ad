package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestWriteTableTargets checks the table of a run with every kind of
// target: each row names its page-cache case, every target has its ratio
// to native and drfs its ratio to each other FUSE target, and the memory
// section reports the page cache.
func TestWriteTableTargets(t *testing.T) {
	ws := []Workload{DefaultWorkloads[3], DefaultWorkloads[4]} // rand read cold, warm
	target := func(name string, iops float64, cache int64) TargetReport {
		m := Measure{Ops: int64(iops), Bytes: int64(iops) * 4096, Elapsed: time.Second}
		return TargetReport{Target: name, Jobs: []Measure{m, m}, PeakRSSWrite: 30 << 20, PageCacheRead: cache}
	}
	rep := &MountReport{Workloads: ws, Rounds: 1, Targets: []TargetReport{
		target(TargetNative, 80000, 0),
		target(TargetLoopback, 20000, 0),
		target(TargetDRFS, 40000, 512<<20),
		target(TargetPassthroughHP, 25000, 0),
	}}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	table := b.String()
	t.Log("\n" + table)
	lines := strings.Split(table, "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i]) // the columns are right-aligned
	}
	header := lines[slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "workload") })]
	cols := strings.Fields(header)[2:]
	want := []string{"native", "loopback", "drfs", "passthrough_hp",
		"loopback/native", "drfs/native", "passthrough_hp/native", "drfs/loopback", "drfs/passthrough_hp"}
	if !slices.Equal(cols, want) {
		t.Errorf("columns %q, want %q", cols, want)
	}
	for _, row := range []string{"rand read 4 KiB QD16 (cold)", "rand read 4 KiB QD16 (warm)"} {
		i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, row) })
		if i < 0 {
			t.Errorf("no row %q", row)
			continue
		}
		// IOPS of the four targets, then the five ratios.
		if got := strings.Fields(lines[i])[len(strings.Fields(row))+1:]; !slices.Equal(got,
			[]string{"80000", "20000", "40000", "25000", "0.25×", "0.50×", "0.31×", "2.00×", "1.60×"}) {
			t.Errorf("row %q: %q", row, got)
		}
	}
	if !strings.Contains(table, "page cache of its files, cold read jobs") || !strings.Contains(table, "512.0") {
		t.Error("no page cache row with drfs's 512 MiB")
	}
}

func TestParseStatus(t *testing.T) {
	status := []byte("Name:\tdrfs\nVmHWM:\t   71680 kB\nVmRSS:\t   65536 kB\n")
	if got, err := parseStatus(status, "status", "VmRSS"); err != nil || got != 64<<20 {
		t.Errorf("VmRSS: %d, %v; want 64 MiB", got, err)
	}
	if _, err := parseStatus(status, "status", "VmSwap"); err == nil {
		t.Error("VmSwap: no error for a missing field")
	}
	if got, err := pidStatus(0, "VmRSS"); err != nil || got <= 0 {
		t.Errorf("this process's VmRSS: %d, %v", got, err)
	}
}

// TestResident checks the page-cache figure and the two cases a job starts
// in: a file read in full is all cached, and evicted none of it is.
func TestResident(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := layOut(path, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := readAll(path); err != nil {
		t.Fatal(err)
	}
	if got := residentUnder(dir); got != 4<<20 {
		t.Errorf("after reading it all: %d bytes cached, want %d", got, 4<<20)
	}
	if fstype, _ := filesystemOf(dir); fstype == "tmpfs" {
		t.Skip("tmpfs keeps its files in the page cache")
	}
	if err := evict(path); err != nil {
		t.Fatal(err)
	}
	if got := residentUnder(dir); got != 0 {
		t.Errorf("after evicting it: %d bytes cached, want 0", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := residentUnder(dir, filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("with an empty file and a missing root: %d bytes cached, want 0", got)
	}
}

func TestPassthroughHP(t *testing.T) {
	if got := passthroughHPArgs([]byte("  --nocache  Disable all caching\n"), "src", "mnt"); !slices.Equal(got, []string{"--foreground", "src", "mnt"}) {
		t.Errorf("libfuse 3.14: %q", got)
	}
	if got := passthroughHPArgs([]byte("  --nopassthrough  Do not enable FUSE passthrough\n"), "src", "mnt"); !slices.Equal(got, []string{"--foreground", "--nopassthrough", "src", "mnt"}) {
		t.Errorf("libfuse 3.17: %q", got)
	}
	_, err := lookPassthroughHP(filepath.Join(t.TempDir(), "passthrough_hp"))
	if err == nil || !strings.Contains(err.Error(), "scripts/passthrough_hp.sh") {
		t.Errorf("a missing binary: %v, want an error that names the build script", err)
	}
}
