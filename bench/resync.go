package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
)

// ResyncOptions configure RunResync.
type ResyncOptions struct {
	Dir    string // scratch directory; the benchmark works in a new directory inside it
	Size   int64  // image size
	Seed   uint64
	Rounds int
}

// ResyncCase is one resynchronization measured against rsync.
type ResyncCase struct {
	Name         string
	ChangedBytes int64
	// drfs: compare by checksums where the replica lives, then send the
	// differing chunks as a frame stream, staged and committed.
	DrfsTime      time.Duration
	DrfsSumUp     int64 // checksum requests
	DrfsSumDown   int64 // checksums answered
	DrfsData      int64 // frame stream bytes (the chunks)
	DrfsCompared  int64
	DrfsDiffering int64
	// rsync --inplace --no-whole-file between the same two files.
	RsyncTime     time.Duration
	RsyncSent     int64
	RsyncReceived int64
	Verified      bool          // the replica equals the source afterwards
	VerifyTime    time.Duration // of that verify: a whole-image scan that finds nothing
}

// ResyncReport is the result of RunResync.
type ResyncReport struct {
	Size     int64
	HashGBps float64 // xxh3-128 over 1 MiB chunks, one core
	Cases    []ResyncCase
	Machine  Machine
}

// RunResync builds an image of opts.Size (random data in its first 3/4,
// a hole after), a directory-store replica equal to it, and then measures
// two cases, each against rsync on the same files: 1% of the 4 KiB blocks
// changed at random, and one contiguous 20 MiB region changed.
func RunResync(ctx context.Context, opts ResyncOptions) (*ResyncReport, error) {
	if opts.Size < 64<<20 {
		return nil, fmt.Errorf("bench resync: --size %d is too small (at least 64 MiB)", opts.Size)
	}
	if opts.Rounds <= 0 {
		opts.Rounds = 1
	}
	if _, err := exec.LookPath("rsync"); err != nil {
		return nil, fmt.Errorf("bench resync: rsync is not installed (it is the baseline)")
	}
	work, err := os.MkdirTemp(opts.Dir, "drfs-bench-resync-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	rep := &ResyncReport{Size: opts.Size, Machine: describeMachine(work)}
	rng := rand.New(rand.NewPCG(opts.Seed, 99))

	src := filepath.Join(work, "source.img")
	if err := writeImage(src, opts.Size, rng); err != nil {
		return nil, err
	}
	rep.HashGBps = hashRate()

	cases := []struct {
		name   string
		change func(f *os.File) (int64, error)
	}{
		{"1% of 4 KiB blocks at random", func(f *os.File) (int64, error) {
			n := opts.Size / 4096 / 100
			buf := make([]byte, 4096)
			seen := map[int64]bool{}
			for int64(len(seen)) < n {
				b := rng.Int64N(opts.Size / 4096)
				if seen[b] {
					continue
				}
				seen[b] = true
				fillRandom(buf, rng.Uint64())
				if _, err := f.WriteAt(buf, b*4096); err != nil {
					return 0, err
				}
			}
			return n * 4096, nil
		}},
		{"one contiguous 20 MiB region", func(f *os.File) (int64, error) {
			buf := make([]byte, 20<<20)
			fillRandom(buf, rng.Uint64())
			off := rng.Int64N(opts.Size-int64(len(buf))) &^ 4095
			_, err := f.WriteAt(buf, off)
			return int64(len(buf)), err
		}},
	}
	for _, c := range cases {
		var best *ResyncCase
		for round := 0; round < opts.Rounds; round++ {
			rc, err := resyncRound(ctx, work, src, opts.Size, c.name, c.change)
			if err != nil {
				return nil, fmt.Errorf("bench resync: %s: %w", c.name, err)
			}
			if best == nil || rc.DrfsTime < best.DrfsTime {
				best = rc
			}
		}
		rep.Cases = append(rep.Cases, *best)
	}
	return rep, nil
}

// resyncRound makes a replica equal to src in a fresh store and an rsync
// copy, changes src, then resynchronizes both and checks the replica.
func resyncRound(ctx context.Context, work, src string, size int64, name string, change func(*os.File) (int64, error)) (*ResyncCase, error) {
	dir := filepath.Join(work, "round")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	store, err := dirstore.Open(filepath.Join(dir, "store"), dirstore.Options{})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	if err := commitFile(ctx, store, src, size, nil, 1); err != nil {
		return nil, fmt.Errorf("seeding the replica: %w", err)
	}
	dst := filepath.Join(dir, "rsync-copy.img")
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cp: %v: %s", err, out)
	}
	f, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	changed, err := change(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	exec.Command("sync").Run()
	rc := &ResyncCase{Name: name, ChangedBytes: changed}

	// drfs: the diff by checksums, then the differing chunks committed.
	start := time.Now()
	sf, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	res, err := resync.Diff(ctx, sf, size, store, "vm", 1, "disk", resync.Options{})
	if err != nil {
		sf.Close()
		return nil, err
	}
	var wire countingWriter
	if err := commitFile(ctx, store, src, size, res.Ranges, 2, &wire); err != nil {
		sf.Close()
		return nil, err
	}
	rc.DrfsTime = time.Since(start)
	rc.DrfsSumUp, rc.DrfsSumDown, rc.DrfsData = res.SumBytesUp, res.SumBytesDown, wire.n
	rc.DrfsCompared, rc.DrfsDiffering = res.Compared(), res.Differing()
	start = time.Now()
	after, err := resync.Verify(ctx, sf, size, store, "vm", 2, "disk", resync.Options{})
	rc.VerifyTime = time.Since(start)
	sf.Close()
	rc.Verified = err == nil && after.InSync()

	// rsync, as a user would run it between the two files (--ignore-times:
	// its size-and-time check must not skip the file).
	start = time.Now()
	out, err := exec.Command("rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats", src, dst).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("rsync: %v: %s", err, out)
	}
	rc.RsyncTime = time.Since(start)
	rc.RsyncSent = statsField(out, `Total bytes sent: ([\d,.]+)`)
	rc.RsyncReceived = statsField(out, `Total bytes received: ([\d,.]+)`)
	return rc, nil
}

// commitFile stages the file (or only ranges of it, on top of the newest
// point) as generation gen of disk "disk" of VM "vm", and commits it.
func commitFile(ctx context.Context, store target.Store, path string, size int64, ranges []target.Extent, gen uint64, count ...*countingWriter) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	encoded := make(chan struct{})
	go func() {
		defer close(encoded)
		var w io.Writer = pw
		if len(count) > 0 {
			w = io.MultiWriter(pw, count[0])
		}
		pw.CloseWithError(encodeFile(w, f, size, ranges, gen))
	}()
	err = store.Stage(ctx, "vm", gen, "disk", pr)
	pr.CloseWithError(err)
	<-encoded // the count is complete, and f is no longer read
	if err != nil {
		return err
	}
	return store.Commit(ctx, "vm", gen, target.Commit{Source: "bench", Frozen: time.Now(), Kind: target.KindGeneration, Disks: []string{"disk"}})
}

// encodeFile writes a frame stream of the file: every block when ranges is
// nil (zero blocks as zero extents), else the blocks of ranges.
func encodeFile(w io.Writer, f *os.File, size int64, ranges []target.Extent, gen uint64) error {
	const bs = 4096
	h := frame.Header{Kind: frame.StreamGeneration, VM: "vm", Disk: "disk", Generation: gen, BlockSize: bs, DiskSize: uint64(size), Created: time.Now()}
	if ranges != nil {
		h.Base = gen - 1
	}
	fw, err := frame.NewWriter(w, h)
	if err != nil {
		return err
	}
	if ranges == nil {
		ranges = []target.Extent{{Off: 0, Len: size}}
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, bs)
	for _, r := range ranges {
		for off := r.Off; off < r.Off+r.Len; {
			n := min(int64(len(buf)), r.Off+r.Len-off)
			got, err := f.ReadAt(buf[:n], off)
			if err != nil && err != io.EOF {
				return err
			}
			clear(buf[got:n])
			for i := int64(0); i < n; i += bs {
				blk := buf[i:min(i+bs, n)]
				if bytes.Equal(blk, zero[:len(blk)]) {
					err = fw.Zero(uint64((off+i)/bs), 1)
				} else {
					err = fw.Data(uint64((off+i)/bs), blk)
				}
				if err != nil {
					return err
				}
			}
			off += n
		}
	}
	return fw.Close()
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func statsField(out []byte, re string) int64 {
	m := regexp.MustCompile(re).FindSubmatch(out)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseInt(string(bytes.ReplaceAll(bytes.ReplaceAll(m[1], []byte(","), nil), []byte("."), nil)), 10, 64)
	return v
}

// writeImage writes size bytes: random data in the first three quarters, a
// hole in the rest, as a disk that is not full.
func writeImage(path string, size int64, rng *rand.Rand) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size*3/4; off += int64(len(buf)) {
		fillRandom(buf, rng.Uint64())
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), size*3/4-off)], off); err != nil {
			return err
		}
	}
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

// hashRate measures the chosen chunk hash on one core, GB/s.
func hashRate() float64 {
	buf := make([]byte, 1<<20)
	fillRandom(buf, 1)
	start := time.Now()
	n := 0
	for time.Since(start) < 300*time.Millisecond {
		chunksum.Of(buf)
		n++
	}
	return float64(n) * float64(len(buf)) / time.Since(start).Seconds() / 1e9
}

// WriteTable prints the report.
func (r *ResyncReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "image %s, chunk hash xxh3-128 at %.1f GB/s per core\n\n", sizeString(r.Size), r.HashGBps)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tchanged\tdrfs time\trsync time\tdrfs/rsync time\tdrfs sent\tdrfs received\tdrfs total/changed\trsync sent\trsync received\tverified\t")
	for _, c := range r.Cases {
		sent := c.DrfsSumUp + c.DrfsData
		fmt.Fprintf(tw, "%s\t%s\t%v\t%v\t%.2f×\t%s\t%s\t%.3f×\t%s\t%s\t%v\t\n", c.Name, sizeString(c.ChangedBytes),
			c.DrfsTime.Round(time.Millisecond), c.RsyncTime.Round(time.Millisecond), c.DrfsTime.Seconds()/c.RsyncTime.Seconds(),
			sizeString(sent), sizeString(c.DrfsSumDown), float64(sent+c.DrfsSumDown)/float64(c.ChangedBytes),
			sizeString(c.RsyncSent), sizeString(c.RsyncReceived), c.Verified)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range r.Cases {
		fmt.Fprintf(w, "verify of the whole image after %q: %v, %.2f GB/s of image scanned\n", c.Name,
			c.VerifyTime.Round(time.Millisecond), float64(r.Size)/c.VerifyTime.Seconds()/1e9)
	}
	return nil
}
