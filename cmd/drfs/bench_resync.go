package main

import (
	"context"
	"os"

	"github.com/drfs-project/drfs/bench"
)

type benchResyncCmd struct {
	Dir    string   `type:"path" default:"." placeholder:"DIR" help:"Scratch directory (on the filesystem to measure, not tmpfs); the benchmark works in a new directory inside it. Default: the current directory."`
	Size   byteSize `default:"2GiB" help:"Size of the image (needs about 3.5x this free: source, replica, rsync's copy)."`
	Rounds int      `default:"1" help:"Run each case this many times and keep the fastest drfs round."`
	Seed   uint64   `default:"1" help:"Seed of the random data and changes."`
	JSON   bool     `help:"Print the report as JSON."`
}

func (c *benchResyncCmd) Run() error {
	rep, err := bench.RunResync(context.Background(), bench.ResyncOptions{Dir: c.Dir, Size: int64(c.Size), Seed: c.Seed, Rounds: c.Rounds})
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(rep)
	}
	return rep.WriteTable(os.Stdout)
}
