package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
)

type verifyCmd struct {
	Target string `required:"" env:"DRFS_TARGET" placeholder:"URL" help:"Target: dir:///path or https://host:port."`
	Source string `required:"" placeholder:"DIR" type:"existingdir" help:"Source directory of disk images (as given to drfs mount)."`
	VM     string `arg:"" help:"VM to verify."`
	Point  string `default:"latest" placeholder:"ID|latest" help:"Recovery point to compare with."`
	JSON   bool   `help:"Print the comparison as JSON (the exit status is the same: 1 when the VM diverges)."`
	targets.TLS
	socketFlag // an agent there that protects the VM gets its own repair hint
}

// Run compares every disk of the VM with the point, chunk by chunk, where
// the replica lives (only checksums cross the network), and changes
// nothing. The source must not change meanwhile: run it on a stopped or
// idle VM, after a final shipment (drfs unmount ships the last generation).
func (c *verifyCmd) Run() error {
	res, err := c.verify()
	if err != nil {
		return err
	}
	if c.JSON {
		err = printJSON(res)
	} else {
		printVerify(res)
	}
	if err == nil && !res.InSync {
		err = fmt.Errorf("%s diverges from point %d on %s; %s", c.VM, res.Point.Generation, c.Target, res.Repair)
	}
	return err
}

// verify compares the VM's disks with the point.
func (c *verifyCmd) verify() (recovery.VerifyReport, error) {
	store, err := targets.OpenExisting(c.Target, c.TLS)
	if err != nil {
		return recovery.VerifyReport{}, err
	}
	defer store.Close()
	ctx := context.Background()
	points, err := store.Points(ctx, c.VM)
	if err != nil {
		return recovery.VerifyReport{}, fmt.Errorf("points of %s on %s: %w", c.VM, c.Target, err)
	}
	p, err := choosePoint(points, c.Point)
	if err != nil {
		return recovery.VerifyReport{}, fmt.Errorf("%s: %w", c.VM, err)
	}
	res, err := recovery.VerifyVM(ctx, store, c.Target, c.VM, c.Source, p)
	if err == nil && !res.InSync {
		res.Repair = repairHint(c.VM, c.Target, c.Socket)
	}
	return res, err
}

// printVerify prints res as text.
func printVerify(res recovery.VerifyReport) {
	id := fmt.Sprint(res.Point.Generation)
	for _, d := range res.Disks {
		switch {
		case d.Missing == "source":
			fmt.Printf("%s/%s: on the target but not in %s\n", res.VM, d.Name, res.Source)
		case d.Missing == "point":
			fmt.Printf("%s/%s: in %s but not in point %s\n", res.VM, d.Name, res.Source, id)
		case !d.InSync:
			fmt.Printf("%s/%s: DIFFERS from point %s: %d range(s), %s", res.VM, d.Name, id, len(d.Ranges), bytesString(d.BytesDiffering))
			if d.Size != d.PointSize {
				fmt.Printf("; size %d on the source, %d on the target", d.Size, d.PointSize)
			}
			fmt.Println()
			for i, r := range d.Ranges {
				if i == 20 {
					fmt.Printf("  ... %d more\n", len(d.Ranges)-i)
					break
				}
				fmt.Printf("  offset %d, %d bytes\n", r.Offset, r.Length)
			}
		}
	}
	if res.InSync {
		fmt.Printf("%s: in sync with point %s: %d disk(s), %d chunks compared, %s of checksums exchanged\n",
			res.VM, id, len(res.Disks), res.ChunksCompared, bytesString(res.ChecksumBytes))
	}
}

// repairHint says how to resynchronize vm with its replica on target,
// asking the agent on socket whether it runs vm.
func repairHint(vm, target, socket string) string {
	cl := agent.NewClient(socket)
	cl.SetTimeout(5 * time.Second)
	views, err := cl.VMs("")
	return hintFor(vm, target, socket, views, err == nil)
}

// hintFor is the repair hint of vm given the views of the agent on socket
// (answered false: no agent answered there): through the agent if it
// protects vm; through the mount that replicates it if the agent does not
// (or drfs protect, if the agent has vm in its source); both ways if no
// agent answered.
func hintFor(vm, target, socket string, views []agent.VMView, answered bool) string {
	mount := fmt.Sprintf("drfs resync STATEDIR %s --now on the drfs mount that replicates it (STATEDIR: its --state; start it with --target %s first if it is not running)", vm, target)
	if !answered {
		return fmt.Sprintf("to repair it (no drfs agent answers on %s; give --socket if it listens elsewhere):\n"+
			"  under the drfs agent: drfs resync AGENT_STATEDIR %s --now (AGENT_STATEDIR: the agent's --state)\n"+
			"  under a plain mount:  %s", socket, vm, mount)
	}
	i := slices.IndexFunc(views, func(v agent.VMView) bool { return v.VM == vm })
	switch {
	case i < 0:
		return fmt.Sprintf("to repair it, run %s (the drfs agent on %s does not know %s)", mount, socket, vm)
	case views[i].State == orchestrator.Unprotected:
		return fmt.Sprintf("to repair it, run %s, or protect it with drfs protect %s --target %s through the drfs agent on %s (only what differs from the replica is sent)",
			mount, vm, target, socket)
	}
	return fmt.Sprintf("it is protected by the drfs agent on %s (to %s): to repair it, run drfs resync %s %s --now (its disks are compared with the replica and what differs is sent)",
		socket, views[i].Target, views[i].StateDir, vm)
}
