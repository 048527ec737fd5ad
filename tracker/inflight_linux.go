package tracker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bootID names this boot of the host; "" when the system does not say.
// Tests replace it to simulate a host crash.
var bootID = func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// openInFlight maps the in-flight table of the state directory dir,
// creating it if needed, and returns it with what the previous process
// left in it. The table is not reset: call reset once that is acted on.
//
// The file's blocks are allocated first: a store into a mapped page that
// the file system cannot allocate kills the process (SIGBUS). Without room
// for them, the log keeps no table (a crash then resynchronizes every
// disk), and the old table is emptied so that it is never read again as
// this process's.
func openInFlight(dir string) (*inFlight, crashState, error) {
	path := filepath.Join(dir, tableName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, crashState{}, fmt.Errorf("tracker: opening %s: %w", path, err)
	}
	defer f.Close()
	old := make([]byte, tableSize)
	n, _ := f.ReadAt(old, 0)
	cs := readCrashState(old[:n], bootID())
	if err := allocateFile(f, tableSize); err != nil {
		if terr := f.Truncate(0); terr != nil {
			return nil, crashState{}, fmt.Errorf("tracker: allocating %s: %v; emptying it: %w", path, err, terr)
		}
		return nil, cs, nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, tableSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, crashState{}, fmt.Errorf("tracker: mapping %s: %w", path, err)
	}
	return newInFlight(mem), cs, nil
}

// allocateFile gives the first size bytes of f blocks of their own.
func allocateFile(f *os.File, size int64) error {
	err := unix.Fallocate(int(f.Fd()), 0, 0, size)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	_, err = f.WriteAt(make([]byte, size), 0)
	return err
}

// detach lets go of the table's file (so that its file system can be
// unmounted) and leaves anonymous memory at the same addresses: a late
// Begin or End of a closed log writes there harmlessly.
func (t *inFlight) detach() {
	_, _, errno := unix.Syscall6(unix.SYS_MMAP, uintptr(unsafe.Pointer(&t.mem[0])), uintptr(len(t.mem)),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED, ^uintptr(0), 0)
	_ = errno // on failure the file stays mapped until the process exits
}
