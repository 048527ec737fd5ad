package main

import (
	"fmt"
	"path/filepath"

	"github.com/drfs-project/drfs/internal/control"
)

type rotateCmd struct {
	State string `arg:"" help:"State directory of a running mount." type:"existingdir"`
	VM    string `arg:"" help:"VM whose active generation to freeze."`
}

func (c *rotateCmd) Run() error {
	gen, err := control.NewClient(filepath.Join(c.State, control.SocketName)).Rotate(c.VM)
	if err != nil {
		return fmt.Errorf("rotate %s: %w", c.VM, err)
	}
	fmt.Printf("%s: generation %d frozen\n", c.VM, gen)
	return nil
}
