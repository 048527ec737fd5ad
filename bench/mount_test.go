package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func needFUSE(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for FUSE mounts (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		tb.Skip("needs /dev/fuse")
	}
}

// BenchmarkMount runs every workload on every target with the Go generator:
// one benchmark operation is one request, ns/op its time at the workload's
// queue depth. "drfs bench mount" is the full-size benchmark; this one keeps
// the numbers in reach of go test and benchstat.
func BenchmarkMount(b *testing.B) {
	needFUSE(b)
	const size = 64 << 20
	for _, target := range DefaultTargets {
		b.Run(target, func(b *testing.B) {
			dir := b.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "src", benchVM), 0o755); err != nil {
				b.Fatal(err)
			}
			if err := layOut(filepath.Join(dir, "src", benchVM, benchDisk), size); err != nil {
				b.Fatal(err)
			}
			m, err := mountTarget(target, dir, 4096, "", io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			var rot *rotator
			if m.log != nil {
				// Keep the log from growing with b.N, as a shipper would.
				rot = startRotator(m.log, benchVM, time.Second)
			}
			b.Cleanup(func() {
				if rot != nil {
					if _, _, err := rot.stop(nil); err != nil {
						b.Error(err)
					}
				}
				if err := m.close(); err != nil {
					b.Error(err)
				}
			})
			for _, w := range DefaultWorkloads {
				b.Run(w.Name, func(b *testing.B) {
					b.ResetTimer()
					got, err := GoEngine{}.Run(context.Background(), m.path, size, w, Limit{Ops: int64(b.N)})
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(got.MBps(), "MB/s")
					b.ReportMetric(got.IOPS(), "IOPS")
				})
			}
		})
	}
}

// TestRunMount runs the whole harness with tiny sizes, so that it cannot
// rot: every target, both engines when fio is installed, rotation on.
func TestRunMount(t *testing.T) {
	needFUSE(t)
	engines := []Engine{GoEngine{}}
	if fio, ok := LookFio(); ok {
		engines = append(engines, fio)
	} else {
		t.Log("fio is not installed: testing the Go generator only")
	}
	for i, engine := range engines {
		t.Run(strings.Fields(engine.Name())[0], func(t *testing.T) {
			var progress bytes.Buffer
			cfg := MountConfig{
				Dir:      t.TempDir(),
				Size:     8 << 20,
				Runtime:  150 * time.Millisecond,
				Rotate:   50 * time.Millisecond,
				Engine:   engine,
				Progress: &progress,
			}
			if i == 0 {
				// Every target, two rounds.
				cfg.Targets = []string{TargetNative, TargetLoopback, TargetDRFS, TargetDRFSUntracked}
				cfg.Rounds = 2
			} else {
				// Profiles (each costs up to 200ms to stop), and libfuse's
				// passthrough_hp when it is built.
				cfg.Targets = []string{TargetLoopback, TargetDRFS}
				cfg.CPUProfile = filepath.Join(t.TempDir(), "cpu")
				if _, err := lookPassthroughHP(""); err == nil {
					cfg.Targets = append(cfg.Targets, TargetPassthroughHP)
				} else {
					t.Log("passthrough_hp is not on PATH (scripts/passthrough_hp.sh): not testing its target")
				}
			}
			rep, err := RunMount(context.Background(), cfg)
			t.Log("\n" + progress.String())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Targets) != len(cfg.Targets) {
				t.Fatalf("report has %d targets, want %d", len(rep.Targets), len(cfg.Targets))
			}
			for _, tr := range rep.Targets {
				for i, w := range rep.Workloads {
					if m := tr.Jobs[i]; m.Ops == 0 || m.Bytes != m.Ops*int64(w.BlockSize) || m.Elapsed <= 0 {
						t.Errorf("%s %s: measure %+v", tr.Target, w.Name, m)
					}
				}
				if tr.PeakRSSWrite <= 0 || tr.PeakRSSRead <= 0 {
					t.Errorf("%s: peak RSS %d (writes), %d (reads)", tr.Target, tr.PeakRSSWrite, tr.PeakRSSRead)
				}
				// A target that writes through the page cache fills it.
				if tr.Target == TargetDRFS && tr.PageCacheWrite == 0 {
					t.Errorf("%s: no page cache during the writes", tr.Target)
				}
			}
			drfs := rep.target(TargetDRFS)
			if drfs.Rotations == 0 {
				t.Errorf("drfs: no rotation in %v of writes every %v", 3*cfg.Runtime, cfg.Rotate)
			}
			if got := len(drfs.Rounds); cfg.Rounds > 1 && got != cfg.Rounds {
				t.Errorf("drfs: %d rounds in the report, want %d", got, cfg.Rounds)
			}
			for _, name := range []string{"loopback-seqwrite-1m", "drfs-randwrite-4k-qd16", "drfs-seqread-1m"} {
				if cfg.CPUProfile == "" {
					break
				}
				if st, err := os.Stat(cfg.CPUProfile + "-" + name + ".pprof"); err != nil || st.Size() == 0 {
					t.Errorf("CPU profile of %s: %v", name, err)
				}
			}
			entries, err := os.ReadDir(cfg.Dir)
			if err != nil || len(entries) != 0 {
				t.Errorf("scratch directory left behind: %v %v", entries, err)
			}

			var table bytes.Buffer
			if err := rep.WriteTable(&table); err != nil {
				t.Fatal(err)
			}
			t.Log("\n" + table.String())
			for _, w := range rep.Workloads {
				if !strings.Contains(table.String(), w.String()) {
					t.Errorf("table has no row for %s", w)
				}
			}
			if !strings.Contains(table.String(), "drfs/loopback") {
				t.Error("table has no drfs/loopback column")
			}
			if _, err := json.Marshal(rep); err != nil {
				t.Fatal(err)
			}
		})
	}
}
