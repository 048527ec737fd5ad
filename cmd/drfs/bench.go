package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/drfs-project/drfs/bench"
)

// benchCmd groups the benchmarks, one subcommand each.
type benchCmd struct {
	Mount    benchMountCmd    `cmd:"" help:"Compare the drfs mount with the backing directory, a plain FUSE loopback and, on request, libfuse's passthrough_hp: sequential and random I/O from a cold and a warm page cache, peak memory and page cache. Needs root and /dev/fuse."`
	Resync   benchResyncCmd   `cmd:"" help:"Resynchronize a changed image by chunk checksums and compare with rsync: time and bytes each way."`
	Ship     benchShipCmd     `cmd:"" help:"Time draining one generation of the change log: read from the log, copied with cp, written at its places in a sparse file (the floor of a disk image), shipped to a directory store and to drfs target serve over loopback mutual TLS; MB/s, LZ4 ratio, CPU and peak memory of both processes."`
	Failover benchFailoverCmd `cmd:"" help:"RTO of an unplanned failover to the latest point and to one 10 generations back, of a VM with 1% of its blocks changed per generation; the filesystem and whether reflinks were used."`
	RPO      benchRPOCmd      `cmd:"" name:"rpo" help:"Protect a VM through the agent shipping to drfs target serve over loopback TLS, write at steady rates, and report the RPO (p50/p99/max), CPU and memory."`
	Points   benchPointsCmd   `cmd:"" name:"points-mount" help:"Time drfs points mount of the latest point and of one 10 generations back, from the command to a readable disk, and compare its sequential and random reads with those of the same point materialised by drfs restore, from a cold page cache. Needs root and /dev/fuse."`
}

type benchMountCmd struct {
	Dir           string        `type:"path" default:"." placeholder:"DIR" help:"Scratch directory on the filesystem to measure: the one your disk images live on, not tmpfs. The benchmark works in a new directory inside it and removes it at the end. Default: the current directory."`
	Size          byteSize      `default:"1GiB" help:"Size of the benchmark file, written in full on each target before its jobs (units KiB, MiB, GiB; needs 1.25x this free)."`
	Runtime       time.Duration `default:"10s" help:"Time limit of each job."`
	Rotate        time.Duration `default:"0" help:"Rotate the change log at this interval during the drfs write jobs and drop the frozen generations, as a shipper that keeps up would (0: never)."`
	Engine        string        `enum:"auto,fio,go" default:"auto" help:"Workload generator: fio (libaio, direct=1), go (built in: pread/pwrite from one goroutine per queue slot, O_DIRECT), or auto (fio when installed)."`
	BlockSize     int           `default:"4096" help:"Tracking block size of the change log in bytes, a power of two."`
	Targets       []string      `default:"native,loopback,drfs" enum:"native,loopback,drfs,drfs-untracked,drfs-no-inflight,drfs-no-activity,passthrough_hp" help:"Targets in the order they run: native (the backing directory), loopback (go-fuse's plain loopback with drfs's mount options), drfs, drfs-untracked (the drfs mount without a change log), drfs-no-inflight (a change log without its in-flight table: what the table costs), drfs-no-activity (a change log without its activity log: what it costs), passthrough_hp (libfuse's reference server, kernel passthrough off; build it with scripts/passthrough_hp.sh)."`
	PassthroughHP string        `name:"passthrough-hp" type:"path" placeholder:"PATH" help:"The passthrough_hp binary of the passthrough_hp target (default: passthrough_hp on PATH)."`
	Workloads     []string      `default:"seqwrite-1m,randwrite-4k-qd1,randwrite-4k-qd16,randread-4k-qd16,randread-4k-qd16-warm,seqread-1m" enum:"seqwrite-1m,randwrite-4k-qd1,randwrite-4k-qd16,randread-4k-qd16,randread-4k-qd16-warm,seqread-1m" help:"Jobs to run on each target; the write jobs run first, in the order given, then the read jobs. Each starts with the benchmark file out of the page cache, but randread-4k-qd16-warm, which starts with the backing file read once in full."`
	Rounds        int           `default:"1" help:"Run every target this many times and report each job's median: one round can mislead on a machine that does other work."`
	JSON          bool          `help:"Print the report as JSON instead of a table."`
	CPUProfile    string        `name:"cpuprofile" type:"path" placeholder:"PREFIX" help:"Write a CPU profile of the process (FUSE servers and change log) during each job on each mount to PREFIX-TARGET-WORKLOAD.pprof, for go tool pprof."`
}

func (c *benchMountCmd) Run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench mount mounts FUSE filesystems: run it as root")
	}
	if c.Rounds < 1 {
		return fmt.Errorf("--rounds %d: give 1 or more", c.Rounds)
	}
	workloads, err := bench.WorkloadsNamed(c.Workloads)
	if err != nil {
		return err
	}
	cfg := bench.MountConfig{
		Workloads:     workloads,
		Dir:           c.Dir,
		Size:          int64(c.Size),
		Runtime:       c.Runtime,
		Rotate:        c.Rotate,
		BlockSize:     c.BlockSize,
		Targets:       c.Targets,
		PassthroughHP: c.PassthroughHP,
		Rounds:        c.Rounds,
		CPUProfile:    c.CPUProfile,
		Progress:      os.Stderr,
	}
	switch c.Engine {
	case "fio":
		fio, ok := bench.LookFio()
		if !ok {
			return fmt.Errorf("--engine fio: fio is not installed (install it, or use --engine go)")
		}
		cfg.Engine = fio
	case "go":
		cfg.Engine = bench.GoEngine{}
	}
	// Ctrl-C stops the job in progress; the mounts are then unmounted and
	// the scratch directory removed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.RunMount(ctx, cfg)
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(rep)
	}
	return rep.WriteTable(os.Stdout)
}

// byteSize is a flag value in bytes, written with an optional binary unit:
// 4096, 64KiB, 512M, 1GiB.
type byteSize int64

func (s *byteSize) UnmarshalText(text []byte) error {
	t := strings.TrimSpace(string(text))
	num := strings.TrimRightFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.ToLower(strings.TrimSpace(t[len(num):]))
	shift, ok := map[string]uint{
		"": 0, "b": 0,
		"k": 10, "kb": 10, "kib": 10,
		"m": 20, "mb": 20, "mib": 20,
		"g": 30, "gb": 30, "gib": 30,
		"t": 40, "tb": 40, "tib": 40,
	}[unit]
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil || n <= 0 {
		return fmt.Errorf("size %q: give a positive number of bytes with an optional unit, such as 512MiB or 1GiB", t)
	}
	if n > (1<<62)>>shift {
		return fmt.Errorf("size %q is too large", t)
	}
	*s = byteSize(n << shift)
	return nil
}

type benchShipCmd struct {
	Dir        string   `type:"path" default:"." placeholder:"DIR" help:"Scratch directory on the filesystem to measure: the one the change log lives on, not tmpfs. The benchmark works in a new directory inside it and removes it at the end. Default: the current directory."`
	Size       byteSize `default:"1GiB" help:"Data of each generation (units KiB, MiB, GiB; a multiple of 1 MiB; needs 6x this free). The ext4 image is this large, or larger if the tree needs it."`
	Rounds     int      `default:"1" help:"Run every case this many times and report its median: one round can mislead on a machine that does other work."`
	Workloads  []string `default:"random-4k,extents-1m,ext4" enum:"random-4k,extents-1m,ext4" help:"Generations to ship: random-4k (incompressible 4 KiB blocks at random over a disk 4x --size), extents-1m (the same in 1 MiB extents), ext4 (the data blocks of an ext4 image of real files: the LZ4 ratio)."`
	Ext4From   string   `name:"ext4-from" type:"path" default:"/usr/share" placeholder:"DIR" help:"Tree of files the ext4 image is made from (mkfs.ext4 -d); default ${default}."`
	InProcess  bool     `name:"in-process" help:"Run the remote server in the benchmark's process instead of drfs target serve in a child: one CPU profile then covers both sides."`
	JSON       bool     `help:"Print the report as JSON instead of a table."`
	CPUProfile string   `name:"cpuprofile" type:"path" placeholder:"PREFIX" help:"Write a CPU profile of the benchmark's process during each ship to PREFIX-WORKLOAD-CASE.pprof, for go tool pprof."`
	Target     []string `placeholder:"URL" sep:"none" help:"Ship to this Azure Blob store instead (azblob://ACCOUNT/CONTAINER[/PREFIX]?endpoint=URL, credentials from the environment), against the same bytes uploaded as one block blob; repeated, one case per URL, else the URL and its variants parallel=1 and gap=0. Workloads random-4k and extents-1m unless --workloads says."`
}

func (c *benchShipCmd) Run() error {
	if len(c.Target) > 0 {
		return c.runAzblob()
	}
	if c.Rounds < 1 {
		return fmt.Errorf("--rounds %d: give 1 or more", c.Rounds)
	}
	cfg := bench.ShipConfig{
		Dir:        c.Dir,
		Size:       int64(c.Size),
		Rounds:     c.Rounds,
		Workloads:  c.Workloads,
		Ext4From:   c.Ext4From,
		CPUProfile: c.CPUProfile,
		Progress:   os.Stderr,
	}
	if !c.InProcess {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding the drfs binary to run drfs target serve: %w (or use --in-process)", err)
		}
		cfg.ServerCommand = []string{exe, "target", "serve"}
	}
	// Ctrl-C stops the case in progress; the scratch directory is removed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.RunShip(ctx, cfg)
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(rep)
	}
	return rep.WriteTable(os.Stdout)
}
