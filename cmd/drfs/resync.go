package main

import (
	"fmt"
	"path/filepath"

	"github.com/drfs-project/drfs/internal/control"
)

type resyncCmd struct {
	State string `arg:"" help:"State directory of a running mount that replicates (drfs mount --target)." type:"existingdir"`
	VM    string `arg:"" help:"VM to resynchronize."`
}

// Run flags every disk of the VM; the mount's next round compares them with
// the target's newest point by chunk checksums and sends what differs.
func (c *resyncCmd) Run() error {
	disks, err := control.NewClient(filepath.Join(c.State, control.SocketName)).Resync(c.VM)
	if err != nil {
		return fmt.Errorf("resync %s: %w", c.VM, err)
	}
	fmt.Printf("%s: %d disk(s) flagged %v: the next replication round compares them with the target and sends what differs (drfs status shows it)\n", c.VM, len(disks), disks)
	return nil
}
