package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// rssWatch follows the peak resident set size of this process (which holds
// the mounts) over one phase. It resets the kernel's high-water mark VmHWM
// at the start, and samples VmRSS too in case the reset is not allowed.
type rssWatch struct {
	hwmReset bool
	stop     chan struct{}
	done     chan struct{}
	peak     int64 // bytes; written by the sampler until done is closed
}

const rssSampleEvery = 20 * time.Millisecond

func startRSSWatch() *rssWatch {
	w := &rssWatch{stop: make(chan struct{}), done: make(chan struct{})}
	// Start from what is live now: memory the heap kept from an earlier
	// target would otherwise count against this one.
	debug.FreeOSMemory()
	// "5" resets VmHWM to the current VmRSS (Linux 4.0 and later).
	w.hwmReset = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	go func() {
		defer close(w.done)
		t := time.NewTicker(rssSampleEvery)
		defer t.Stop()
		for {
			if rss, err := procStatus("VmRSS"); err == nil {
				w.peak = max(w.peak, rss)
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends the phase and returns its peak RSS in bytes.
func (w *rssWatch) Stop() int64 {
	close(w.stop)
	<-w.done
	if w.hwmReset {
		if hwm, err := procStatus("VmHWM"); err == nil {
			w.peak = max(w.peak, hwm)
		}
	}
	return w.peak
}

// procStatus reads a memory field of /proc/self/status, in bytes.
func procStatus(field string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/self/status %s: %w", field, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("/proc/self/status has no %s", field)
}

// Machine describes where a benchmark ran, for its report.
type Machine struct {
	CPUs       int    `json:"cpus"`
	Kernel     string `json:"kernel"`
	GoVersion  string `json:"go_version"`
	FSType     string `json:"fs_type"`   // filesystem of the scratch directory
	FSSource   string `json:"fs_source"` // its device
	MemTotal   int64  `json:"mem_total"` // bytes
	FioVersion string `json:"fio_version,omitempty"`
}

func describeMachine(scratch string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	m.FSType, m.FSSource = filesystemOf(scratch)
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				m.MemTotal = kb << 10
			}
		}
	}
	return m
}

// filesystemOf returns the type and source of the mount that holds path,
// from the longest matching mount point in /proc/self/mountinfo.
func filesystemOf(path string) (fstype, source string) {
	path, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "unknown", ""
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "unknown", ""
	}
	best := -1
	for line := range strings.Lines(string(b)) {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if !within(path, mp) || len(mp) < best {
			continue
		}
		best, fstype, source = len(mp), g[0], g[1]
	}
	if best < 0 {
		return "unknown", ""
	}
	return fstype, source
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
