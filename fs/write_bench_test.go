package fs

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// nopRecorder tracks every file with a nopDisk: it measures what the mount
// itself costs, without a change log behind it.
type nopRecorder struct{}

func (nopRecorder) OpenDisk(string, int64) (DiskRecorder, error) { return nopDisk{}, nil }
func (nopRecorder) Renamed(string, string)                       {}
func (nopRecorder) Removed(string)                               {}

// BenchmarkRandomWrite4K: 4 KiB O_DIRECT writes at random aligned offsets of
// a 64 MiB file, through go-fuse's plain loopback mounted with the same
// options ("loopback"), through drfs without a recorder ("untracked"), with
// one ("tracked"), and with one and a snapshot of the file ("snapshot":
// the file is full of data, so the first write of each block copies its
// before-image), by 1 and 4 writers.
func BenchmarkRandomWrite4K(b *testing.B) {
	requireFUSE(b)
	const size = 64 << 20
	for _, kind := range []string{"loopback", "untracked", "tracked", "snapshot"} {
		for _, writers := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/writers=%d", kind, writers), func(b *testing.B) {
				dir := b.TempDir()
				src, mnt := filepath.Join(dir, "src"), filepath.Join(dir, "mnt")
				os.Mkdir(src, 0o755)
				os.Mkdir(mnt, 0o755)
				f, err := os.Create(filepath.Join(src, "d"))
				if err != nil {
					b.Fatal(err)
				}
				if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
					b.Fatal(err)
				}
				if kind == "snapshot" {
					chunk := randomBytes(rand.New(rand.NewPCG(3, 3)), 1<<20)
					for off := int64(0); off < size; off += int64(len(chunk)) {
						if _, err := f.WriteAt(chunk, off); err != nil {
							b.Fatal(err)
						}
					}
				}
				f.Close()
				unmount := mountForBench(b, kind, src, mnt)
				defer unmount()

				rng := rand.New(rand.NewPCG(1, 1))
				fds := make([]int, writers)
				bufs := make([][]byte, writers)
				for w := range writers {
					fds[w], err = unix.Open(filepath.Join(mnt, "d"), unix.O_RDWR|unix.O_DIRECT, 0)
					if err != nil {
						b.Fatal(err)
					}
					defer unix.Close(fds[w])
					bufs[w] = alignedBuffer(b, rng, 4096)
				}
				b.SetBytes(4096)
				b.ResetTimer()
				var wg sync.WaitGroup
				for w := range writers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						rng := rand.New(rand.NewPCG(uint64(w), 2))
						for i := w; i < b.N; i += writers {
							off := rng.Int64N(size/4096) * 4096
							if _, err := unix.Pwrite(fds[w], bufs[w], off); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
			})
		}
	}
}

// mountForBench mounts kind on mnt and returns how to unmount it.
func mountForBench(b *testing.B, kind, src, mnt string) func() {
	switch kind {
	case "loopback":
		root, err := gofs.NewLoopbackRoot(src)
		if err != nil {
			b.Fatal(err)
		}
		srv, err := gofs.Mount(mnt, root, NodeOptions(Options{}))
		if err != nil {
			b.Fatal(err)
		}
		return func() { srv.Unmount() }
	default:
		var rec Recorder
		if kind == "tracked" || kind == "snapshot" {
			rec = nopRecorder{}
		}
		srv, err := Mount(src, mnt, rec, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if kind != "snapshot" {
			return func() { srv.Unmount() }
		}
		snap, err := srv.Snapshot([]string{"d"}, b.TempDir())
		if err != nil {
			srv.Unmount()
			b.Fatal(err)
		}
		return func() {
			b.ReportMetric(float64(snap.Bytes())/float64(b.N), "saved-B/op")
			snap.Delete()
			srv.Unmount()
		}
	}
}
