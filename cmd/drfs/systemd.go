package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"
)

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
// existing one is left as it is, for checkMountArgs to judge.
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
