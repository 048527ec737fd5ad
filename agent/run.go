package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/internal/tracked"
	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/tracker"
)

// Options are what the agent runs with (drfs agent).
type Options struct {
	Config *orchestrator.Config // checked: ParseConfig's or LoadConfig's
	TLS    targets.TLS          // the TLS files of the targets
	// BlockSize is the tracking block size of a new state directory.
	BlockSize int
	// Activity shapes the change log's activity log.
	Activity Activity
	// Socket is the path of the agent's API (drfs status, protect, ...).
	Socket string
	// MetricsListen, if set, is the address of the Prometheus endpoint.
	MetricsListen string
	// Version is drfs's version, as drfs version prints it.
	Version string
}

// Run runs the agent until a signal from stop (NotifyStop's) or an
// unmount from outside: it mounts the source, serves the control socket,
// the API and the metrics, runs the protection of every VM, and on the
// way out ships each protected VM's last generation and closes the change
// log cleanly. A mount removed from outside ends it with an error, so
// that a service manager restarts it.
func Run(o Options, stop chan os.Signal) error {
	cfg := o.Config
	if err := makeMountpoint(cfg.Mountpoint); err != nil {
		return err
	}
	if err := CheckMountArgs(cfg.Source, cfg.Mountpoint, cfg.State); err != nil {
		return err
	}
	lock, err := lockSource(cfg.Source)
	if err != nil {
		return err
	}
	defer lock.Release()
	if cfg.SourceID == "" {
		if cfg.SourceID, err = os.Hostname(); err != nil {
			return fmt.Errorf("no source-id set and the host name is unknown: %w", err)
		}
	}
	log, err := openLog(tracker.Options{Dir: cfg.State, Source: cfg.Source, BlockSize: o.BlockSize,
		ActivityExtent: o.Activity.Extent, ActivitySlots: o.Activity.Extents})
	if err != nil {
		return err
	}
	a, err := newAgent(cfg, o.TLS, log, o.BlockSize, clock.System{})
	if err != nil {
		log.Close()
		return err
	}
	a.version = o.Version
	srv, err := drfsfs.Mount(cfg.Source, cfg.Mountpoint, tracked.Recorder(log), drfsfs.Options{AllowOther: cfg.AllowOther})
	if err != nil {
		a.closeStores()
		log.Close()
		return err
	}
	var servers []interface{ Shutdown(context.Context) error }
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			s.Shutdown(ctx)
		}
	}
	ctl, err := control.Serve(filepath.Join(cfg.State, control.SocketName), log, a.replicationStates)
	if err == nil {
		ctl.OnResync(a.onResync)
		servers = append(servers, ctl)
		var api *http.Server
		if api, err = a.serveAPI(o.Socket); err == nil {
			servers = append(servers, shutdownRemoving{api, o.Socket})
			if o.MetricsListen != "" {
				var m *http.Server
				if m, err = a.serveMetrics(o.MetricsListen); err == nil {
					servers = append(servers, m)
				}
			}
		}
	}
	if err != nil {
		cleanup()
		srv.Unmount()
		a.closeStores()
		log.Close()
		return err
	}
	a.mount = FSMount(srv)
	a.start()
	slog.Info(fmt.Sprintf("agent: %s mounted at %s, state in %s, control socket %s; Ctrl-C or SIGTERM stops",
		cfg.Source, cfg.Mountpoint, cfg.State, o.Socket))
	notifySystemd(daemon.SdNotifyReady, fmt.Sprintf("%s mounted at %s; %d VM(s) protected", cfg.Source, cfg.Mountpoint, len(a.protections())))

	signalled := waitUnmount(srv, cfg.Mountpoint, stop, a.releaseHolds)
	notifySystemd(daemon.SdNotifyStopping, "shipping the last generation of each protected VM")
	signal.Stop(stop) // a second signal while the last generation ships ends the process
	cleanup()
	// The mount is gone: no write can land any more. Stop the VMs' work
	// and ship each protected VM's last generation.
	a.stop(2 * time.Minute)
	a.closeStores()
	if err := log.Close(); err != nil {
		return fmt.Errorf("closing the change log in %s: %w", cfg.State, err)
	}
	slog.Info("agent stopped; change log closed cleanly")
	if !signalled {
		return removedOutside(cfg.Mountpoint, cfg.Source)
	}
	return nil
}

// Activity shapes the activity log of the change log, which bounds what a
// crash of the host costs: Extents extents of Extent bytes may be hot at
// once, and only those are compared with the target after the crash. Zero
// values take the tracker's defaults (4 MiB × 1024).
type Activity struct {
	Extent  int64
	Extents int
}

// MountOptions are what RunMount runs with (drfs mount).
type MountOptions struct {
	Source, Mountpoint, State string
	BlockSize                 int // of a new state directory
	Activity                  Activity
	Debug                     bool // log every FUSE request
	AllowOther                bool
	// Replication, if its Target is set, replicates the source there
	// (checked: see ReplicationOptions).
	Replication ReplicationOptions
}

// RunMount mounts o.Source at o.Mountpoint with its change log in o.State
// and, with a target, replicates it, until a signal from stop
// (NotifyStop's) or an
// unmount from outside (which ends it with an error); then it ships the
// last generation and closes the change log cleanly.
func RunMount(o MountOptions, stop chan os.Signal) error {
	if err := CheckMountArgs(o.Source, o.Mountpoint, o.State); err != nil {
		return err
	}
	lock, err := lockSource(o.Source)
	if err != nil {
		return err
	}
	defer lock.Release()
	f := &o.Replication
	var store targets.Store
	if f.Target != "" {
		if store, err = OpenTarget(f); err != nil {
			return err
		}
		defer store.Close()
	}
	log, err := openLog(tracker.Options{Dir: o.State, Source: o.Source, BlockSize: o.BlockSize,
		ActivityExtent: o.Activity.Extent, ActivitySlots: o.Activity.Extents})
	if err != nil {
		return err
	}
	var repl *replication
	if store != nil {
		if repl, err = startReplication(context.Background(), f, o.Source, o.State, log, store, o.BlockSize); err != nil {
			log.Close()
			return err
		}
	}
	srv, err := drfsfs.Mount(o.Source, o.Mountpoint, tracked.Recorder(log), drfsfs.Options{Debug: o.Debug, AllowOther: o.AllowOther})
	if err != nil {
		log.Close()
		return err
	}
	var states func() []control.Replication
	if repl != nil {
		repl.mount = FSMount(srv)
		states = repl.states
	}
	ctl, err := control.Serve(filepath.Join(o.State, control.SocketName), log, states)
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
			f.Interval, f.Target, repl.window(), f.ResyncThreshold))
	} else {
		close(replDone)
	}
	slog.Info(fmt.Sprintf("%s mounted at %s, change log in %s; Ctrl-C or SIGTERM unmounts", o.Source, o.Mountpoint, o.State))

	signalled := waitUnmount(srv, o.Mountpoint, stop, nil)
	signal.Stop(stop) // a second signal while the last generation ships ends the process
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
		return fmt.Errorf("closing the change log in %s: %w", o.State, err)
	}
	slog.Info("unmounted; change log closed cleanly")
	if !signalled {
		return removedOutside(o.Mountpoint, o.Source)
	}
	return nil
}

// openLog opens the change log and says how it recovered from a crash of
// the process that had it open before.
func openLog(opts tracker.Options) (*tracker.Log, error) {
	log, err := tracker.Open(opts)
	if err != nil {
		return nil, err
	}
	if r := log.Recovered(); r.ProcessCrash {
		slog.Info(fmt.Sprintf("change log: the previous drfs process died without closing it; recovered from its in-flight table: %d change(s) in flight recorded again (%s read from the disks), no disk resynchronized for it",
			r.InFlight, units.Bytes(r.Reread)))
	}
	if r := log.Recovered(); r.HostCrash {
		slog.Warn(fmt.Sprintf("change log: the host crashed while drfs ran; its activity log names %d hot extent(s) (%s): only those are compared with the target, not whole disks",
			r.HotExtents, units.Bytes(r.HotBytes)))
	}
	return log, nil
}
