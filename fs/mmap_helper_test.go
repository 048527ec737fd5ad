package fs

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// mmapHelperEnv tells the test binary to run as the mmap helper process.
const mmapHelperEnv = "DRFS_MMAP_HELPER"

// TestMmapHelperProcess is not a test: run by startMmapWrite in a child
// process, it maps a file of the mount, stores into the mapping, prints
// "written" and msyncs. Stores into a mapping of the mount must not come
// from the test process itself: a page fault that waits for the daemon
// cannot be preempted, so a garbage collection that stops the world would
// wait for it while the daemon waits for the collection.
func TestMmapHelperProcess(t *testing.T) {
	spec := os.Getenv(mmapHelperEnv)
	if spec == "" {
		t.Skip("run by the mmap tests in a child process")
	}
	f := strings.Split(spec, ",")
	path := f[0]
	mapLen, _ := strconv.Atoi(f[1])
	off, _ := strconv.Atoi(f[2])
	n, _ := strconv.Atoi(f[3])
	seed, _ := strconv.ParseUint(f[4], 10, 64)
	fd, err := unix.Open(path, unix.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	m, err := unix.Mmap(fd, 0, mapLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	copy(m[off:off+n], randomBytes(rand.New(rand.NewPCG(seed, 0)), n))
	fmt.Println("written")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(0)
}

// startMmapWrite starts a child process that maps the first mapLen bytes
// of path, stores n random bytes (from seed) at off and msyncs. It returns
// once the bytes are stored in the mapping, with a channel that yields the
// child's exit error once the msync is done (or the error that stopped it
// sooner).
func startMmapWrite(path string, mapLen, off, n int, seed uint64) <-chan error {
	cmd := exec.Command(os.Args[0], "-test.run=^TestMmapHelperProcess$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d,%d,%d", mmapHelperEnv, path, mapLen, off, n, seed))
	cmd.Stderr = os.Stderr
	done := make(chan error, 1)
	out, err := cmd.StdoutPipe()
	if err != nil {
		done <- err
		return done
	}
	if err := cmd.Start(); err != nil {
		done <- err
		return done
	}
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	if err != nil || line != "written\n" {
		cmd.Process.Kill()
		cmd.Wait()
		done <- fmt.Errorf("mmap helper: %q, %v", line, err)
		return done
	}
	go func() {
		_, _ = r.ReadString(0) // drain
		done <- cmd.Wait()
	}()
	return done
}
