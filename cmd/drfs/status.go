package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/drfs-project/drfs/internal/control"
)

type statusCmd struct {
	State string `arg:"" help:"State directory of a running mount." type:"existingdir"`
	JSON  bool   `help:"Print JSON."`
}

func (c *statusCmd) Run() error {
	st, err := control.NewClient(filepath.Join(c.State, control.SocketName)).Replication()
	if err != nil {
		return fmt.Errorf("status of %s: %w", c.State, err)
	}
	if c.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	if len(st) == 0 {
		fmt.Println("nothing replicated yet (is the mount running with --target?)")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tTARGET\tLAST POINT\tSHIPPED\tPENDING\tSENT\tSTATE")
	for _, r := range st {
		state := "ok"
		switch {
		case r.Stopped:
			state = "STOPPED: " + r.LastError
		case r.LastError != "":
			state = fmt.Sprintf("retrying (%d failures): %s", r.Failures, r.LastError)
		}
		shipped := "never"
		if !r.LastShipped.IsZero() {
			shipped = time.Since(r.LastShipped).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", r.VM, r.Target, r.LastGeneration, shipped, r.Pending, bytesString(int64(r.BytesSent)), state)
	}
	return tw.Flush()
}
