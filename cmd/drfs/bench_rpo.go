package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/drfs-project/drfs/bench"
)

type benchRPOCmd struct {
	Dir           string        `type:"path" default:"." placeholder:"DIR" help:"Scratch directory (source, state and target of the run; not tmpfs). Default: the current directory."`
	DiskSize      byteSize      `name:"disk-size" default:"1TiB" help:"Size of the protected VM's disk, sparse."`
	Region        byteSize      `default:"8GiB" help:"The part of the disk the writer writes (needs about 3x this free: disk, log, replica)."`
	Rates         []int         `default:"10,50,100" help:"Writer rates in MB/s of 4 KiB random O_DIRECT writes, one phase each."`
	Duration      time.Duration `default:"3m" help:"Length of each phase."`
	Interval      time.Duration `default:"30s" help:"Replication interval of the VM."`
	Compress      string        `enum:"auto,lz4,none" default:"auto" help:"The agent's --compress: auto (LZ4 to the server) models a remote site, none a network faster than LZ4."`
	MaxGeneration string        `name:"max-generation" placeholder:"SIZE" help:"The agent's --max-generation: the changed data at which a generation is cut before the interval (default: the agent's, 256MiB; 0: only at the interval)."`
	JSON          bool          `help:"Print the report as JSON."`
}

func (c *benchRPOCmd) Run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench rpo runs a drfs agent, whose FUSE mount needs root")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the drfs binary to run the agent and the server: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := bench.RunRPO(ctx, bench.RPOConfig{Binary: exe, Dir: c.Dir, DiskSize: int64(c.DiskSize), Region: int64(c.Region),
		Rates: c.Rates, Duration: c.Duration, Interval: c.Interval, Compress: c.Compress, MaxGeneration: c.MaxGeneration, Progress: os.Stderr})
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(rep)
	}
	fmt.Print(rep)
	return nil
}
