package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// lookPassthroughHP finds the passthrough_hp binary: path, or
// "passthrough_hp" on PATH when path is "".
func lookPassthroughHP(path string) (string, error) {
	if path == "" {
		path = "passthrough_hp"
	}
	bin, err := exec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("mount benchmark: target %s: %w: build libfuse's reference server with scripts/passthrough_hp.sh (from Debian's fuse3 sources) and put it on PATH, or give its path with --passthrough-hp",
			TargetPassthroughHP, err)
	}
	return bin, nil
}

// fuseDaemon is a FUSE server in its own process.
type fuseDaemon struct {
	cmd    *exec.Cmd
	exited chan error // receives Wait's outcome
}

// passthroughHPArgs are the arguments of passthrough_hp serving src on mnt
// in the foreground, given what its --help says: kernel passthrough off
// where the server has it (libfuse 3.17 and later), so that every request
// reaches the daemon.
func passthroughHPArgs(help []byte, src, mnt string) []string {
	args := []string{"--foreground"}
	if bytes.Contains(help, []byte("--nopassthrough")) {
		args = append(args, "--nopassthrough")
	}
	return append(args, src, mnt)
}

// startPassthroughHP mounts src on mnt with passthrough_hp and returns once
// the mount is there. The server's messages go to out.
func startPassthroughHP(bin, src, mnt string, out io.Writer) (*fuseDaemon, error) {
	help, _ := exec.Command(bin, "--help").CombinedOutput()
	cmd := exec.Command(bin, passthroughHPArgs(help, src, mnt)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	d := &fuseDaemon{cmd: cmd, exited: make(chan error, 1)}
	go func() { d.exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for !isMountPoint(mnt) {
		select {
		case err := <-d.exited:
			return nil, fmt.Errorf("%s exited before mounting %s: %v", bin, mnt, err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop(mnt)
			return nil, fmt.Errorf("%s did not mount %s within 10s", bin, mnt)
		}
	}
	return d, nil
}

// stop unmounts mnt, which ends the server, and waits for it to exit. A
// server that does not exit is killed and its mount detached, so that
// nothing is left behind.
func (d *fuseDaemon) stop(mnt string) error {
	err := unmountRetry(func() error {
		if !isMountPoint(mnt) {
			return nil
		}
		return unix.Unmount(mnt, 0)
	}, mnt)
	select {
	case <-d.exited:
		return err
	case <-time.After(10 * time.Second):
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
	unix.Unmount(mnt, unix.MNT_DETACH)
	return errors.Join(err, fmt.Errorf("%s did not exit after its unmount: killed", d.cmd.Path))
}

// isMountPoint reports whether path is the root of a mount: on another
// device than its parent directory.
func isMountPoint(path string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(path, &st) != nil || unix.Stat(filepath.Dir(path), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
