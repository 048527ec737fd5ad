package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
)

type verifyCmd struct {
	Target string `required:"" placeholder:"URL" help:"Target: dir:///path or https://host:port."`
	Source string `required:"" placeholder:"DIR" type:"existingdir" help:"Source directory of disk images (as given to drfs mount)."`
	VM     string `arg:"" help:"VM to verify."`
	Point  string `default:"latest" placeholder:"ID|latest" help:"Recovery point to compare with."`
	targets.TLS
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
		return fmt.Errorf("%s diverges from point %s on %s: run drfs mount with --target (flagged disks resynchronize) to repair", c.VM, p.ID(), c.Target)
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
