package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/internal/tracked"
	"github.com/drfs-project/drfs/tracker"
)

type mountCmd struct {
	Source     string `arg:"" help:"Directory of disk images: each top-level folder is a VM, each file inside it a disk; a top-level file is a one-disk VM." type:"path"`
	Mountpoint string `arg:"" help:"Empty directory where the tracked view of SOURCE appears; run VMs from here." type:"path"`
	State      string `required:"" help:"State directory of the change log (created if missing; keep it off the mount)." type:"path"`
	BlockSize  int    `default:"4096" help:"Tracking block size in bytes, a power of two (fixed when the state directory is created)."`
	Debug      bool   `help:"Log every FUSE request (slow)."`
	AllowOther bool   `name:"allow-other" help:"Let users other than root open the disks on the mount, as their file modes allow (libvirt runs QEMU as its own user: docs/libvirt.md)."`
	replicationFlags
	logFlags
}

func (c *mountCmd) Run() error {
	c.startLog()
	sig := notifyStop()
	defer signal.Stop(sig)
	if err := checkMountArgs(c.Source, c.Mountpoint, c.State); err != nil {
		return err
	}
	if err := c.replicationFlags.validate(); err != nil {
		return err
	}
	lock, err := lockSource(c.Source)
	if err != nil {
		return err
	}
	defer lock.Release()
	var store targets.Store
	if c.Target != "" {
		if store, err = openTarget(&c.replicationFlags); err != nil {
			return err
		}
		defer store.Close()
	}
	log, err := tracker.Open(tracker.Options{Dir: c.State, Source: c.Source, BlockSize: c.BlockSize})
	if err != nil {
		return err
	}
	var repl *replication
	if store != nil {
		if repl, err = startReplication(context.Background(), &c.replicationFlags, c.Source, c.State, log, store, c.BlockSize); err != nil {
			log.Close()
			return err
		}
	}
	srv, err := drfsfs.Mount(c.Source, c.Mountpoint, tracked.Recorder(log), drfsfs.Options{Debug: c.Debug, AllowOther: c.AllowOther})
	if err != nil {
		log.Close()
		return err
	}
	var states func() []control.Replication
	if repl != nil {
		repl.srv = srv
		states = repl.states
	}
	ctl, err := control.Serve(filepath.Join(c.State, control.SocketName), log, states)
	if err != nil {
		srv.Unmount()
		log.Close()
		return err
	}
	if repl != nil {
		ctl.OnResync(repl.resyncHook)
	}
	replCtx, stopRepl := context.WithCancel(context.Background())
	replDone := make(chan struct{})
	if repl != nil {
		go func() { repl.run(replCtx); close(replDone) }()
		slog.Info(fmt.Sprintf("replicating every %v to %s; resync window %s (local time), resync threshold %d%%",
			c.Interval, c.Target, repl.window(), c.ResyncThreshold))
	} else {
		close(replDone)
	}
	slog.Info(fmt.Sprintf("%s mounted at %s, change log in %s; Ctrl-C or SIGTERM unmounts", c.Source, c.Mountpoint, c.State))

	signalled := waitUnmount(srv, c.Mountpoint, sig, nil)
	signal.Stop(sig) // a second signal while the last generation ships ends the process
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctl.Shutdown(ctx)
	stopRepl()
	<-replDone
	if repl != nil {
		// The mount is gone, so no write can land any more: one last
		// rotation gives the target the source's final state.
		slog.Info("shipping the last generation")
		repl.final(2 * time.Minute)
	}
	if err := log.Close(); err != nil {
		return fmt.Errorf("closing the change log in %s: %w", c.State, err)
	}
	slog.Info("unmounted; change log closed cleanly")
	if !signalled {
		return removedOutside(c.Mountpoint, c.Source)
	}
	return nil
}

// checkMountArgs refuses bad input before anything is created or changed.
func checkMountArgs(source, mountpoint, state string) error {
	st, err := os.Stat(source)
	if err != nil {
		return fmt.Errorf("source %s: %w (give the directory that holds the disk images)", source, errors.Unwrap(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("source %s is not a directory (give the directory that holds the disk images)", source)
	}
	if within(state, source) {
		return fmt.Errorf("state directory %s is inside the source %s: put it elsewhere so the log does not track itself", state, source)
	}
	if within(state, mountpoint) {
		return fmt.Errorf("state directory %s is inside the mountpoint %s: put it elsewhere", state, mountpoint)
	}
	if within(mountpoint, source) || within(source, mountpoint) {
		return fmt.Errorf("mountpoint %s and source %s overlap: mount somewhere outside the source", mountpoint, source)
	}
	return drfsfs.CheckMount(source, mountpoint)
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !filepath.IsAbs(rel) && (rel == "." || len(rel) < 3 || rel[:3] != "../")
}
