package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/resync"
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

// verifyResult is what drfs verify found.
type verifyResult struct {
	VM             string             `json:"vm"`
	Source         string             `json:"source"`
	Target         string             `json:"target"`
	Point          recovery.PointRef  `json:"point"`
	InSync         bool               `json:"in_sync"`
	Disks          []verifyDiskResult `json:"disks"`
	ChunksCompared int64              `json:"chunks_compared"`
	ChecksumBytes  int64              `json:"checksum_bytes"` // exchanged with the store
	Repair         string             `json:"repair,omitempty"`
}

// verifyDiskResult is one disk of a verifyResult: of the point, of the
// source, or of both.
type verifyDiskResult struct {
	Name   string `json:"name"`
	InSync bool   `json:"in_sync"`
	// Missing is "source" for a disk of the point that the source lacks,
	// "point" for a disk of the source that the point lacks.
	Missing        string       `json:"missing,omitempty"`
	Size           int64        `json:"size"`       // on the source
	PointSize      int64        `json:"point_size"` // in the point
	BytesDiffering int64        `json:"bytes_differing"`
	ChunksCompared int64        `json:"chunks_compared"`
	Ranges         []rangeBytes `json:"ranges"` // of the source that differ from the point
}

// rangeBytes is a byte range of a disk.
type rangeBytes struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
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
func (c *verifyCmd) verify() (verifyResult, error) {
	res := verifyResult{VM: c.VM, Source: c.Source, Target: recovery.RedactURL(c.Target), InSync: true, Disks: []verifyDiskResult{}}
	store, err := targets.OpenExisting(c.Target, c.TLS)
	if err != nil {
		return res, err
	}
	defer store.Close()
	ctx := context.Background()
	points, err := store.Points(ctx, c.VM)
	if err != nil {
		return res, fmt.Errorf("points of %s on %s: %w", c.VM, c.Target, err)
	}
	p, err := choosePoint(points, c.Point)
	if err != nil {
		return res, fmt.Errorf("%s: %w", c.VM, err)
	}
	res.Point = recovery.RefOf(p)
	disks := map[string]string{}
	sizes := map[string]int64{}
	agent.WalkVM(c.Source, c.VM, func(_, disk, path string, size int64) error {
		disks[disk], sizes[disk] = path, size
		return nil
	})
	for _, d := range p.Disks {
		path, ok := disks[d.Name]
		if !ok {
			res.Disks = append(res.Disks, verifyDiskResult{Name: d.Name, Missing: "source", PointSize: d.Size, Ranges: []rangeBytes{}})
			continue
		}
		delete(disks, d.Name)
		r, err := recovery.VerifyFile(ctx, store, c.VM, p.Generation, d.Name, path)
		if err != nil && !errors.Is(err, resync.ErrDiverged) {
			return res, err
		}
		vd := verifyDiskResult{Name: d.Name, InSync: r.InSync(), Size: r.Size, PointSize: r.TargetSize,
			BytesDiffering: r.SendBytes(), ChunksCompared: r.Compared(), Ranges: []rangeBytes{}}
		for _, e := range r.Ranges {
			vd.Ranges = append(vd.Ranges, rangeBytes{Offset: e.Off, Length: e.Len})
		}
		res.Disks = append(res.Disks, vd)
		res.ChunksCompared += r.Compared()
		res.ChecksumBytes += r.SumBytesUp + r.SumBytesDown
	}
	extra := slices.Sorted(maps.Keys(disks))
	for _, name := range extra {
		res.Disks = append(res.Disks, verifyDiskResult{Name: name, Missing: "point", Size: sizes[name], Ranges: []rangeBytes{}})
	}
	for _, d := range res.Disks {
		res.InSync = res.InSync && d.InSync
	}
	if !res.InSync {
		res.Repair = repairHint(c.VM, c.Target, c.Socket)
	}
	return res, nil
}

// printVerify prints res as text.
func printVerify(res verifyResult) {
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
