package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/target"
)

// pointsCmd lists recovery points (the default), or mounts one.
type pointsCmd struct {
	List   pointsListCmd   `cmd:"" default:"withargs" help:"List the recovery points of VMs on a target (the default)."`
	Mount  pointsMountCmd  `cmd:"" help:"Mount a recovery point's disks read-only, served from the target without a copy (file-level restore, a look at an older point)."`
	Umount pointsUmountCmd `cmd:"" help:"Unmount a point mounted by drfs points mount."`
}

type pointsListCmd struct {
	Target string `required:"" env:"DRFS_TARGET" placeholder:"URL" help:"Target: dir:///path or https://host:port."`
	VM     string `arg:"" optional:"" help:"Only this VM (default: every VM on the target)."`
	JSON   bool   `help:"Print JSON."`
	targets.TLS
}

func (c *pointsListCmd) Run() error {
	store, err := targets.OpenExisting(c.Target, c.TLS)
	if err != nil {
		return err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vms := []string{c.VM}
	if c.VM == "" {
		if vms, err = store.VMs(ctx); err != nil {
			return fmt.Errorf("listing the VMs of %s: %w", c.Target, err)
		}
	}
	all := map[string][]target.Point{}
	for _, vm := range vms {
		pts, err := store.Points(ctx, vm)
		if err != nil {
			return fmt.Errorf("points of %s on %s: %w", vm, c.Target, err)
		}
		all[vm] = pts
	}
	if c.JSON {
		return printJSON(all)
	}
	if len(vms) == 0 {
		fmt.Printf("no VMs on %s\n", c.Target)
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tPOINT\tFROZEN (CUT)\tKIND\tCONSISTENCY\tDATA\tDISKS")
	for _, vm := range vms {
		for _, p := range all[vm] {
			disks := ""
			for i, d := range p.Disks {
				if i > 0 {
					disks += ", "
				}
				disks += fmt.Sprintf("%s (%s)", d.Name, bytesString(d.Size))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", vm, p.ID(), p.Frozen.Local().Format(time.RFC3339),
				p.Kind, consistency(p), bytesString(p.Bytes), disks)
		}
	}
	return tw.Flush()
}

// consistency says what a point can be trusted for.
func consistency(p target.Point) string {
	switch {
	case !p.Kind.Consistent():
		return "fuzzy copy (use a later point)"
	case p.AppConsistent:
		return "application"
	default:
		return "crash, all disks"
	}
}
