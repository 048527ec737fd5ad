package bench

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// memWatch follows, over one phase, the peak resident set size of the
// process that serves a target (this one for the in-process mounts) and
// the peak page cache held by the target's files. It resets the kernel's
// high-water mark VmHWM at the start, and samples VmRSS too in case the
// reset is not allowed.
type memWatch struct {
	pid      int // 0: this process
	hwmReset bool
	cached   func() int64 // nil: no page cache figure
	stop     chan struct{}
	done     chan struct{}
	// Written by the sampler until done is closed.
	peakRSS, peakCache int64
}

const (
	rssSampleEvery = 20 * time.Millisecond
	// The page cache is sampled more rarely: mincore over a 1 GiB file
	// takes about a millisecond of the two cores the jobs share.
	cacheSampleEvery = 5 // RSS samples
)

// startMemWatch starts following the process pid (0: this one) and the
// page cache that cached returns (nil: none).
func startMemWatch(pid int, cached func() int64) *memWatch {
	w := &memWatch{pid: pid, cached: cached, stop: make(chan struct{}), done: make(chan struct{})}
	if pid == 0 {
		// Start from what is live now: memory the heap kept from an
		// earlier target would otherwise count against this one.
		debug.FreeOSMemory()
	}
	// "5" resets VmHWM to the current VmRSS (Linux 4.0 and later).
	w.hwmReset = os.WriteFile(procFile(pid, "clear_refs"), []byte("5"), 0) == nil
	go func() {
		defer close(w.done)
		t := time.NewTicker(rssSampleEvery)
		defer t.Stop()
		for i := 0; ; i++ {
			if rss, err := pidStatus(pid, "VmRSS"); err == nil {
				w.peakRSS = max(w.peakRSS, rss)
			}
			if w.cached != nil && i%cacheSampleEvery == 0 {
				w.peakCache = max(w.peakCache, w.cached())
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

// Stop ends the phase and returns its peak RSS and peak page cache in
// bytes.
func (w *memWatch) Stop() (rss, cache int64) {
	close(w.stop)
	<-w.done
	if w.hwmReset {
		if hwm, err := pidStatus(w.pid, "VmHWM"); err == nil {
			w.peakRSS = max(w.peakRSS, hwm)
		}
	}
	if w.cached != nil {
		w.peakCache = max(w.peakCache, w.cached())
	}
	return w.peakRSS, w.peakCache
}

// procFile is /proc/PID/name, or /proc/self/name for pid 0.
func procFile(pid int, name string) string {
	if pid == 0 {
		return "/proc/self/" + name
	}
	return "/proc/" + strconv.Itoa(pid) + "/" + name
}

// pidStatus reads a memory field of /proc/PID/status (pid 0: this
// process), in bytes.
func pidStatus(pid int, field string) (int64, error) {
	path := procFile(pid, "status")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseStatus(b, path, field)
}

// parseStatus finds a field given in kB in the text of a /proc status file.
func parseStatus(b []byte, path, field string) (int64, error) {
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", path, field, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("%s has no %s", path, field)
}

// residentUnder returns the bytes of the regular files under the given
// files or directories that are in the page cache, by mincore(2) on a
// mapping of each. Files that vanish meanwhile (a dropped segment) count
// as nothing.
func residentUnder(roots ...string) int64 {
	var n int64
	for _, root := range roots {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if r, err := resident(path); err == nil {
					n += r
				}
			}
			return nil
		})
	}
	return n
}

// resident returns the bytes of the file at path that are in the page
// cache.
func resident(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 0, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(mem)
	page := os.Getpagesize()
	vec := make([]byte, (len(mem)+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		return 0, fmt.Errorf("mincore %s: %w", path, errno)
	}
	var pages int64
	for _, v := range vec {
		pages += int64(v & 1)
	}
	return pages * int64(page), nil
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
