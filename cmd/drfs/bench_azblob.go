package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/drfs-project/drfs/bench"
)

// runAzblob is "drfs bench ship --target azblob://...": the generations
// shipped to an Azure Blob store, against one block blob of the same bytes.
func (c *benchShipCmd) runAzblob() error {
	if c.Rounds < 1 {
		return fmt.Errorf("--rounds %d: give 1 or more", c.Rounds)
	}
	cfg := bench.ShipAzblobConfig{
		ShipConfig: bench.ShipConfig{
			Dir:        c.Dir,
			Size:       int64(c.Size),
			Rounds:     c.Rounds,
			Workloads:  c.Workloads,
			Ext4From:   c.Ext4From,
			CPUProfile: c.CPUProfile,
			Progress:   os.Stderr,
		},
		Targets: c.Target,
	}
	if len(c.Target) > 1 {
		cfg.Variants = []string{} // the targets are the cases
	}
	if slices.Equal(c.Workloads, bench.DefaultShipWorkloads) {
		cfg.Workloads = nil // random-4k and extents-1m
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.RunShipAzblob(ctx, cfg)
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(rep)
	}
	return rep.WriteTable(os.Stdout)
}
