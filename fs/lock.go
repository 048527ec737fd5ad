package fs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLockUnsupported is matched (errors.Is) by the error of LockSource
// when the source's file system cannot lock a directory (flock(2) on an
// NFS directory, for one): nothing then stops a second drfs from serving
// it.
var ErrLockUnsupported = errors.New("the file system of the source cannot lock it")

// SourceBusyError is the error of LockSource when another process serves
// the source.
type SourceBusyError struct {
	Source  string // as given to LockSource
	PID     int    // the holder; 0 when it could not be found
	Cmdline string // its command line, the program's base name first
}

func (e *SourceBusyError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("source %s is already served by another drfs process; stop it first", e.Source)
	}
	return fmt.Sprintf("source %s is already served by drfs (pid %d: %s); stop it first", e.Source, e.PID, e.Cmdline)
}

// SourceLock is a process's claim on a source directory (LockSource).
type SourceLock struct {
	fd int
}

// LockSource claims the directory source for the calling process: while
// it holds the claim, LockSource fails for the same directory (by any
// path) in every other process, so that one drfs at a time serves it and
// every write through a drfs mount of it reaches that mount's change log.
//
// A command takes it before it creates or changes anything (its state
// directory, its target) and keeps it until it has stopped serving the
// source and closed its change log; Release ends it, and so does the end
// of the process however it ends (kill -9 included): it is flock(2)
// LOCK_EX on a descriptor of the directory itself. Nothing is created in
// the source, whose every top-level file is a VM.
//
// When another process holds it, the error is a *SourceBusyError naming
// that process, found by the directory's device and inode in /proc/locks
// and by /proc/PID/cmdline. When the file system cannot lock, the error
// matches ErrLockUnsupported. Other errors are those of opening source.
func LockSource(source string) (*SourceLock, error) {
	fd, err := unix.Open(source, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", source, err)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	switch err {
	case nil:
		return &SourceLock{fd: fd}, nil
	case unix.EWOULDBLOCK:
		busy := &SourceBusyError{Source: source}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			busy.PID = lockHolder(st)
			if busy.PID != 0 {
				busy.Cmdline = cmdline(busy.PID)
			}
		}
		unix.Close(fd)
		return nil, busy
	}
	unix.Close(fd)
	return nil, fmt.Errorf("source %s: %w (flock: %v)", source, ErrLockUnsupported, err)
}

// Release ends the claim. Calling it again is a no-op.
func (l *SourceLock) Release() error {
	if l == nil || l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

// lockHolder returns the PID of the process that holds a flock on the
// file of st, from /proc/locks, or 0. /proc/locks names the file by its
// super block's device, which differs from st's on btrfs subvolumes and
// overlays: a lock on the same inode number is then taken only if its
// process has the file open.
func lockHolder(st unix.Stat_t) int {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var others []int
	for sc.Scan() {
		// "3: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; the
		// waiters of a lock are listed after it with "->".
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" {
			continue
		}
		pid, err := strconv.Atoi(fields[4])
		if err != nil || pid <= 0 {
			continue
		}
		id := strings.Split(fields[5], ":")
		if len(id) != 3 || id[2] != strconv.FormatUint(st.Ino, 10) {
			continue
		}
		major, err1 := strconv.ParseUint(id[0], 16, 32)
		minor, err2 := strconv.ParseUint(id[1], 16, 32)
		if err1 == nil && err2 == nil && unix.Mkdev(uint32(major), uint32(minor)) == st.Dev {
			return pid
		}
		others = append(others, pid)
	}
	for _, pid := range others {
		if hasOpen(pid, st) {
			return pid
		}
	}
	return 0
}

// hasOpen reports whether process pid has a descriptor of the file of st.
func hasOpen(pid int, st unix.Stat_t) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	names, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, n := range names {
		var fst unix.Stat_t
		if unix.Stat(filepath.Join(dir, n.Name()), &fst) == nil && fst.Dev == st.Dev && fst.Ino == st.Ino {
			return true
		}
	}
	return false
}

// cmdline returns the command line of process pid, its program by base
// name, or "unknown command" when it cannot be read.
func cmdline(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	if err != nil || args[0] == "" {
		return "unknown command"
	}
	args[0] = filepath.Base(args[0])
	return strings.Join(args, " ")
}
