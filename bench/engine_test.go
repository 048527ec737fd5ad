package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestParseFio(t *testing.T) {
	for _, tc := range []struct {
		file  string
		write bool
		want  Measure
	}{
		{"fio-3.33-randwrite-4k-qd16.json", true, Measure{Ops: 51141, Bytes: 209473536, Elapsed: 501 * time.Millisecond, MeanLatency: 153740}},
		{"fio-3.33-seqread-1m.json", false, Measure{}},
	} {
		out, err := os.ReadFile(filepath.Join("testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		// fio may print a warning before its JSON.
		out = append([]byte("fio: warning: something\n"), out...)
		got, err := parseFio(out, tc.write)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if tc.want != (Measure{}) && got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.file, got, tc.want)
		}
		if got.Ops == 0 || got.Bytes == 0 || got.Elapsed == 0 || got.MeanLatency == 0 {
			t.Errorf("%s: incomplete measure %+v", tc.file, got)
		}
		// The other direction of the same job did nothing: an error.
		if _, err := parseFio(out, !tc.write); err == nil {
			t.Errorf("%s: no error for the direction that completed no request", tc.file)
		}
	}
	if _, err := parseFio([]byte("fio: file creation disallowed\n"), true); err == nil {
		t.Error("no error for output without JSON")
	}
}

func TestGoEngine(t *testing.T) {
	const size = 4 << 20
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := layOut(path, size); err != nil {
		t.Fatal(err)
	}
	for _, w := range DefaultWorkloads {
		m, err := GoEngine{}.Run(context.Background(), path, size, w, Limit{Ops: 100})
		if errors.Is(err, syscall.EINVAL) {
			t.Skip("the filesystem of the test's temporary directory has no O_DIRECT")
		}
		if err != nil {
			t.Fatalf("%s: %v", w.Name, err)
		}
		if m.Ops != 100 || m.Bytes != 100*int64(w.BlockSize) || m.MeanLatency <= 0 {
			t.Errorf("%s: %+v, want 100 requests", w.Name, m)
		}
	}
	m, err := GoEngine{}.Run(context.Background(), path, size, DefaultWorkloads[1], Limit{Runtime: 50 * time.Millisecond})
	if err != nil || m.Elapsed < 50*time.Millisecond || m.Elapsed > time.Second {
		t.Errorf("50ms job: %+v, %v", m, err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != size {
		t.Errorf("the jobs changed the file's size: %v %v", st.Size(), err)
	}
}

func TestFilesystemOf(t *testing.T) {
	if fstype, _ := filesystemOf("/proc/self"); fstype != "proc" {
		t.Errorf("filesystem of /proc/self: %q, want proc", fstype)
	}
	if got := unescapeMountinfo(`/mnt/with\040space`); got != "/mnt/with space" {
		t.Errorf("unescape: %q", got)
	}
}

func TestMedianOf(t *testing.T) {
	ws := []Workload{DefaultWorkloads[0], DefaultWorkloads[1]} // MB/s, IOPS
	round := func(mbps, iops float64, rss int64) TargetReport {
		return TargetReport{Target: TargetDRFS, PeakRSSWrite: rss, LogWritten: 10, Jobs: []Measure{
			{Ops: int64(mbps), Bytes: int64(mbps * 1e6), Elapsed: time.Second},
			{Ops: int64(iops), Bytes: int64(iops) * 4096, Elapsed: time.Second},
		}}
	}
	got := medianOf([]TargetReport{round(300, 10, 5), round(100, 30, 7), round(200, 20, 6)}, ws)
	if got.Jobs[0].MBps() != 200 || got.Jobs[1].IOPS() != 20 {
		t.Errorf("medians: %.0f MB/s, %.0f IOPS; want 200, 20", got.Jobs[0].MBps(), got.Jobs[1].IOPS())
	}
	if got.PeakRSSWrite != 5 || got.LogWritten != 30 || len(got.Rounds) != 3 {
		t.Errorf("peak %d (want 5, the first round's), log %d (want 30), %d rounds (want 3)", got.PeakRSSWrite, got.LogWritten, len(got.Rounds))
	}
	// An even count takes the lower middle.
	got = medianOf([]TargetReport{round(300, 10, 5), round(100, 30, 7)}, ws)
	if got.Jobs[0].MBps() != 100 || got.Jobs[1].IOPS() != 10 {
		t.Errorf("medians of two: %.0f MB/s, %.0f IOPS; want 100, 10", got.Jobs[0].MBps(), got.Jobs[1].IOPS())
	}
}
