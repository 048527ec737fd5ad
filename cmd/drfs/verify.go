package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
)

type verifyCmd struct {
	Target string `required:"" env:"DRFS_TARGET" placeholder:"URL" help:"Target: dir:///path or https://host:port."`
	Source string `required:"" placeholder:"DIR" type:"existingdir" help:"Source directory of disk images (as given to drfs mount)."`
	VM     string `arg:"" help:"VM to verify."`
	Point  string `default:"latest" placeholder:"ID|latest" help:"Recovery point to compare with."`
	targets.TLS
	socketFlag // an agent there that protects the VM gets its own repair hint
}

// Run compares every disk of the VM with the point, chunk by chunk, where
// the replica lives (only checksums cross the network), and changes
// nothing. The source must not change meanwhile: run it on a stopped or
// idle VM, after a final shipment (drfs unmount ships the last generation).
func (c *verifyCmd) Run() error {
	store, err := targets.OpenExisting(c.Target, c.TLS)
	if err != nil {
		return err
	}
	defer store.Close()
	ctx := context.Background()
	points, err := store.Points(ctx, c.VM)
	if err != nil {
		return fmt.Errorf("points of %s on %s: %w", c.VM, c.Target, err)
	}
	p, err := choosePoint(points, c.Point)
	if err != nil {
		return fmt.Errorf("%s: %w", c.VM, err)
	}
	disks := map[string]string{}
	walkVM(c.Source, c.VM, func(_, disk, path string, _ int64) error {
		disks[disk] = path
		return nil
	})
	diverged := false
	var compared, sumBytes int64
	for _, d := range p.Disks {
		path, ok := disks[d.Name]
		if !ok {
			fmt.Printf("%s/%s: on the target but not in %s\n", c.VM, d.Name, c.Source)
			diverged = true
			continue
		}
		delete(disks, d.Name)
		res, err := verifyDisk(ctx, store, c.VM, p.Generation, d.Name, path)
		if err != nil && !errors.Is(err, resync.ErrDiverged) {
			return err
		}
		compared += res.Compared()
		sumBytes += res.SumBytesUp + res.SumBytesDown
		if !res.InSync() {
			diverged = true
			fmt.Printf("%s/%s: DIFFERS from point %s: %d range(s), %s", c.VM, d.Name, p.ID(), len(res.Ranges), bytesString(res.SendBytes()))
			if res.Size != res.TargetSize {
				fmt.Printf("; size %d on the source, %d on the target", res.Size, res.TargetSize)
			}
			fmt.Println()
			for i, r := range res.Ranges {
				if i == 20 {
					fmt.Printf("  ... %d more\n", len(res.Ranges)-i)
					break
				}
				fmt.Printf("  offset %d, %d bytes\n", r.Off, r.Len)
			}
		}
	}
	for name := range disks {
		fmt.Printf("%s/%s: in %s but not in point %s\n", c.VM, name, c.Source, p.ID())
		diverged = true
	}
	if diverged {
		return fmt.Errorf("%s diverges from point %s on %s; %s", c.VM, p.ID(), c.Target, repairHint(c.VM, c.Target, c.Socket))
	}
	fmt.Printf("%s: in sync with point %s: %d disk(s), %d chunks compared, %s of checksums exchanged\n",
		c.VM, p.ID(), len(p.Disks), compared, bytesString(sumBytes))
	return nil
}

func verifyDisk(ctx context.Context, store target.Store, vm string, gen uint64, disk, path string) (resync.Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return resync.Result{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return resync.Result{}, err
	}
	return resync.Verify(ctx, f, st.Size(), store, vm, gen, disk, resync.Options{})
}

// repairHint says how to resynchronize vm with its replica on target,
// asking the agent on socket whether it runs vm.
func repairHint(vm, target, socket string) string {
	cl := newAgentClient(socket)
	cl.http.Timeout = 5 * time.Second
	views, err := cl.vms("")
	return hintFor(vm, target, socket, views, err == nil)
}

// hintFor is the repair hint of vm given the views of the agent on socket
// (answered false: no agent answered there): through the agent if it
// protects vm; through the mount that replicates it if the agent does not
// (or drfs protect, if the agent has vm in its source); both ways if no
// agent answered.
func hintFor(vm, target, socket string, views []vmView, answered bool) string {
	mount := fmt.Sprintf("drfs resync STATEDIR %s --now on the drfs mount that replicates it (STATEDIR: its --state; start it with --target %s first if it is not running)", vm, target)
	if !answered {
		return fmt.Sprintf("to repair it (no drfs agent answers on %s; give --socket if it listens elsewhere):\n"+
			"  under the drfs agent: drfs resync AGENT_STATEDIR %s --now (AGENT_STATEDIR: the agent's --state)\n"+
			"  under a plain mount:  %s", socket, vm, mount)
	}
	i := slices.IndexFunc(views, func(v vmView) bool { return v.VM == vm })
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
