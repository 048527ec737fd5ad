package agent

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
	"syscall"
	"time"

	drfsfs "github.com/drfs-project/drfs/fs"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

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

// NotifyStop catches SIGINT and SIGTERM from now on: taken at the start of
// a command, a signal that comes while it sets up waits for waitUnmount
// instead of killing the process half set up.
func NotifyStop() chan os.Signal {
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

// CheckMountArgs refuses bad input before anything is created or changed.
func CheckMountArgs(source, mountpoint, state string) error {
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

// notifySystemd tells the service manager that started drfs (systemd's
// Type=notify, through NOTIFY_SOCKET) what it is doing: state is
// daemon.SdNotifyReady once the mount is up and the control socket
// answers, daemon.SdNotifyStopping when a stop begins. Without a service
// manager it does nothing; a failure to tell it is only printed.
func notifySystemd(state, status string) {
	msg := state
	if status != "" {
		msg += "\nSTATUS=" + status
	}
	if _, err := daemon.SdNotify(false, msg); err != nil {
		slog.Warn(fmt.Sprintf("telling systemd %q: %v", state, err))
	}
}

// makeMountpoint creates the agent's mountpoint if it is missing (under a
// systemd RuntimeDirectory, say, which starts empty at every boot); an
// existing one is left as it is, for CheckMountArgs to judge.
func makeMountpoint(dir string) error {
	if _, err := os.Lstat(dir); err == nil || !os.IsNotExist(err) {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the mountpoint %s: %w", dir, err)
	}
	slog.Info("agent: created the mountpoint " + dir)
	return nil
}
