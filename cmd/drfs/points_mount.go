package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/internal/pointfs"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/target"
)

type pointsMountCmd struct {
	Target     string `required:"" env:"DRFS_TARGET" placeholder:"URL" help:"Target: dir:///path, https://host:port or azblob://ACCOUNT/CONTAINER."`
	VM         string `arg:"" help:"VM whose point to mount."`
	Mountpoint string `arg:"" type:"path" help:"Empty directory (created if missing) where the point's disks appear, read-only."`
	Point      string `default:"latest" placeholder:"latest|ID|TIME" help:"latest (the newest consistent point), a point number, or a time (RFC 3339, or relative as -1h): the newest consistent point cut at or before it."`
	Force      bool   `help:"Accept a point that is only a fuzzy copy."`
	AllowOther bool   `name:"allow-other" help:"Let other users (qemu-nbd, a hypervisor's user) read the disks."`
	Overlay    string `name:"writable-overlay" type:"path" placeholder:"DIR" help:"Make the disks writable, their writes kept in DIR (a sparse file per disk, created if missing; used again, it keeps the last writes): a test boot without a copy. The point on the target is never written."`
	targets.TLS
}

// Run mounts the point and serves it until SIGINT or SIGTERM, drfs points
// umount, or an unmount from outside.
func (c *pointsMountCmd) Run() error {
	sig := agent.NotifyStop()
	store, err := targets.OpenExisting(c.Target, c.TLS)
	if err != nil {
		return err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	points, err := vmPoints(ctx, store, c.Target, c.VM)
	if err != nil {
		return err
	}
	p, err := choosePoint(points, c.Point)
	if err != nil {
		return fmt.Errorf("%s: %w", c.VM, err)
	}
	if !p.Kind.Consistent() && !c.Force {
		return fmt.Errorf("%s point %s is a fuzzy copy (%s), not a consistent state: choose a later point, or add --force", c.VM, p.ID(), p.Kind)
	}
	if err := os.MkdirAll(c.Mountpoint, 0o755); err != nil {
		return err
	}
	if entries, err := os.ReadDir(c.Mountpoint); err != nil || len(entries) > 0 {
		return fmt.Errorf("mountpoint %s is not an empty directory", c.Mountpoint)
	}
	var disks []pointfs.Disk
	defer func() {
		for _, d := range disks {
			d.Reader.Close()
		}
	}()
	for _, d := range p.Disks {
		r, err := store.Open(ctx, c.VM, p.Generation, d.Name)
		if err != nil {
			return fmt.Errorf("opening %s/%s at point %s: %w", c.VM, d.Name, p.ID(), err)
		}
		disks = append(disks, pointfs.Disk{Name: d.Name, Reader: r})
	}
	srv, err := pointfs.Mount(c.Mountpoint, disks, pointfs.Options{
		Name:       fmt.Sprintf("drfs-point:%s@%s", c.VM, p.ID()),
		Time:       p.Frozen,
		AllowOther: c.AllowOther,
		Overlay:    c.Overlay,
		OnError: func(disk string, err error) {
			if errors.Is(err, target.ErrNotFound) {
				err = fmt.Errorf("point %s expired while reading (%w)", p.ID(), err)
			}
			fmt.Fprintf(os.Stderr, "drfs: %s/%s: read failed: %v\n", c.VM, disk, err)
		},
	})
	if err != nil {
		return err
	}
	first := filepath.Join(c.Mountpoint, p.Disks[0].Name)
	if c.Overlay != "" {
		fmt.Fprintf(os.Stderr, "drfs: point %s of %s (cut %s, %s) mounted at %s, writable: its writes go to %s, never to the target; Ctrl-C or drfs points umount %s ends it\n",
			p.ID(), c.VM, p.Frozen.Local().Format(time.RFC3339), consistency(p), c.Mountpoint, c.Overlay, c.Mountpoint)
	} else {
		fmt.Fprintf(os.Stderr, "drfs: point %s of %s (cut %s, %s) mounted read-only at %s; look into a disk with e.g. mount -o ro,loop,noload %s /mnt/x, or qemu-nbd --read-only for qcow2; Ctrl-C or drfs points umount %s ends it\n",
			p.ID(), c.VM, p.Frozen.Local().Format(time.RFC3339), consistency(p), c.Mountpoint, first, c.Mountpoint)
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	for {
		select {
		case <-done:
			fmt.Fprintf(os.Stderr, "drfs: %s unmounted\n", c.Mountpoint)
			return nil
		case <-sig:
			if err := srv.Unmount(); err != nil {
				fmt.Fprintf(os.Stderr, "drfs: cannot unmount %s: %v (close what is open on it, then signal again)\n", c.Mountpoint, err)
			}
		}
	}
}

type pointsUmountCmd struct {
	Mountpoint string `arg:"" type:"path" help:"Where drfs points mount mounted a point."`
}

// Run unmounts the point; the drfs points mount serving it then exits.
func (c *pointsUmountCmd) Run() error {
	err := unix.Unmount(c.Mountpoint, 0)
	if errors.Is(err, unix.EPERM) {
		// Not root: the FUSE helper unmounts what this user mounted.
		if out, ferr := exec.Command("fusermount3", "-u", c.Mountpoint).CombinedOutput(); ferr != nil {
			return fmt.Errorf("unmounting %s: %v: %s", c.Mountpoint, ferr, out)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("unmounting %s: %w", c.Mountpoint, err)
	}
	return nil
}
