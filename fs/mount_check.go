package fs

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CheckMount runs the checks of Mount without mounting: it returns the
// one-line error Mount would give for source and mountpoint (missing, not a
// directory, overlapping, mount point busy, no root or /dev/fuse), or nil.
// It changes nothing, so a command can call it before it creates anything
// else.
func CheckMount(source, mountpoint string) error {
	_, _, err := checkMount(source, mountpoint)
	return err
}

// checkMount checks what Mount needs before it changes anything, and
// returns the absolute, symlink-free paths of source and mountpoint. Its
// errors are one line and say what to do.
func checkMount(source, mountpoint string) (src, mnt string, err error) {
	src, err = checkDir("source", source, "give the directory that holds the disk images")
	if err != nil {
		return "", "", err
	}
	mnt, err = checkDir("mount point", mountpoint, "create an empty directory to mount on")
	if err != nil {
		return "", "", err
	}
	if within(mnt, src) || within(src, mnt) {
		return "", "", fmt.Errorf("mount point %s and source %s overlap: mount on a directory outside the source", mnt, src)
	}
	mounted, err := isMountPoint(mnt)
	if err != nil {
		return "", "", fmt.Errorf("mount point %s: cannot read the mount table: %w", mnt, err)
	}
	if mounted {
		return "", "", fmt.Errorf("mount point %s is busy: a file system is already mounted there; unmount it first (umount %s)", mnt, mnt)
	}
	if err := checkPrivileges(os.Geteuid(), "/dev/fuse"); err != nil {
		return "", "", err
	}
	return src, mnt, nil
}

// checkPrivileges checks that a process running as euid can mount with the
// FUSE device dev.
func checkPrivileges(euid int, dev string) error {
	if euid != 0 {
		return fmt.Errorf("drfs mount needs root and /dev/fuse: running as uid %d; run it as root", euid)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("drfs mount needs root and /dev/fuse: %w; load the fuse module or give the container the device", unwrapPath(err))
	}
	f.Close()
	return nil
}

// checkDir returns the absolute, symlink-free path of the directory dir, or
// an error naming what (the role of dir) and what to do.
func checkDir(what, dir, todo string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", what, dir, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s %s does not exist (%w): %s", what, abs, unwrapPath(err), todo)
		}
		return "", fmt.Errorf("%s %s: %w: %s", what, abs, unwrapPath(err), todo)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", what, abs, unwrapPath(err), todo)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%s %s is not a directory: %s", what, abs, todo)
	}
	return real, nil
}

// unwrapPath drops the operation and path of a *fs.PathError, which the
// messages above already name.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// within reports whether path is dir or inside it. Both are clean and
// absolute.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+"/") || dir == "/"
}

// isMountPoint reports whether something is mounted on dir (absolute,
// symlink-free), from /proc/self/mountinfo.
func isMountPoint(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// "36 35 98:0 /root /mnt/point rw,noatime - ext4 /dev/x rw":
		// the fifth field is the mount point, octal-escaped.
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && unescapeMountinfo(fields[4]) == dir {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the kernel's \ooo escapes of space, tab,
// newline and backslash in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
