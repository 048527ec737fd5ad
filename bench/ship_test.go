package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// smallTree is a tree of files for a small ext4 image: text that LZ4
// compresses, and random bytes that it does not.
func smallTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	text := bytes.Repeat([]byte("drfs replicates the disk images of virtual machines, block by block.\n"), 2000)
	noise := make([]byte, 256<<10)
	fillRandom(noise, 7)
	for i, data := range [][]byte{text, noise, text[:5000], noise[:10000]} {
		sub := filepath.Join(dir, "d"+string(rune('a'+i)))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "f"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func needCopy(t *testing.T) {
	t.Helper()
	if _, err := copyVersion(); err != nil {
		t.Skipf("needs GNU cp: %v", err)
	}
}

// TestRunShip runs the whole harness on small generations with the
// server in this process, two rounds, every replica read back, and CPU
// profiles, so that it keeps working.
func TestRunShip(t *testing.T) {
	needCopy(t)
	workloads := []string{ShipRandom4K, ShipExtents1M, ShipExt4}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Logf("mkfs.ext4 is not installed: the ext4 workload is left out (%v)", err)
		workloads = workloads[:2]
	}
	prof := filepath.Join(t.TempDir(), "cpu")
	cfg := ShipConfig{
		Dir:        t.TempDir(),
		Size:       4 << 20,
		Rounds:     2,
		Workloads:  workloads,
		Ext4From:   smallTree(t),
		CPUProfile: prof,
		Verify:     true,
	}
	rep, err := RunShip(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Workloads) != len(workloads) {
		t.Fatalf("%d workloads reported, want %d", len(rep.Workloads), len(workloads))
	}
	for _, w := range rep.Workloads {
		if len(w.Cases) != len(shipCases) {
			t.Fatalf("%s: %d cases, want %d", w.Workload, len(w.Cases), len(shipCases))
		}
		if w.Bytes <= 0 || w.Extents == 0 || w.DiskSize < w.Bytes {
			t.Errorf("%s: %d bytes in %d writes on a disk of %d", w.Workload, w.Bytes, w.Extents, w.DiskSize)
		}
		if w.Workload != ShipExt4 && w.Bytes != cfg.Size {
			t.Errorf("%s: generation of %d bytes, want %d", w.Workload, w.Bytes, cfg.Size)
		}
		for _, c := range w.Cases {
			if c.MBps() <= 0 || c.Bytes != w.Bytes || len(c.Rounds) != 2 {
				t.Errorf("%s %s: %+v", w.Workload, c.Case, c)
			}
			shipped := c.Case == CaseDirstore || c.Case == CaseRemote
			if shipped != (c.WireBytes > 0) {
				t.Errorf("%s %s: wire bytes %d", w.Workload, c.Case, c.WireBytes)
			}
			if shipped {
				if _, err := os.Stat(prof + "-" + w.Workload + "-" + c.Case + "-round2.pprof"); err != nil {
					t.Errorf("CPU profile: %v", err)
				}
			}
		}
		// LZ4 on the wire to the remote server; the directory store gets
		// the blocks raw (--compress auto).
		if raw := w.Case(CaseDirstore).Ratio(); raw > 1 || raw < 0.95 {
			t.Errorf("%s: the directory store's stream has a ratio of %.3f, want raw blocks (just under 1)", w.Workload, raw)
		}
		lz4 := w.Case(CaseRemote).Ratio()
		switch {
		case w.Workload == ShipExt4 && lz4 < 1.2:
			t.Errorf("ext4: LZ4 ratio %.2f: the text should compress", lz4)
		case w.Workload != ShipExt4 && (lz4 > 1 || lz4 < 0.95):
			t.Errorf("%s: LZ4 ratio %.3f of random data, want just under 1", w.Workload, lz4)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"random-4k", "log read", "remote", "TLS 1.3", "vs cp"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("the table has no %q:\n%s", want, table.String())
		}
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Error(err)
	}
	if left, _ := filepath.Glob(filepath.Join(cfg.Dir, "*")); len(left) > 0 {
		t.Errorf("left behind in the scratch directory: %v", left)
	}
}

// TestRunShipChild runs the remote case against "drfs target serve" in a
// child process, as "drfs bench ship" does: the binary is built for it.
func TestRunShipChild(t *testing.T) {
	needCopy(t)
	bin := buildDrfs(t)
	rep, err := RunShip(context.Background(), ShipConfig{
		Dir:           t.TempDir(),
		Size:          2 << 20,
		Workloads:     []string{ShipExtents1M},
		ServerCommand: []string{bin, "target", "serve"},
		Verify:        true,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Workloads[0].Case(CaseRemote)
	if rep.Server != "child" || c.ChildPeakRSS <= 0 || c.ChildCPU <= 0 {
		t.Errorf("server %s: peak RSS %d, CPU %v; want the child's", rep.Server, c.ChildPeakRSS, c.ChildCPU)
	}
}

func TestServingAddr(t *testing.T) {
	line := `time=2026-01-02T03:04:05.000Z level=INFO msg="drfs target: serving" dir=/srv/replicas addr=127.0.0.1:40123`
	if addr, ok := servingAddr(line); !ok || addr != "127.0.0.1:40123" {
		t.Errorf("servingAddr: %q, %v", addr, ok)
	}
	if _, ok := servingAddr(`level=INFO msg="drfs target: shutting down" grace=30s`); ok {
		t.Error("an address in a line that is not the serving line")
	}
}

// buildDrfs builds the drfs binary for t, or skips t in -short or
// without the go command.
func buildDrfs(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the drfs binary: not in -short")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go command to build drfs: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "drfs")
	if out, err := exec.Command(goBin, "build", "-o", bin, "../cmd/drfs").CombinedOutput(); err != nil {
		t.Fatalf("building drfs: %v\n%s", err, out)
	}
	return bin
}
