package bench

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/internal/tracked"
	"github.com/drfs-project/drfs/tracker"
)

// Targets of the mount benchmark.
const (
	// TargetNative is the backing directory itself, no FUSE.
	TargetNative = "native"
	// TargetLoopback is go-fuse's plain loopback (fs.NewLoopbackRoot), mounted
	// with the mount options drfs uses and kernel passthrough off: the cost
	// of FUSE alone, the bar drfs is measured against.
	TargetLoopback = "loopback"
	// TargetDRFS is the drfs mount with a change log in a temporary state
	// directory.
	TargetDRFS = "drfs"
	// TargetDRFSUntracked is the drfs mount without a Recorder: with
	// TargetDRFS it splits the cost of drfs between the mount and the log.
	TargetDRFSUntracked = "drfs-untracked"
	// TargetDRFSNoInFlight is the drfs mount with a change log that keeps
	// no in-flight table: with TargetDRFS it gives the table's cost.
	TargetDRFSNoInFlight = "drfs-no-inflight"
	// TargetDRFSNoActivity is the drfs mount with a change log that keeps
	// no activity log: with TargetDRFS it gives the activity log's cost.
	TargetDRFSNoActivity = "drfs-no-activity"
	// TargetPassthroughHP is libfuse's reference server passthrough_hp, in
	// its own process, with kernel passthrough off where it has it
	// (--nopassthrough), so that every request reaches the daemon: what the
	// best FUSE daemon does per request. scripts/passthrough_hp.sh builds it.
	TargetPassthroughHP = "passthrough_hp"
)

// targets are the known targets.
var targets = []string{TargetNative, TargetLoopback, TargetDRFS, TargetDRFSUntracked, TargetDRFSNoInFlight, TargetDRFSNoActivity, TargetPassthroughHP}

// DefaultTargets are the targets of "drfs bench mount", in the order they run.
var DefaultTargets = []string{TargetNative, TargetLoopback, TargetDRFS}

// benchVM and benchDisk name the benchmark file inside each target's source
// directory: a top-level folder is a VM for the change log.
const (
	benchVM   = "bench"
	benchDisk = "disk.img"
)

// MountConfig configures RunMount.
type MountConfig struct {
	// Dir is the scratch directory: RunMount works in a new directory inside
	// it and removes it at the end. It must be on the filesystem whose
	// performance matters (where disk images live), not on tmpfs.
	Dir string
	// Size of the benchmark file in bytes.
	Size int64
	// Runtime of each job.
	Runtime time.Duration
	// Rotate, when positive, rotates the change log at this interval during
	// the drfs write jobs and drops the frozen generations at once, as a
	// shipper that keeps up would.
	Rotate time.Duration
	// BlockSize is the change log's tracking block size; 0 means 4096, the
	// default of "drfs mount".
	BlockSize int
	// Engine runs the jobs; nil means fio when installed, else GoEngine.
	Engine Engine
	// Workloads to run on every target; nil means DefaultWorkloads.
	Workloads []Workload
	// Targets in the order they run; nil means DefaultTargets.
	Targets []string
	// CPUProfile, when set, is the path prefix of CPU profiles of this
	// process (the FUSE servers and the change log), one per job on every
	// mount target: PREFIX-TARGET-WORKLOAD.pprof, such as
	// cpu-drfs-seqwrite-1m.pprof, to compare with "go tool pprof
	// -diff_base" against the loopback's.
	CPUProfile string
	// PassthroughHP is the passthrough_hp binary of TargetPassthroughHP;
	// "" finds it on PATH.
	PassthroughHP string
	// Rounds runs every target this many times (one after the other, in
	// the order of Targets) and reports each job's median round: on a
	// machine that does other work, one round can mislead. 0 means 1.
	Rounds int
	// Progress receives a line per step; nil discards them.
	Progress io.Writer
}

// MountReport is the outcome of RunMount.
type MountReport struct {
	Engine    string         `json:"engine"`
	Size      int64          `json:"size"`
	Runtime   time.Duration  `json:"runtime_ns"`
	Rotate    time.Duration  `json:"rotate_ns"`
	BlockSize int            `json:"block_size"`
	Rounds    int            `json:"rounds"`
	Machine   Machine        `json:"machine"`
	Workloads []Workload     `json:"workloads"`
	Targets   []TargetReport `json:"targets"`
}

// TargetReport is what one target did.
type TargetReport struct {
	Target string    `json:"target"`
	Jobs   []Measure `json:"jobs"` // in the order of MountReport.Workloads
	// PeakRSSWrite and PeakRSSRead are the peak resident set size of the
	// process that serves the target during the write and the read jobs:
	// the benchmark's own (the in-process mounts, the change log, the Go
	// generator if used) but for passthrough_hp, which runs in its own.
	PeakRSSWrite int64 `json:"peak_rss_write"`
	PeakRSSRead  int64 `json:"peak_rss_read"`
	// PageCacheWrite and PageCacheRead are the peak bytes of the target's
	// files in the page cache (the backing file and, for drfs, the change
	// log's), by mincore(2), sampled every 100 ms while the write jobs and
	// the cold read jobs run: what the target filled from a cold start.
	PageCacheWrite int64 `json:"page_cache_write"`
	PageCacheRead  int64 `json:"page_cache_read"`
	// WorkloadWritten is what the write jobs wrote; LogWritten is what the
	// change log wrote meanwhile (its segments and Pebble's files), until it
	// was closed: drfs only.
	WorkloadWritten int64 `json:"workload_written"`
	LogWritten      int64 `json:"log_written,omitempty"`
	// Rotations and Dropped count the log rotations during the write jobs
	// and the frozen generations dropped; LogOnDisk is the size of the state
	// directory after the mount was closed.
	Rotations int   `json:"rotations,omitempty"`
	Dropped   int   `json:"dropped,omitempty"`
	LogOnDisk int64 `json:"log_on_disk,omitempty"`
	// Rounds holds every round when there were several; the figures above
	// are then their medians (jobs), the first round's (memory), their sums
	// (bytes, rotations) and maximum (log on disk).
	Rounds []TargetReport `json:"rounds,omitempty"`
}

// RunMount runs every workload on every target, one target after the
// other: lay out the file, mount, run the write jobs then the read jobs,
// unmount, remove. It needs root and /dev/fuse for the mount targets.
func RunMount(ctx context.Context, cfg MountConfig) (*MountReport, error) {
	if cfg.Size <= 0 || cfg.Runtime <= 0 {
		return nil, errors.New("mount benchmark: size and runtime must be positive")
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 4096
	}
	if cfg.Engine == nil {
		if fio, ok := LookFio(); ok {
			cfg.Engine = fio
		} else {
			cfg.Engine = GoEngine{}
		}
	}
	if cfg.Workloads == nil {
		cfg.Workloads = DefaultWorkloads
	}
	if cfg.Targets == nil {
		cfg.Targets = DefaultTargets
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	for _, w := range cfg.Workloads {
		if w.BlockSize <= 0 || cfg.Size%int64(w.BlockSize) != 0 {
			return nil, fmt.Errorf("mount benchmark: size %d is not a multiple of the %s block size %d", cfg.Size, w.Name, w.BlockSize)
		}
	}
	for _, t := range cfg.Targets {
		if !slices.Contains(targets, t) {
			return nil, fmt.Errorf("mount benchmark: unknown target %q (known: %s)", t, strings.Join(targets, ", "))
		}
		if t == TargetPassthroughHP {
			bin, err := lookPassthroughHP(cfg.PassthroughHP)
			if err != nil {
				return nil, err
			}
			cfg.PassthroughHP = bin
		}
	}
	if err := checkSpace(cfg.Dir, cfg.Size); err != nil {
		return nil, err
	}
	scratch, err := os.MkdirTemp(cfg.Dir, "drfs-bench-mount-")
	if err != nil {
		return nil, fmt.Errorf("mount benchmark: scratch directory: %w", err)
	}
	defer os.RemoveAll(scratch)

	rep := &MountReport{
		Engine:    cfg.Engine.Name(),
		Size:      cfg.Size,
		Runtime:   cfg.Runtime,
		Rotate:    cfg.Rotate,
		BlockSize: cfg.BlockSize,
		Rounds:    max(cfg.Rounds, 1),
		Machine:   describeMachine(scratch),
		Workloads: cfg.Workloads,
	}
	if fio, ok := cfg.Engine.(FioEngine); ok {
		rep.Machine.FioVersion = fio.Version()
	}
	rounds := make([][]TargetReport, len(cfg.Targets))
	for round := range max(cfg.Rounds, 1) {
		for i, t := range cfg.Targets {
			tr, err := runTarget(ctx, cfg, targetRun{t, round, cfg.Rounds > 1}, filepath.Join(scratch, t))
			if err != nil {
				return rep, fmt.Errorf("%s: %w", targetRun{t, round, cfg.Rounds > 1}, err)
			}
			rounds[i] = append(rounds[i], *tr)
		}
	}
	for i := range cfg.Targets {
		rep.Targets = append(rep.Targets, medianOf(rounds[i], cfg.Workloads))
	}
	return rep, nil
}

// medianOf sums up the rounds of one target: each job's median round (by
// the job's figure, the lower middle of an even count), the peak memory of
// the first round, and what the change log did in all of them. Later rounds
// start with memory that the Go heap kept from the targets before them, so
// their peaks say less about this target.
func medianOf(rounds []TargetReport, workloads []Workload) TargetReport {
	if len(rounds) == 1 {
		return rounds[0]
	}
	sum := TargetReport{Target: rounds[0].Target, Jobs: make([]Measure, len(workloads)), Rounds: rounds}
	for i, w := range workloads {
		jobs := make([]Measure, len(rounds))
		for r := range rounds {
			jobs[r] = rounds[r].Jobs[i]
		}
		slices.SortFunc(jobs, func(a, b Measure) int { return cmp.Compare(w.figure(a), w.figure(b)) })
		sum.Jobs[i] = jobs[(len(jobs)-1)/2]
	}
	sum.PeakRSSWrite, sum.PeakRSSRead = rounds[0].PeakRSSWrite, rounds[0].PeakRSSRead
	sum.PageCacheWrite, sum.PageCacheRead = rounds[0].PageCacheWrite, rounds[0].PageCacheRead
	for _, r := range rounds {
		sum.WorkloadWritten += r.WorkloadWritten
		sum.LogWritten += r.LogWritten
		sum.Rotations += r.Rotations
		sum.Dropped += r.Dropped
		sum.LogOnDisk = max(sum.LogOnDisk, r.LogOnDisk)
	}
	return sum
}

// checkSpace refuses to start when the scratch filesystem cannot hold the
// file, rather than failing with ENOSPC minutes in.
func checkSpace(dir string, size int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("mount benchmark: scratch directory %s: %w", dir, err)
	}
	free := int64(st.Bavail) * st.Bsize
	if need := size + size/4; free < need {
		return fmt.Errorf("mount benchmark: %s has %s free, the benchmark needs %s (the file and room for the change log): give --dir elsewhere or a smaller --size",
			dir, sizeString(free), sizeString(need))
	}
	return nil
}

// targetRun is one round of one target.
type targetRun struct {
	target string
	round  int  // from 0
	rounds bool // there are several
}

func (tr targetRun) String() string {
	if !tr.rounds {
		return tr.target
	}
	return fmt.Sprintf("%s (round %d)", tr.target, tr.round+1)
}

// runTarget runs every job on one target in dir, and removes dir.
func runTarget(ctx context.Context, cfg MountConfig, tr targetRun, dir string) (rep *TargetReport, err error) {
	target := tr.target
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = rerr
		}
	}()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, benchVM), 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(src, benchVM, benchDisk)
	start := time.Now()
	if err := layOut(file, cfg.Size); err != nil {
		return nil, fmt.Errorf("laying out %s: %w", file, err)
	}
	fmt.Fprintf(cfg.Progress, "%s: laid out %s in %.1fs\n", tr, sizeString(cfg.Size), time.Since(start).Seconds())

	m, err := mountTarget(target, dir, cfg.BlockSize, cfg.PassthroughHP, cfg.Progress)
	if err != nil {
		return nil, err
	}
	mounted := true
	defer func() {
		if mounted {
			m.close()
		}
	}()

	rep = &TargetReport{Target: target}
	var writes, reads []int
	for i, w := range cfg.Workloads {
		if w.Write {
			writes = append(writes, i)
		} else {
			reads = append(reads, i)
		}
	}
	rep.Jobs = make([]Measure, len(cfg.Workloads))

	// Write jobs, with rotation.
	var rot *rotator
	if m.log != nil && cfg.Rotate > 0 && len(writes) > 0 {
		rot = startRotator(m.log, benchVM, cfg.Rotate)
	}
	cached := func() int64 {
		if !m.coldJob.Load() {
			return 0
		}
		return residentUnder(m.files...)
	}
	mem := startMemWatch(m.pid, cached)
	err = runJobs(ctx, cfg, tr, m, writes, rep)
	rep.PeakRSSWrite, rep.PageCacheWrite = mem.Stop()
	if rot != nil {
		rep.Rotations, rep.Dropped, err = rot.stop(err)
	}
	if err != nil {
		return nil, err
	}

	mem = startMemWatch(m.pid, cached)
	err = runJobs(ctx, cfg, tr, m, reads, rep)
	rep.PeakRSSRead, rep.PageCacheRead = mem.Stop()
	if err != nil {
		return nil, err
	}

	mounted = false
	if err := m.close(); err != nil {
		return nil, err
	}
	for _, i := range writes {
		rep.WorkloadWritten += rep.Jobs[i].Bytes
	}
	if m.logFS != nil {
		rep.LogWritten = m.logFS.written.Load()
		rep.LogOnDisk = diskUsage(m.state)
	}
	return rep, nil
}

func runJobs(ctx context.Context, cfg MountConfig, tr targetRun, mt *mountedTarget, jobs []int, rep *TargetReport) error {
	for _, i := range jobs {
		w := cfg.Workloads[i]
		// Every job starts from a known page-cache case: the file out of
		// the cache (cold), so that a target that reads through it does not
		// inherit what the job before left there, or, for a warm job, all
		// of the backing file in it.
		if err := mt.dropCache(); err != nil {
			return err
		}
		if w.Warm {
			if err := readAll(mt.backing); err != nil {
				return err
			}
		}
		cachedAtStart := residentUnder(mt.backing)
		// The page cache a target uses is what it fills from a cold start:
		// not the laying out, the evictions, nor the warm-up read.
		mt.coldJob.Store(!w.Warm)
		stopProfile, err := startProfile(cfg.CPUProfile, tr, w)
		if err != nil {
			return err
		}
		m, err := cfg.Engine.Run(ctx, mt.path, cfg.Size, w, Limit{Runtime: cfg.Runtime})
		mt.coldJob.Store(false)
		stopProfile()
		if err != nil {
			return err
		}
		rep.Jobs[i] = m
		fmt.Fprintf(cfg.Progress, "%s: %-29s %9.0f IOPS %9.1f MB/s  mean latency %-8v (%s of the file cached at the start)\n",
			tr, w.String(), m.IOPS(), m.MBps(), m.MeanLatency.Round(100*time.Nanosecond), sizeString(cachedAtStart))
	}
	return nil
}

// layOut writes the whole file with incompressible data and syncs it, so
// that no job pays for block allocation and the log is not given zeros.
func layOut(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	fillRandom(buf, 0)
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		// Every 4 KiB block starts with its own offset: no two alike.
		for b := int64(0); b < n; b += directAlign {
			binary.LittleEndian.PutUint64(buf[b:], uint64(off+b))
		}
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// readAll reads the file at path through the page cache, to the end.
func readAll(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("reading %s into the page cache: %w", path, err)
	}
	return nil
}

// evict drops the clean pages of the file at path from the page cache.
func evict(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("evicting %s from the page cache: %w", path, err)
	}
	return nil
}

// mountedTarget is one target, ready for jobs.
type mountedTarget struct {
	path    string       // the benchmark file as the jobs see it
	backing string       // the file in the source directory
	close   func() error // unmounts and closes the log
	pid     int          // the process that serves it; 0: this one
	files   []string     // what it keeps in the page cache: the source directory, the change log
	coldJob atomic.Bool  // a job that started from a cold page cache is running

	// drfs only: the change log, its state directory, its write count.
	log   *tracker.Log
	state string
	logFS *countingFS
}

// dropCache drops the benchmark file's pages from the page cache: the
// backing file's (after an fsync, so that none is dirty) and, on a mount,
// those the kernel keeps for the file on the mount.
func (m *mountedTarget) dropCache() error {
	if err := syncFile(m.backing); err != nil {
		return err
	}
	if err := evict(m.backing); err != nil {
		return err
	}
	if m.path != m.backing {
		return evict(m.path)
	}
	return nil
}

// mountTarget mounts dir/src on dir/mnt as target says, with hpBin the
// passthrough_hp binary. The mount's messages go to logw, each distinct one
// once.
func mountTarget(target, dir string, blockSize int, hpBin string, logw io.Writer) (*mountedTarget, error) {
	src, mnt := filepath.Join(dir, "src"), filepath.Join(dir, "mnt")
	rel := filepath.Join(benchVM, benchDisk)
	backing := filepath.Join(src, rel)
	logOut := &onceWriter{w: logw, prefix: target + ": "}
	opts := drfsfs.Options{Logger: log.New(logOut, "", 0)}
	if target == TargetNative {
		return &mountedTarget{path: backing, backing: backing, files: []string{src}, close: func() error { return nil }}, nil
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	m := &mountedTarget{path: filepath.Join(mnt, rel), backing: backing, files: []string{src}}
	switch target {
	case TargetLoopback:
		srv, err := mountLoopback(src, mnt, opts)
		if err != nil {
			return nil, fmt.Errorf("mounting go-fuse loopback: %w", err)
		}
		m.close = func() error { return unmountRetry(srv.Unmount, mnt) }
	case TargetDRFSUntracked:
		srv, err := drfsfs.Mount(src, mnt, nil, opts)
		if err != nil {
			return nil, fmt.Errorf("mounting drfs: %w", err)
		}
		m.close = func() error { return unmountRetry(srv.Unmount, mnt) }
	case TargetPassthroughHP:
		hp, err := startPassthroughHP(hpBin, src, mnt, logOut)
		if err != nil {
			return nil, err
		}
		m.pid, m.close = hp.cmd.Process.Pid, func() error { return hp.stop(mnt) }
	case TargetDRFS, TargetDRFSNoInFlight, TargetDRFSNoActivity:
		m.state = filepath.Join(dir, "state")
		m.files = append(m.files, m.state)
		m.logFS = &countingFS{FS: vfs.Default}
		changeLog, err := tracker.Open(tracker.Options{Dir: m.state, Source: src, BlockSize: blockSize, FS: m.logFS,
			NoInFlight: target == TargetDRFSNoInFlight, NoActivity: target == TargetDRFSNoActivity})
		if err != nil {
			return nil, fmt.Errorf("opening the change log: %w", err)
		}
		srv, err := drfsfs.Mount(src, mnt, tracked.Recorder(changeLog), opts)
		if err != nil {
			changeLog.Close()
			return nil, fmt.Errorf("mounting drfs: %w", err)
		}
		m.log = changeLog
		m.close = func() error {
			if err := unmountRetry(srv.Unmount, mnt); err != nil {
				return err
			}
			if err := changeLog.Close(); err != nil {
				return fmt.Errorf("closing the change log: %w", err)
			}
			return nil
		}
	}
	// Open the file once through the mount: the change log learns of the
	// disk (and its VM) before the first job, not when fio gets to it.
	f, err := os.Open(m.path)
	if err != nil {
		m.close()
		return nil, err
	}
	f.Close()
	return m, nil
}

// mountLoopback mounts go-fuse's own loopback of src on mnt with drfs's
// mount options and cache timeouts, and kernel passthrough off, as drfs runs.
func mountLoopback(src, mnt string, drfsOpts drfsfs.Options) (*fuse.Server, error) {
	root, err := gofs.NewLoopbackRoot(src)
	if err != nil {
		return nil, err
	}
	opts := drfsfs.NodeOptions(drfsOpts)
	// drfs's options disable it already; the baseline must not depend on it.
	opts.DisabledCapabilities |= fuse.CAP_PASSTHROUGH
	return gofs.Mount(mnt, root, opts)
}

// unmountRetry unmounts, retrying for a while: a job's process may still be
// closing the file when the job returns.
func unmountRetry(unmount func() error, mnt string) error {
	var err error
	for range 50 {
		if err = unmount(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("unmounting %s: %w", mnt, err)
}

// startProfile starts the CPU profile of a job on a mount; the returned
// function stops it.
func startProfile(prefix string, tr targetRun, w Workload) (stop func(), err error) {
	if prefix == "" || tr.target == TargetNative {
		return func() {}, nil
	}
	name := fmt.Sprintf("%s-%s-%s.pprof", prefix, tr.target, w.Name)
	if tr.rounds {
		name = fmt.Sprintf("%s-%s-%s-round%d.pprof", prefix, tr.target, w.Name, tr.round+1)
	}
	f, err := os.Create(name)
	if err != nil {
		return nil, fmt.Errorf("CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// rotator rotates a VM's change log at an interval and drops every frozen
// generation at once, so that the log stays small however long the jobs.
type rotator struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   struct {
		sync.Mutex
		rotations, dropped int
		err                error
	}
}

func startRotator(changeLog *tracker.Log, vm string, every time.Duration) *rotator {
	r := &rotator{done: make(chan struct{})}
	r.wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-t.C:
			}
			if err := r.rotateAndDrop(changeLog, vm); err != nil {
				r.mu.Lock()
				r.mu.err = err
				r.mu.Unlock()
				return
			}
		}
	})
	return r
}

func (r *rotator) rotateAndDrop(changeLog *tracker.Log, vm string) error {
	if _, err := changeLog.Rotate(vm); errors.Is(err, tracker.ErrUnknownVM) {
		return nil // no write reached the log yet
	} else if err != nil {
		return fmt.Errorf("rotating the change log: %w", err)
	}
	r.mu.Lock()
	r.mu.rotations++
	r.mu.Unlock()
	for _, gen := range changeLog.Frozen(vm) {
		if err := changeLog.Drop(vm, gen); err != nil {
			return fmt.Errorf("dropping generation %d: %w", gen, err)
		}
		r.mu.Lock()
		r.mu.dropped++
		r.mu.Unlock()
	}
	return nil
}

// stop ends the rotations and returns their counts; err is the jobs' error,
// which wins over a rotation's.
func (r *rotator) stop(err error) (rotations, dropped int, _ error) {
	close(r.done)
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		err = r.mu.err
	}
	return r.mu.rotations, r.mu.dropped, err
}

// diskUsage returns the bytes allocated to the files under dir.
func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// onceWriter passes each distinct line to w once: go-fuse can log the same
// complaint for every request of a job.
type onceWriter struct {
	w      io.Writer
	prefix string
	mu     sync.Mutex
	seen   map[string]bool
}

func (o *onceWriter) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = make(map[string]bool)
	}
	if line := string(p); !o.seen[line] {
		o.seen[line] = true
		fmt.Fprintf(o.w, "%s%s (further identical messages not shown)\n", o.prefix, strings.TrimRight(line, "\n"))
	}
	return len(p), nil
}
