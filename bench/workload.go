package bench

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Workload is one block I/O job on one file: like a VM disk opened with
// cache=none, every job uses direct I/O.
type Workload struct {
	Name       string `json:"name"` // short and stable: flags, profiles and benchmark names use it
	Write      bool   `json:"write"`
	Random     bool   `json:"random"`      // uniformly random, BlockSize-aligned offsets; else sequential, wrapping at the end of the file
	BlockSize  int    `json:"block_size"`  // bytes per request, a multiple of 4096
	QueueDepth int    `json:"queue_depth"` // requests in flight
	// Warm jobs start with the backing file read once in full, so that the
	// host page cache holds it; the others start with its pages dropped.
	Warm bool `json:"warm,omitempty"`
}

// String describes w for a table with the page-cache case it starts in,
// such as "rand write 4 KiB QD16 (cold)".
func (w Workload) String() string {
	pattern, dir, cache := "seq", "read", "cold"
	if w.Random {
		pattern = "rand"
	}
	if w.Write {
		dir = "write"
	}
	if w.Warm {
		cache = "warm"
	}
	return fmt.Sprintf("%s %s %s QD%d (%s)", pattern, dir, sizeString(int64(w.BlockSize)), w.QueueDepth, cache)
}

// Sequential reports whether w is judged by bandwidth rather than IOPS.
func (w Workload) Sequential() bool { return !w.Random }

// figure is the number w is judged by: MB/s or IOPS.
func (w Workload) figure(m Measure) float64 {
	if w.Sequential() {
		return m.MBps()
	}
	return m.IOPS()
}

// DefaultWorkloads are the jobs of "drfs bench mount", in the order they run:
// writes first, so that the reads find a file the writes have just changed.
// Every job starts with the backing file out of the page cache (cold) but
// the warm random read, which starts with all of it there.
var DefaultWorkloads = []Workload{
	{Name: "seqwrite-1m", Write: true, BlockSize: 1 << 20, QueueDepth: 1},
	{Name: "randwrite-4k-qd1", Write: true, Random: true, BlockSize: 4096, QueueDepth: 1},
	{Name: "randwrite-4k-qd16", Write: true, Random: true, BlockSize: 4096, QueueDepth: 16},
	{Name: "randread-4k-qd16", Random: true, BlockSize: 4096, QueueDepth: 16},
	{Name: "randread-4k-qd16-warm", Random: true, BlockSize: 4096, QueueDepth: 16, Warm: true},
	{Name: "seqread-1m", BlockSize: 1 << 20, QueueDepth: 1},
}

// Limit ends a job: after Runtime, or after Ops requests when Ops > 0
// (go test -bench counts operations, the command line counts time).
type Limit struct {
	Runtime time.Duration
	Ops     int64
}

// Measure is what one job did.
type Measure struct {
	Ops         int64         `json:"ops"`
	Bytes       int64         `json:"bytes"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	MeanLatency time.Duration `json:"mean_latency_ns"` // submission to completion of one request
}

// IOPS is requests per second.
func (m Measure) IOPS() float64 {
	if m.Elapsed <= 0 {
		return 0
	}
	return float64(m.Ops) / m.Elapsed.Seconds()
}

// MBps is bandwidth in MB/s (10^6 bytes per second, as fio's MB/s).
func (m Measure) MBps() float64 {
	if m.Elapsed <= 0 {
		return 0
	}
	return float64(m.Bytes) / 1e6 / m.Elapsed.Seconds()
}

// Engine runs a workload on an existing, fully written file.
type Engine interface {
	// Name says which generator produced the figures, for the report.
	Name() string
	// Run runs w on the file at path, whose size is size bytes, until lim
	// or ctx ends it.
	Run(ctx context.Context, path string, size int64, w Workload, lim Limit) (Measure, error)
}

// sizeString prints n in binary units without a fraction when it has none:
// "4 KiB", "1 MiB", "1.5 GiB".
func sizeString(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d %s", int64(v), units[u])
	}
	return fmt.Sprintf("%.1f %s", v, units[u])
}

// WorkloadsNamed returns the default workloads of the given names, in the
// order given.
func WorkloadsNamed(names []string) ([]Workload, error) {
	var ws []Workload
	for _, name := range names {
		i := slices.IndexFunc(DefaultWorkloads, func(w Workload) bool { return w.Name == name })
		if i < 0 {
			return nil, fmt.Errorf("unknown workload %q", name)
		}
		ws = append(ws, DefaultWorkloads[i])
	}
	return ws, nil
}
