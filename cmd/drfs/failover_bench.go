package main

import (
	"context"
	"os"

	"github.com/drfs-project/drfs/bench"
)

type benchFailoverCmd struct {
	Dir         string   `type:"path" default:"." placeholder:"DIR" help:"Scratch directory on the filesystem of the recovery site (reflinks are used where it has them: XFS, Btrfs); the benchmark works in a new directory inside it. Default: the current directory."`
	Size        byteSize `default:"2GiB" help:"Size of the VM's disk (needs about 2.5x this free)."`
	Churn       float64  `default:"0.01" help:"Fraction of the disk's 4 KiB blocks each generation changes."`
	Generations int      `default:"10" help:"Generations after the initial copy; the older failover goes this many back."`
	Seed        uint64   `default:"1" help:"Seed of the random data and changes."`
	JSON        bool     `help:"Print the report as JSON."`
}

func (c *benchFailoverCmd) Run() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	rep, err := bench.RunFailover(context.Background(), bench.FailoverOptions{Dir: c.Dir, Size: int64(c.Size), Churn: c.Churn,
		Generations: c.Generations, Seed: c.Seed, Drfs: self, Progress: os.Stderr})
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(rep)
	}
	return rep.WriteTable(os.Stdout)
}
