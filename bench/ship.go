package bench

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/remote"
	"github.com/drfs-project/drfs/tracker"
)

// Workloads of the ship benchmark: what the generation holds.
const (
	// ShipRandom4K is --size of incompressible data in 4 KiB blocks at
	// distinct random offsets of a disk four times as large, written in
	// random order.
	ShipRandom4K = "random-4k"
	// ShipExtents1M is the same in 1 MiB extents.
	ShipExtents1M = "extents-1m"
	// ShipExt4 is every data block of an ext4 image made with mkfs.ext4 -d
	// from a tree of real files: the workload of the LZ4 ratio.
	ShipExt4 = "ext4"
)

// DefaultShipWorkloads are the workloads of "drfs bench ship", in the order
// they run.
var DefaultShipWorkloads = []string{ShipRandom4K, ShipExtents1M, ShipExt4}

// Cases of the ship benchmark: what is done with the generation's bytes.
const (
	// CaseLogRead reads the generation from the change log and throws the
	// bytes away (tracker.Log.ReadGeneration): the baseline of the shipper's
	// own source.
	CaseLogRead = "log read"
	// CaseCopy copies a file holding exactly the generation's bytes with
	// cp and fsyncs the copy: the plain-copy baseline.
	CaseCopy = "cp"
	// CaseScatter writes the generation's bytes at their places in a new
	// sparse file of the disk's size and fsyncs it: what the target's
	// filesystem needs to hold the generation as a disk image, with nothing
	// shipped. No store that keeps its replica as a sparse image can be
	// faster: the floor of dirstore and remote.
	CaseScatter = "scatter"
	// CaseDirstore ships the generation to a directory store in the
	// scratch directory.
	CaseDirstore = "dirstore"
	// CaseRemote ships it to a remote server ("drfs target serve") over
	// loopback with mutual TLS 1.3, the server storing it in a directory
	// store in the scratch directory.
	CaseRemote = "remote"
)

// shipCases are the cases of every round, in the order they run.
var shipCases = []string{CaseLogRead, CaseCopy, CaseScatter, CaseDirstore, CaseRemote}

// shipIdentity is the source host's identity: the CommonName of the client
// certificate, and the Source of every commit.
const shipIdentity = "bench-source"

// DefaultExt4Tree is the tree of files the ext4 workload's image is made
// from when ShipConfig.Ext4From is empty: documentation, locales, icons,
// scripts and data files, mixed as on a real system disk.
const DefaultExt4Tree = "/usr/share"

// ShipConfig configures RunShip.
type ShipConfig struct {
	// Dir is the scratch directory: RunShip works in a new directory
	// inside it and removes it at the end. The change log, the copy and the
	// stores all live there, on one filesystem; it should be the one the
	// change log lives on in production, not tmpfs.
	Dir string
	// Size is the data of the random-4k and extents-1m generations in
	// bytes, a multiple of 1 MiB. The ext4 image is this large, or larger
	// when the tree does not fit.
	Size int64
	// Rounds runs every case this many times and reports its median; 0
	// means 1. Every round ships the same frozen generation to a new store.
	Rounds int
	// Workloads to run, in order; nil means DefaultShipWorkloads.
	Workloads []string
	// Ext4From is the tree the ext4 image is made from; "" means
	// DefaultExt4Tree.
	Ext4From string
	// ServerCommand is the command line of the remote server without its
	// flags, such as {"/usr/bin/drfs", "target", "serve"}: RunShip adds
	// --dir, --listen, --cert, --key and --client-ca, and runs it as a child
	// process whose memory and CPU are measured apart. nil runs the server
	// in this process (remote.NewServer over a dirstore, as "target serve"
	// does): its memory and CPU then count with the shipper's.
	ServerCommand []string
	// CPUProfile, when set, is the path prefix of a CPU profile of this
	// process per ship: PREFIX-WORKLOAD-CASE.pprof (with -roundN when there
	// are several rounds).
	CPUProfile string
	// Verify reads every shipped replica back (untimed) and compares it with
	// the generation's bytes.
	Verify bool
	// Progress receives a line per step; nil discards them.
	Progress io.Writer
}

// ShipReport is the outcome of RunShip.
type ShipReport struct {
	Size    int64   `json:"size"`
	Rounds  int     `json:"rounds"`
	Machine Machine `json:"machine"`
	// Copy describes the plain-copy baseline: cp's version and flags.
	Copy string `json:"copy"`
	// Server says where the remote server ran: "child" or "in-process".
	Server string `json:"server"`
	// TLS is the TLS version and cipher suite of the remote connections.
	TLS string `json:"tls"`
	// LoadMin and LoadMax are the lowest and highest one-minute load
	// average seen at the start of a round.
	LoadMin   float64              `json:"load_min"`
	LoadMax   float64              `json:"load_max"`
	Workloads []ShipWorkloadReport `json:"workloads"`
}

// ShipWorkloadReport is what the cases did with one workload's generation.
type ShipWorkloadReport struct {
	Workload string `json:"workload"`
	// Description says what the generation holds, for the table.
	Description string `json:"description"`
	DiskSize    int64  `json:"disk_size"`
	// Bytes is the generation's data: what every case moves.
	Bytes int64 `json:"bytes"`
	// Extents is the number of writes that made the generation.
	Extents int `json:"extents"`
	// ZeroBlocks counts the 4 KiB blocks of the generation that are all
	// zeros (the ext4 image has some).
	ZeroBlocks int64 `json:"zero_blocks"`
	// Fill is how long writing the generation into the change log took,
	// and Drop how long dropping it took once every round was done.
	Fill time.Duration `json:"fill_ns"`
	Drop time.Duration `json:"drop_ns"`
	// Cases are in the order of shipCases; each is its median round.
	Cases []ShipCase `json:"cases"`
}

// ShipCase is one case on one workload.
type ShipCase struct {
	Case    string        `json:"case"`
	Bytes   int64         `json:"bytes"` // the generation's data bytes
	Elapsed time.Duration `json:"elapsed_ns"`
	// WireBytes and Compressed are the frame streams' bytes and the data
	// blocks sent LZ4-compressed (dirstore, remote).
	WireBytes  int64 `json:"wire_bytes,omitempty"`
	Compressed int64 `json:"compressed_blocks,omitempty"`
	// Stage and Commit are the time the shipper spent in the store's Stage
	// (the stream encoded, sent, written and synced) and Commit (applied to
	// the replica and synced) (dirstore, remote).
	Stage  time.Duration `json:"stage_ns,omitempty"`
	Commit time.Duration `json:"commit_ns,omitempty"`
	// PeakRSS is the peak resident set size of this process (the shipper,
	// the change log, and the store or the TLS client) during the case.
	PeakRSS int64 `json:"peak_rss"`
	// CPU is the CPU time (user and system) of this process.
	CPU time.Duration `json:"cpu_ns"`
	// ChildCPU is the CPU time of the case's other process: cp, or the
	// remote server when it runs as a child; ChildPeakRSS is the server's
	// peak resident set size (VmHWM).
	ChildPeakRSS int64         `json:"child_peak_rss,omitempty"`
	ChildCPU     time.Duration `json:"child_cpu_ns,omitempty"`
	// Load is the one-minute load average when the round started.
	Load float64 `json:"load"`
	// Rounds holds every round when there were several: the figures above
	// are the median round's (by MB/s), memory the first round's.
	Rounds []ShipCase `json:"rounds,omitempty"`
}

// MBps is the generation's data bytes per second, in MB/s (10^6 bytes).
func (c ShipCase) MBps() float64 {
	if c.Elapsed <= 0 {
		return 0
	}
	return float64(c.Bytes) / 1e6 / c.Elapsed.Seconds()
}

// Ratio is the LZ4 ratio on the wire: data bytes per stream byte, 0 when
// nothing was framed.
func (c ShipCase) Ratio() float64 {
	if c.WireBytes == 0 {
		return 0
	}
	return float64(c.Bytes) / float64(c.WireBytes)
}

// Case returns the case named name, or nil.
func (w *ShipWorkloadReport) Case(name string) *ShipCase {
	for i := range w.Cases {
		if w.Cases[i].Case == name {
			return &w.Cases[i]
		}
	}
	return nil
}

// RunShip measures, for each workload, the time to drain one frozen
// generation of the change log: read from the log, copied with cp, shipped
// to a directory store, shipped to a remote server over mutual TLS.
func RunShip(ctx context.Context, cfg ShipConfig) (*ShipReport, error) {
	if cfg.Size < 1<<20 || cfg.Size%(1<<20) != 0 {
		return nil, fmt.Errorf("ship benchmark: size %d is not a positive multiple of 1 MiB", cfg.Size)
	}
	cfg.Rounds = max(cfg.Rounds, 1)
	if cfg.Workloads == nil {
		cfg.Workloads = DefaultShipWorkloads
	}
	for _, w := range cfg.Workloads {
		if !slices.Contains(DefaultShipWorkloads, w) {
			return nil, fmt.Errorf("ship benchmark: unknown workload %q (known: %s)", w, strings.Join(DefaultShipWorkloads, ", "))
		}
	}
	if cfg.Ext4From == "" {
		cfg.Ext4From = DefaultExt4Tree
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	cp, err := copyVersion()
	if err != nil {
		return nil, err
	}
	if err := checkShipSpace(cfg.Dir, cfg.Size); err != nil {
		return nil, err
	}
	scratch, err := os.MkdirTemp(cfg.Dir, "drfs-bench-ship-")
	if err != nil {
		return nil, fmt.Errorf("ship benchmark: scratch directory: %w", err)
	}
	defer os.RemoveAll(scratch)

	pki, err := newShipPKI(filepath.Join(scratch, "tls"))
	if err != nil {
		return nil, fmt.Errorf("ship benchmark: certificates: %w", err)
	}
	rep := &ShipReport{
		Size:    cfg.Size,
		Rounds:  cfg.Rounds,
		Machine: describeMachine(scratch),
		Copy:    cp + " " + strings.Join(copyFlags, " ") + ", then fsync of the copy",
		Server:  "in-process",
		LoadMin: -1,
	}
	if cfg.ServerCommand != nil {
		rep.Server = "child"
	}
	for _, w := range cfg.Workloads {
		wr, err := runShipWorkload(ctx, cfg, rep, pki, w, filepath.Join(scratch, w))
		if err != nil {
			return rep, fmt.Errorf("%s: %w", w, err)
		}
		rep.Workloads = append(rep.Workloads, *wr)
	}
	rep.TLS = pki.negotiated()
	return rep, nil
}

// checkShipSpace refuses to start when the scratch filesystem cannot hold
// a workload: its change log, the disk image, the payload file, and a copy
// or a store (staging and replica) at a time.
func checkShipSpace(dir string, size int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("ship benchmark: scratch directory %s: %w", dir, err)
	}
	free := int64(st.Bavail) * st.Bsize
	if need := 6 * size; free < need {
		return fmt.Errorf("ship benchmark: %s has %s free, the benchmark needs %s (6× --size: the change log, the disk image, the copy and the stores): give --dir elsewhere or a smaller --size",
			dir, sizeString(free), sizeString(need))
	}
	return nil
}

// runShipWorkload fills one generation in dir and runs every case on it,
// round after round.
func runShipWorkload(ctx context.Context, cfg ShipConfig, rep *ShipReport, pki *shipPKI, workload, dir string) (_ *ShipWorkloadReport, err error) {
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = rerr
		}
	}()
	g, err := makeGeneration(ctx, cfg, workload, dir)
	if err != nil {
		return nil, err
	}
	defer g.close()
	fmt.Fprintf(cfg.Progress, "%s: %s; written to the change log in %.1fs\n", workload, g.description, g.fill.Seconds())

	wr := &ShipWorkloadReport{
		Workload:    workload,
		Description: g.description,
		DiskSize:    g.diskSize,
		Bytes:       g.bytes,
		Extents:     len(g.spans),
		ZeroBlocks:  g.zeroBlocks,
		Fill:        g.fill,
	}
	rounds := make([][]ShipCase, len(shipCases))
	for round := range cfg.Rounds {
		load := loadAverage()
		if rep.LoadMin < 0 || load < rep.LoadMin {
			rep.LoadMin = load
		}
		rep.LoadMax = max(rep.LoadMax, load)
		for i, name := range shipCases {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			r := shipRun{workload: workload, name: name, round: round, rounds: cfg.Rounds > 1}
			c, err := runShipCase(ctx, cfg, pki, g, r)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", r.label(), err)
			}
			c.Load = load
			rounds[i] = append(rounds[i], c)
			line := fmt.Sprintf("%s: %-9s %8.1f MB/s  %6.2fs", r, name, c.MBps(), c.Elapsed.Seconds())
			if c.WireBytes > 0 {
				line += fmt.Sprintf("  wire %s (LZ4 ratio %.2f)", sizeString(c.WireBytes), c.Ratio())
			}
			fmt.Fprintln(cfg.Progress, line)
		}
	}
	for i := range shipCases {
		wr.Cases = append(wr.Cases, medianShipCase(rounds[i]))
	}

	// The shipper drops a generation once the target has it; the rounds
	// kept it to ship it again. Drop it for real, once.
	start := time.Now()
	if err := g.log.Drop(benchVM, g.gen); err != nil {
		return nil, fmt.Errorf("dropping the generation: %w", err)
	}
	wr.Drop = time.Since(start)
	return wr, nil
}

// medianShipCase is the median round of one case by MB/s (the lower middle
// of an even count), with the first round's memory: later rounds start with
// heap the Go runtime kept from the cases before.
func medianShipCase(rounds []ShipCase) ShipCase {
	if len(rounds) == 1 {
		return rounds[0]
	}
	sorted := slices.Clone(rounds)
	slices.SortFunc(sorted, func(a, b ShipCase) int { return cmp.Compare(a.MBps(), b.MBps()) })
	m := sorted[(len(sorted)-1)/2]
	m.PeakRSS, m.ChildPeakRSS = rounds[0].PeakRSS, rounds[0].ChildPeakRSS
	m.Rounds = rounds
	return m
}

// shipRun is one case of one round of one workload.
type shipRun struct {
	workload, name string
	round          int  // from 0
	rounds         bool // there are several
}

func (r shipRun) String() string {
	if !r.rounds {
		return r.workload
	}
	return fmt.Sprintf("%s (round %d)", r.workload, r.round+1)
}

// label names the case for an error message; the workload is named by
// the caller.
func (r shipRun) label() string {
	if !r.rounds {
		return r.name
	}
	return fmt.Sprintf("%s (round %d)", r.name, r.round+1)
}

func runShipCase(ctx context.Context, cfg ShipConfig, pki *shipPKI, g *shipGen, r shipRun) (ShipCase, error) {
	switch r.name {
	case CaseLogRead:
		return logReadCase(g)
	case CaseCopy:
		return copyCase(ctx, g)
	case CaseScatter:
		return scatterCase(ctx, cfg, g)
	case CaseDirstore:
		return dirstoreCase(ctx, cfg, g, r)
	case CaseRemote:
		return remoteCase(ctx, cfg, pki, g, r)
	}
	return ShipCase{}, fmt.Errorf("unknown case %q", r.name)
}

// meter follows the time, CPU and peak memory of this process over one
// case.
type meter struct {
	start time.Time
	cpu   time.Duration
	rss   *memWatch
}

func startMeter() *meter {
	m := &meter{rss: startMemWatch(0, nil)}
	m.cpu = selfCPU()
	m.start = time.Now()
	return m
}

func (m *meter) stop(name string, bytes int64) ShipCase {
	elapsed := time.Since(m.start)
	rss, _ := m.rss.Stop()
	return ShipCase{Case: name, Bytes: bytes, Elapsed: elapsed, CPU: selfCPU() - m.cpu, PeakRSS: rss}
}

// logReadCase reads the generation from the log, its files out of the page
// cache first, and throws the data away.
func logReadCase(g *shipGen) (ShipCase, error) {
	if err := evictTree(g.state); err != nil {
		return ShipCase{}, err
	}
	var n int64
	m := startMeter()
	err := g.log.ReadGeneration(benchVM, g.gen, func(r tracker.Record) error {
		n += int64(len(r.Data))
		return nil
	})
	c := m.stop(CaseLogRead, n)
	if err != nil {
		return c, err
	}
	if n != g.bytes {
		return c, fmt.Errorf("the log gave %d bytes of data, the generation holds %d", n, g.bytes)
	}
	return c, nil
}

// copyFlags are cp's flags: a real copy of the bytes (no reflink sharing,
// which would copy nothing on XFS or Btrfs).
var copyFlags = []string{"--reflink=never"}

// copyVersion returns the first line of "cp --version", and an error when
// cp cannot be run.
func copyVersion() (string, error) {
	out, err := exec.Command("cp", "--version").Output()
	if err != nil {
		return "", fmt.Errorf("ship benchmark: the plain-copy baseline runs cp --reflink=never (GNU coreutils): %v", err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// copyCase copies the payload file (the generation's bytes, contiguous)
// with cp to a new file beside it and fsyncs the copy; the payload is out
// of the page cache first. The time runs from cp's start to the end of the
// fsync.
func copyCase(ctx context.Context, g *shipGen) (ShipCase, error) {
	if err := evict(g.payload); err != nil {
		return ShipCase{}, err
	}
	dst := filepath.Join(g.dir, "copy")
	defer os.Remove(dst)
	cmd := exec.CommandContext(ctx, "cp", append(slices.Clone(copyFlags), g.payload, dst)...)
	m := startMeter()
	out, err := cmd.CombinedOutput()
	if err == nil {
		err = syncFile(dst)
	}
	c := m.stop(CaseCopy, g.bytes)
	if err != nil {
		return c, fmt.Errorf("cp: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if st := cmd.ProcessState; st != nil {
		// Not cp's peak memory from the same rusage: a child forked with
		// CLONE_VM inherits this process's high-water mark in ru_maxrss.
		c.ChildCPU = st.UserTime() + st.SystemTime()
	}
	if fi, err := os.Stat(dst); err != nil || fi.Size() != g.bytes {
		return c, fmt.Errorf("cp made a copy of %v bytes, want %d (%v)", fi.Size(), g.bytes, err)
	}
	return c, nil
}

// scatterCase reads the payload file (out of the page cache first) in
// order and writes each write of the generation at its offset in a new
// sparse file of the disk's size, then fsyncs it. The writes go in the
// order they were made, not in disk order: on ext4 here the two cost the
// same (262,144 scattered 4 KiB blocks: 4.9 to 5.6 s either way, most of
// it the fsync allocating the blocks and writing back scattered pages).
func scatterCase(ctx context.Context, cfg ShipConfig, g *shipGen) (ShipCase, error) {
	if err := evict(g.payload); err != nil {
		return ShipCase{}, err
	}
	dst := filepath.Join(g.dir, "scatter")
	defer os.Remove(dst)
	src, err := os.Open(g.payload)
	if err != nil {
		return ShipCase{}, err
	}
	defer src.Close()
	m := startMeter()
	err = scatter(ctx, src, dst, g)
	c := m.stop(CaseScatter, g.bytes)
	if err == nil && cfg.Verify {
		err = verifyFile(dst, g)
	}
	return c, err
}

func verifyFile(path string, g *shipGen) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if err := verifySpans(f, fi.Size(), g); err != nil {
		return fmt.Errorf("verifying %s: %w", path, err)
	}
	return nil
}

func scatter(ctx context.Context, src *os.File, dst string, g *shipGen) error {
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(g.diskSize); err != nil {
		return err
	}
	r := bufio.NewReaderSize(src, 1<<20)
	buf := make([]byte, 1<<20)
	for i, sp := range g.spans {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if int64(len(buf)) < sp.n {
			buf = make([]byte, sp.n)
		}
		p := buf[:sp.n]
		if _, err := io.ReadFull(r, p); err != nil {
			return fmt.Errorf("reading the payload: %w", err)
		}
		if _, err := f.WriteAt(p, sp.off); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// keepSource is the change log as the shipper sees it, except that Drop
// keeps the generation: every round ships the same frozen generation again,
// each time to a new store. Dropping is timed once, at the end.
type keepSource struct{ *shipper.LogSource }

func (keepSource) Drop(string, uint64) error { return nil }

// dirstoreCase ships the generation to a new directory store in the
// scratch directory.
func dirstoreCase(ctx context.Context, cfg ShipConfig, g *shipGen, r shipRun) (ShipCase, error) {
	dir := filepath.Join(g.dir, "dirstore")
	defer os.RemoveAll(dir)
	store, err := dirstore.Open(dir, dirstore.Options{})
	if err != nil {
		return ShipCase{}, err
	}
	defer store.Close()
	c, err := ship(ctx, cfg, g, r, store)
	if err != nil {
		return c, err
	}
	if cfg.Verify {
		if err := verifyReplica(ctx, store, g); err != nil {
			return c, err
		}
	}
	return c, store.Close()
}

// remoteCase ships the generation to a remote server started for the
// round, over loopback with mutual TLS 1.3.
func remoteCase(ctx context.Context, cfg ShipConfig, pki *shipPKI, g *shipGen, r shipRun) (c ShipCase, err error) {
	dir := filepath.Join(g.dir, "remote")
	defer os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return c, err
	}
	srv, err := startShipServer(ctx, cfg.ServerCommand, pki, dir)
	if err != nil {
		return c, err
	}
	stopped := false
	defer func() {
		if !stopped {
			srv.stop()
		}
	}()
	client, err := remote.Dial("https://"+srv.addr, remote.ClientOptions{TLS: pki.clientConfig()})
	if err != nil {
		return c, err
	}
	defer client.Close()
	c, err = ship(ctx, cfg, g, r, client)
	if err != nil {
		return c, err
	}
	c.ChildPeakRSS = srv.peakRSS()
	client.Close()
	stopped = true
	cpu, err := srv.stop()
	if err != nil {
		return c, err
	}
	c.ChildCPU = cpu
	if cfg.Verify {
		// The server is gone: open its store directly.
		store, err := dirstore.Open(filepath.Join(dir, shipIdentity), dirstore.Options{})
		if err != nil {
			return c, err
		}
		defer store.Close()
		if err := verifyReplica(ctx, store, g); err != nil {
			return c, err
		}
	}
	return c, nil
}

// ship ships the generation to store, the log's files out of the page
// cache first, and checks that all of it went.
func ship(ctx context.Context, cfg ShipConfig, g *shipGen, r shipRun, store target.Store) (ShipCase, error) {
	if err := evictTree(g.state); err != nil {
		return ShipCase{}, err
	}
	ts := &timedStore{Store: store}
	// As drfs ships by default (--compress auto): LZ4 to the remote server,
	// not to a directory store, which stores the blocks uncompressed.
	sh := shipper.New(keepSource{shipper.FromLog(g.log, 0)}, ts, shipper.Options{Source: shipIdentity, NoCompression: r.name == CaseDirstore})
	stopProfile, err := startShipProfile(cfg.CPUProfile, r)
	if err != nil {
		return ShipCase{}, err
	}
	m := startMeter()
	st, err := sh.Ship(ctx, benchVM)
	c := m.stop(r.name, g.bytes)
	stopProfile()
	c.WireBytes, c.Compressed = int64(st.WireBytes), int64(st.Compressed)
	c.Stage, c.Commit = ts.stage, ts.commit
	if err != nil {
		return c, err
	}
	if st.Generations != 1 || int64(st.RawBytes) != g.bytes {
		return c, fmt.Errorf("shipped %d generations and %d bytes of data, want 1 and %d", st.Generations, st.RawBytes, g.bytes)
	}
	return c, nil
}

// timedStore adds up the time of a store's Stage and Commit calls. The
// shipper calls them one at a time for a VM.
type timedStore struct {
	target.Store
	stage, commit time.Duration
}

func (s *timedStore) Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) error {
	start := time.Now()
	defer func() { s.stage += time.Since(start) }()
	return s.Store.Stage(ctx, vm, gen, disk, stream)
}

func (s *timedStore) Commit(ctx context.Context, vm string, gen uint64, c target.Commit) error {
	start := time.Now()
	defer func() { s.commit += time.Since(start) }()
	return s.Store.Commit(ctx, vm, gen, c)
}

// startShipProfile starts the CPU profile of a ship; the returned function
// stops it.
func startShipProfile(prefix string, r shipRun) (stop func(), err error) {
	if prefix == "" {
		return func() {}, nil
	}
	name := fmt.Sprintf("%s-%s-%s.pprof", prefix, r.workload, r.name)
	if r.rounds {
		name = fmt.Sprintf("%s-%s-%s-round%d.pprof", prefix, r.workload, r.name, r.round+1)
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

// verifyReplica compares the newest point of the shipped disk with the
// generation's bytes, span by span.
func verifyReplica(ctx context.Context, store target.Store, g *shipGen) error {
	rd, err := store.Open(ctx, benchVM, g.gen, benchDisk)
	if err != nil {
		return fmt.Errorf("verifying the replica: %w", err)
	}
	defer rd.Close()
	if err := verifySpans(rd, rd.Size(), g); err != nil {
		return fmt.Errorf("verifying the replica: %w", err)
	}
	return nil
}

// verifySpans checks that rd, of size bytes, holds the generation's bytes
// at their places.
func verifySpans(rd io.ReaderAt, size int64, g *shipGen) error {
	if size != g.diskSize {
		return fmt.Errorf("%d bytes, the disk has %d", size, g.diskSize)
	}
	payload, err := os.Open(g.payload)
	if err != nil {
		return err
	}
	defer payload.Close()
	var pos int64
	for _, s := range g.spans {
		want, got := make([]byte, s.n), make([]byte, s.n)
		if _, err := payload.ReadAt(want, pos); err != nil {
			return err
		}
		if _, err := rd.ReadAt(got, s.off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if string(want) != string(got) {
			return fmt.Errorf("%d bytes at offset %d differ from the generation's", s.n, s.off)
		}
		pos += s.n
	}
	return nil
}

// evictTree makes the files under dir durable and drops them from the page
// cache, so that a case reads the change log from the disk.
func evictTree(dir string) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if err := syncFile(path); err != nil {
			return err
		}
		return evict(path)
	})
}

// syncFile fsyncs the file at path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// selfCPU is the CPU time this process used so far, user and system.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loadAverage is the one-minute load average, or -1.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}
