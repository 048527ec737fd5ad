package main

import (
	"fmt"
	"path/filepath"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/internal/control"
)

type resyncCmd struct {
	State string `arg:"" help:"State directory of a running mount that replicates (drfs mount --target)." type:"existingdir"`
	VM    string `arg:"" help:"VM to resynchronize."`
	Now   bool   `help:"Start at the mount's next replication round, whatever its resync window (without it: in the window)."`
}

// Run flags every disk of the VM. The mount compares them with the
// target's newest point by chunk checksums and sends what differs: at its
// next replication round with --now, else at its first round inside its
// resync window (at once if the window is open).
func (c *resyncCmd) Run() error {
	a, err := control.NewClient(filepath.Join(c.State, control.SocketName)).ResyncVM(c.VM, c.Now)
	if err != nil {
		return fmt.Errorf("resync %s: %w", c.VM, err)
	}
	switch {
	case !a.Replicating:
		fmt.Printf("%s: %d disk(s) flagged %v; this mount does not replicate, so they are resynchronized by the next mount with --target\n", c.VM, len(a.Disks), a.Disks)
	case a.Now:
		fmt.Printf("%s: %d disk(s) flagged %v: the next replication round compares them with the target and sends what differs (drfs status shows it)\n", c.VM, len(a.Disks), a.Disks)
	default:
		fmt.Printf("%s: %d disk(s) flagged %v: resynchronized in the resync window %s (%s); add --now to run it at the next round (drfs status shows it)\n",
			c.VM, len(a.Disks), a.Disks, a.ResyncWindow, agent.OpensString(a.WindowOpens))
	}
	return nil
}
