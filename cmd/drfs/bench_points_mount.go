package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/drfs-project/drfs/bench"
)

type benchPointsCmd struct {
	Dir         string        `type:"path" default:"." placeholder:"DIR" help:"Scratch directory on the filesystem of the recovery site; the benchmark works in a new directory inside it. Default: the current directory."`
	Size        byteSize      `default:"2GiB" help:"Size of the VM's disk (needs about 2.5x this free)."`
	Churn       float64       `default:"0.01" help:"Fraction of the disk's 4 KiB blocks each generation changes."`
	Generations int           `default:"10" help:"Generations after the initial copy; the older point goes this many back."`
	Runtime     time.Duration `default:"10s" help:"Time limit of each read job."`
	Seed        uint64        `default:"1" help:"Seed of the random data, changes and reads."`
	JSON        bool          `help:"Print the report as JSON."`
}

func (c *benchPointsCmd) Run() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("bench points-mount mounts FUSE filesystems: run it as root")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	rep, err := bench.RunPointsMount(context.Background(), bench.PointsMountOptions{Dir: c.Dir, Size: int64(c.Size), Churn: c.Churn,
		Generations: c.Generations, Runtime: c.Runtime, Seed: c.Seed, Drfs: self, Progress: os.Stderr})
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(rep)
	}
	return rep.WriteTable(os.Stdout)
}
