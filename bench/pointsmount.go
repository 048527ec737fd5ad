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
	"text/tabwriter"
	"time"
)

// PointsMountOptions configure RunPointsMount.
type PointsMountOptions struct {
	Dir         string  // scratch directory; the benchmark works in a new directory inside it
	Size        int64   // disk size
	Churn       float64 // fraction of the 4 KiB blocks each generation changes
	Generations int     // generations after the initial copy; the older point goes this far back
	Runtime     time.Duration
	Seed        uint64
	Drfs        string    // the drfs binary (the commands a user runs)
	Progress    io.Writer // or nil
}

// PointsMountCase is one point read both ways.
type PointsMountCase struct {
	Name  string        `json:"name"`
	Point uint64        `json:"point"`
	Back  int           `json:"generations_back"`
	Ready time.Duration `json:"ready"` // from the command to the first byte read from the mount
	Equal bool          `json:"equal"` // the mounted disk equals the source at that point
	// Reads of the mounted point and of the same point materialised by
	// drfs restore, from a cold page cache.
	Mounted ReadFigures `json:"mounted"`
	Copy    ReadFigures `json:"restored_copy"`
}

// ReadFigures are the read rates of one file.
type ReadFigures struct {
	SeqMBps  float64 `json:"seq_mbps"`  // 1 MiB reads, start to end
	RandIOPS float64 `json:"rand_iops"` // 4 KiB reads at random offsets, one at a time
}

// PointsMountReport is the result of RunPointsMount.
type PointsMountReport struct {
	Size        int64             `json:"size"`
	Churn       float64           `json:"churn"`
	Generations int               `json:"generations"`
	Runtime     time.Duration     `json:"runtime"`
	BuildTime   time.Duration     `json:"build_time"`
	Cases       []PointsMountCase `json:"cases"`
	Machine     Machine           `json:"machine"`
}

// RunPointsMount builds the store of RunFailover, then for the latest point
// and the one opts.Generations back: times `drfs points mount` from the
// command to a readable disk, checks the mounted disk against the source as
// it was, and measures sequential and random reads of the mounted disk
// against the same point materialised with `drfs restore`, each from a cold
// page cache (as root; best effort otherwise).
func RunPointsMount(ctx context.Context, opts PointsMountOptions) (*PointsMountReport, error) {
	if opts.Generations < 1 || opts.Churn <= 0 || opts.Churn > 1 || opts.Size < 1<<20 || opts.Runtime <= 0 {
		return nil, fmt.Errorf("bench points-mount: want generations >= 1, 0 < churn <= 1, size >= 1 MiB, runtime > 0")
	}
	work, err := os.MkdirTemp(opts.Dir, "drfs-bench-points-mount-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	logf := func(format string, a ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, format+"\n", a...)
		}
	}
	rep := &PointsMountReport{Size: opts.Size, Churn: opts.Churn, Generations: opts.Generations, Runtime: opts.Runtime, Machine: describeMachine(work)}
	storeDir := filepath.Join(work, "target")
	tgt := "dir://" + storeDir
	start := time.Now()
	sums, last, err := buildPoints(ctx, storeDir, filepath.Join(work, "source.img"), opts.Size, opts.Churn, opts.Generations,
		rand.New(rand.NewPCG(opts.Seed, 7)), logf)
	if err != nil {
		return nil, err
	}
	rep.BuildTime = time.Since(start)

	older := last - uint64(opts.Generations)
	for _, c := range []struct {
		name  string
		point string
		gen   uint64
	}{
		{"latest", "latest", last},
		{fmt.Sprintf("%d generations back", opts.Generations), fmt.Sprint(older), older},
	} {
		pc := PointsMountCase{Name: c.name, Point: c.gen, Back: int(last - c.gen)}
		restored := filepath.Join(work, "restore-"+c.point)
		if out, err := exec.CommandContext(ctx, opts.Drfs, "restore", "--target", tgt, "vm", "--point", c.point, "--to", restored).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("drfs restore %s: %v\n%s", c.point, err, out)
		}
		mnt := filepath.Join(work, "mnt-"+c.point)
		dropCaches()
		t0 := time.Now()
		cmd := exec.CommandContext(ctx, opts.Drfs, "points", "mount", "--target", tgt, "vm", mnt, "--point", c.point)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		disk := filepath.Join(mnt, "disk")
		if err := waitReadable(ctx, disk, 30*time.Second); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("drfs points mount %s: %v\n%s", c.point, err, stderr.Bytes())
		}
		pc.Ready = time.Since(t0)
		logf("%s: point %d mounted and readable in %v", c.name, c.gen, pc.Ready)
		rerr := func() error {
			got, err := hashFile(disk)
			if err != nil {
				return err
			}
			pc.Equal = got == sums[c.gen]
			if pc.Mounted, err = readFigures(disk, opts.Size, opts.Runtime, opts.Seed); err != nil {
				return err
			}
			pc.Copy, err = readFigures(filepath.Join(restored, "disk"), opts.Size, opts.Runtime, opts.Seed)
			return err
		}()
		uout, uerr := exec.Command(opts.Drfs, "points", "umount", mnt).CombinedOutput()
		werr := cmd.Wait()
		switch {
		case rerr != nil:
			return nil, rerr
		case uerr != nil:
			return nil, fmt.Errorf("drfs points umount: %v\n%s", uerr, uout)
		case werr != nil:
			return nil, fmt.Errorf("drfs points mount %s: %v\n%s", c.point, werr, stderr.Bytes())
		}
		logf("%s: mounted %.0f MB/s, %.0f IOPS; restored copy %.0f MB/s, %.0f IOPS", c.name,
			pc.Mounted.SeqMBps, pc.Mounted.RandIOPS, pc.Copy.SeqMBps, pc.Copy.RandIOPS)
		rep.Cases = append(rep.Cases, pc)
		os.RemoveAll(restored)
	}
	return rep, nil
}

// dropCaches empties the page cache (as root; best effort).
func dropCaches() {
	exec.Command("sync").Run()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}

// waitReadable waits until the first byte of path can be read.
func waitReadable(ctx context.Context, path string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	b := make([]byte, 1)
	for {
		f, err := os.Open(path)
		if err == nil {
			_, err = f.ReadAt(b, 0)
			f.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not readable after %v: %v", limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// readFigures reads path sequentially in 1 MiB reads (for at most runtime)
// and then at random 4 KiB-aligned offsets for runtime, each from a cold
// page cache.
func readFigures(path string, size int64, runtime time.Duration, seed uint64) (ReadFigures, error) {
	var rf ReadFigures
	f, err := os.Open(path)
	if err != nil {
		return rf, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	dropCaches()
	var n int64
	t0 := time.Now()
	for n < size && time.Since(t0) < runtime {
		m, err := f.ReadAt(buf, n)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return rf, err
		}
	}
	rf.SeqMBps = float64(n) / 1e6 / time.Since(t0).Seconds()

	dropCaches()
	rng := rand.New(rand.NewPCG(seed, 99))
	blocks := size / 4096
	var ops int
	t0 = time.Now()
	for time.Since(t0) < runtime {
		if _, err := f.ReadAt(buf[:4096], rng.Int64N(blocks)*4096); err != nil && err != io.EOF {
			return rf, err
		}
		ops++
	}
	rf.RandIOPS = float64(ops) / time.Since(t0).Seconds()
	return rf, nil
}

// WriteTable prints the report.
func (r *PointsMountReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "points mount of a %d MiB disk, %.1f%% of its blocks changed per generation, %d generations; scratch on %s (%s), %d CPUs, kernel %s\n",
		r.Size>>20, r.Churn*100, r.Generations, r.Machine.FSType, r.Machine.FSSource, r.Machine.CPUs, r.Machine.Kernel)
	fmt.Fprintf(w, "building the replica and its points took %v; reads from a cold page cache, %v each\n\n", r.BuildTime.Round(time.Millisecond), r.Runtime)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "point\tback\tready\tequal\tseq MB/s mounted\trestored copy\tratio\t4K rand IOPS mounted\trestored copy\tratio\t")
	for _, c := range r.Cases {
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%.0f\t%.0f\t%.2f×\t%.0f\t%.0f\t%.2f×\t\n", c.Name, c.Back, c.Ready.Round(time.Millisecond), c.Equal,
			c.Mounted.SeqMBps, c.Copy.SeqMBps, c.Mounted.SeqMBps/max(c.Copy.SeqMBps, 1e-9),
			c.Mounted.RandIOPS, c.Copy.RandIOPS, c.Mounted.RandIOPS/max(c.Copy.RandIOPS, 1e-9))
	}
	return tw.Flush()
}
