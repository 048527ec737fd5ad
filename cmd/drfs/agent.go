package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/internal/tracked"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/wrap"
	"github.com/drfs-project/drfs/tracker"
)

// socketFlag locates the agent for the commands that talk to it.
type socketFlag struct {
	Socket string `default:"/run/drfs/agent.sock" env:"DRFS_SOCKET" placeholder:"PATH" help:"Control socket of the drfs agent." type:"path"`
}

// agentCmd runs the agent: the tracking mount, the change log, and the
// protection of every VM that drfs protect names.
type agentCmd struct {
	Config string `placeholder:"FILE" type:"existingfile" help:"Configuration file (see docs/agent.md). Without it, give --source, --mountpoint and --state."`

	Source        string `placeholder:"DIR" type:"path" help:"Directory of disk images: each top-level folder is a VM, each file inside it a disk."`
	Mountpoint    string `placeholder:"DIR" type:"path" help:"Where the tracked view of SOURCE is mounted; run the VMs from here."`
	State         string `placeholder:"DIR" type:"path" help:"Directory of the change log and the agent's state (keep it off the mount)."`
	Target        string `placeholder:"URL" help:"Default target of drfs protect: dir:///path, https://host:port or azblob://ACCOUNT/CONTAINER."`
	SourceID      string `name:"source-id" placeholder:"NAME" help:"Identity of this host on the target (default: the host name)."`
	Interval      string `placeholder:"DURATION" help:"Default replication interval (5m unless set)."`
	Retention     string `placeholder:"DURATION" help:"Default retention of recovery points (24h unless set)."`
	ResyncWindow  string `name:"resync-window" placeholder:"SPEC" help:"When resynchronizations run: e.g. 18:00-08:00,sat,sun (the default), always, never."`
	ResyncThresh  string `name:"resync-threshold" placeholder:"PCT" help:"Drop a VM's change log and compare its disks from a snapshot instead (in the resync window) when a disk's log reaches this share of its size, a disk under 1 GiB counted as 1 GiB (default 50%)."`
	Bandwidth     string `placeholder:"RATE" help:"Upload limit to each target, shared by the VMs replicating there, e.g. 50MiB/s (default: none)."`
	Compress      string `placeholder:"MODE" help:"LZ4 on what is shipped: auto (the default: for a target reached over a network, not for a dir:// one), lz4 or none."`
	MaxGeneration string `name:"max-generation" placeholder:"SIZE" help:"Cut the generation of a protected VM before its interval when it holds this much changed data, so that heavy writes still make a point every few seconds (default 256MiB; 0 cuts only at the interval)."`
	AllowOther    bool   `name:"allow-other" help:"Let users other than root open the disks on the mount, as their file modes allow (libvirt runs QEMU as its own user: docs/libvirt.md)."`
	targets.TLS

	socketFlag
	logFlags
	MetricsListen string `name:"metrics-listen" placeholder:"ADDR" help:"Serve Prometheus metrics on this address, e.g. 127.0.0.1:9477."`
	BlockSize     int    `default:"4096" help:"Tracking block size in bytes (fixed when the state directory is created)."`
}

// settingFlags are the agent's flags that stand for configuration
// settings: given on the command line, they conflict with --config.
var settingFlags = []string{"source", "mountpoint", "state", "target", "source-id", "interval", "retention",
	"resync-window", "resync-threshold", "bandwidth", "compress", "max-generation", "allow-other", "tls-cert", "tls-key", "tls-ca"}

// config returns the agent's configuration: the file's, or one made of the
// flags and checked by the same rules. given lists the flags of the
// command line: with --config, a setting flag there is a mistake, while
// the DRFS_TLS_* environment variables that fill the --tls-* flags are
// ignored, the file's TLS settings (or none) being the agent's.
func (c *agentCmd) config(given []string) (*orchestrator.Config, targets.TLS, error) {
	if c.Config != "" {
		for _, name := range given {
			if slices.Contains(settingFlags, name) {
				return nil, targets.TLS{}, fmt.Errorf("give either --config or the settings as flags, not both (--%s was given with --config %s)", name, c.Config)
			}
		}
		cfg, err := orchestrator.LoadConfig(c.Config)
		if err != nil {
			return nil, targets.TLS{}, err
		}
		return cfg, targets.TLS{Cert: cfg.TLSCert, Key: cfg.TLSKey, CA: cfg.TLSCA}, nil
	}
	if c.Source == "" || c.Mountpoint == "" || c.State == "" {
		return nil, targets.TLS{}, errors.New("give --config FILE, or --source, --mountpoint and --state")
	}
	var b strings.Builder
	for _, kv := range [][2]string{{"source", c.Source}, {"mountpoint", c.Mountpoint}, {"state", c.State},
		{"target", c.Target}, {"source-id", c.SourceID}, {"tls-cert", c.Cert}, {"tls-key", c.Key}, {"tls-ca", c.CA},
		{"interval", c.Interval}, {"retention", c.Retention}, {"resync-window", c.ResyncWindow}, {"resync-threshold", c.ResyncThresh}, {"compress", c.Compress}, {"bandwidth", c.Bandwidth},
		{"max-generation", c.MaxGeneration}, {"allow-other", trueOrEmpty(c.AllowOther)}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "%s: %q\n", kv[0], kv[1]) // YAML: a double-quoted string is any value
		}
	}
	cfg, err := orchestrator.ParseConfig("flags", []byte(b.String()))
	if err != nil {
		// The lines are ours, not the user's: each message names the
		// setting, which is the flag's name.
		return nil, targets.TLS{}, errors.New(flagLinePrefix.ReplaceAllString(err.Error(), "--"))
	}
	return cfg, c.TLS, nil
}

// checkTargets finds a bad target URL or a missing TLS file of the
// configuration cfg (tlsFiles its TLS settings) before the agent mounts
// anything, without contacting the network: the error names the setting,
// as a flag or in the configuration file.
func checkTargets(cfg *orchestrator.Config, tlsFiles targets.TLS, fromFile bool) error {
	err := targets.Check(cfg.Target, tlsFiles)
	switch {
	case err == nil:
		return nil
	case fromFile:
		return fmt.Errorf("%s: %w", cfg.File, err)
	}
	return fmt.Errorf("--%w", err)
}

// commandLineFlags returns the names of the flags given on the command
// line of kctx, not those that defaults or the environment filled.
func commandLineFlags(kctx *kong.Context) []string {
	var names []string
	for _, p := range kctx.Path {
		if p.Flag != nil && !p.Resolved {
			names = append(names, p.Flag.Name)
		}
	}
	return names
}

// trueOrEmpty is the setting of a boolean flag: "true" when it was given,
// unset otherwise.
func trueOrEmpty(b bool) string {
	if b {
		return "true"
	}
	return ""
}

var flagLinePrefix = regexp.MustCompile(`(?m)^flags:(\d+: )?`)

// agentMemoryLimit is the agent's soft memory limit unless GOMEMLIMIT
// says otherwise: the garbage collector works harder near it, so that the
// agent's memory stays bounded however large the disks it protects.
const agentMemoryLimit = 160 << 20

func (c *agentCmd) Run(kctx *kong.Context) error {
	c.startLog()
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(agentMemoryLimit)
	}
	cfg, tlsFiles, err := c.config(commandLineFlags(kctx))
	if err != nil {
		return err
	}
	if err := checkTargets(cfg, tlsFiles, c.Config != ""); err != nil {
		return err
	}
	sig := notifyStop()
	defer signal.Stop(sig)
	if err := makeMountpoint(cfg.Mountpoint); err != nil {
		return err
	}
	if err := checkMountArgs(cfg.Source, cfg.Mountpoint, cfg.State); err != nil {
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
	log, err := tracker.Open(tracker.Options{Dir: cfg.State, Source: cfg.Source, BlockSize: c.BlockSize})
	if err != nil {
		return err
	}
	a, err := newAgent(cfg, tlsFiles, log, c.BlockSize)
	if err != nil {
		log.Close()
		return err
	}
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
		if api, err = a.serveAPI(c.Socket); err == nil {
			servers = append(servers, shutdownRemoving{api, c.Socket})
			if c.MetricsListen != "" {
				var m *http.Server
				if m, err = a.serveMetrics(c.MetricsListen); err == nil {
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
	a.srv = srv
	a.start()
	slog.Info(fmt.Sprintf("agent: %s mounted at %s, state in %s, control socket %s; Ctrl-C or SIGTERM stops",
		cfg.Source, cfg.Mountpoint, cfg.State, c.Socket))
	notifySystemd(daemon.SdNotifyReady, fmt.Sprintf("%s mounted at %s; %d VM(s) protected", cfg.Source, cfg.Mountpoint, len(a.protections())))

	signalled := waitUnmount(srv, cfg.Mountpoint, sig, a.releaseHolds)
	notifySystemd(daemon.SdNotifyStopping, "shipping the last generation of each protected VM")
	signal.Stop(sig) // a second signal while the last generation ships ends the process
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

// releaseHolds lets the held writes of failed-over VMs go, so that the
// mount can stop.
func (a *agent) releaseHolds() {
	for _, p := range a.protections() {
		a.releaseHold(p)
	}
}

// shutdownRemoving shuts an HTTP server on a unix socket down and removes
// the socket file.
type shutdownRemoving struct {
	*http.Server
	path string
}

func (s shutdownRemoving) Shutdown(ctx context.Context) error {
	err := s.Server.Shutdown(ctx)
	os.Remove(s.path)
	return err
}

// notifyStop catches SIGINT and SIGTERM from now on: taken at the start of
// a command, a signal that comes while it sets up waits for waitUnmount
// instead of killing the process half set up.
func notifyStop() chan os.Signal {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	return sig
}

// waitUnmount returns when the mount is gone: unmounted here on a signal
// from sig (retried at the next signal while files are open on it), or
// unmounted from outside. It reports whether a signal stopped it: false
// means that someone else removed the mount (removedOutside).
func waitUnmount(srv *drfsfs.Server, mountpoint string, sig <-chan os.Signal, beforeUnmount func()) (signalled bool) {
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	for {
		select {
		case <-done:
			return false
		case s := <-sig:
			slog.Info(fmt.Sprintf("%v: unmounting %s", s, mountpoint))
			if beforeUnmount != nil {
				beforeUnmount()
			}
			if err := srv.Unmount(); err != nil {
				slog.Warn(fmt.Sprintf("cannot unmount %s: %v (close the files open on it, then signal again)", mountpoint, err))
				continue
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
			return true
		}
	}
}

// removedOutside is the error a command ends with, after a clean
// shutdown, when its mount was removed by someone else (fusermount -u,
// umount): the exit status is then not 0, so that a service manager
// restarts it.
func removedOutside(mountpoint, source string) error {
	return fmt.Errorf("the mount at %s was removed from outside drfs (fusermount -u or umount): nothing tracks writes to %s any more; start drfs again", mountpoint, source)
}

// lockSource claims source for this process (drfsfs.LockSource) before
// anything is created or changed: a second drfs serving it would let
// writes escape this one's change log. A file system that cannot lock
// only gets a warning.
func lockSource(source string) (*drfsfs.SourceLock, error) {
	lock, err := drfsfs.LockSource(source)
	if errors.Is(err, drfsfs.ErrLockUnsupported) {
		slog.Warn(fmt.Sprintf("%v: make sure that no other drfs serves it", err))
		return nil, nil
	}
	return lock, err
}

// serveMetrics serves the Prometheus metrics of the agent on addr.
func (a *agent) serveMetrics(addr string) (*http.Server, error) {
	reg := a.metricsRegistry()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.Serve(ln)
	slog.Info(fmt.Sprintf("agent: metrics on http://%s/metrics", ln.Addr()))
	return s, nil
}

// storeCache opens each target once: the VMs that replicate to one target
// share its store (a directory target has one writer: this process).
type storeCache struct {
	tls       targets.TLS
	bandwidth shipper.Bandwidth // upload limit per target; 0: none
	mu        sync.Mutex
	m         map[string]targets.Store
	limited   map[string]target.Store // the stores of m behind the limit
}

// shipping returns the store the shipper stages to url through: the
// store of get, behind the upload limit shared by every VM replicating
// there; nil when there is no limit.
func (c *storeCache) shipping(url string) (target.Store, error) {
	if c.bandwidth <= 0 {
		return nil, nil
	}
	s, err := c.get(url)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.limited[url]; l != nil {
		return l, nil
	}
	if c.limited == nil {
		c.limited = map[string]target.Store{}
	}
	l := wrap.RateLimit(s, int64(c.bandwidth))
	c.limited[url] = l
	return l, nil
}

func (c *storeCache) get(url string) (targets.Store, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.m[url]; s != nil {
		return s, nil
	}
	s, err := targets.Open(url, c.tls)
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[string]targets.Store{}
	}
	c.m[url] = s
	return s, nil
}

func (c *storeCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for url, s := range c.m {
		s.Close()
		delete(c.m, url)
		delete(c.limited, url)
	}
}
