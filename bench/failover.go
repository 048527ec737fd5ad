package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/zeebo/xxh3"

	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
)

// FailoverOptions configure RunFailover.
type FailoverOptions struct {
	Dir         string  // scratch directory; the benchmark works in a new directory inside it
	Size        int64   // disk size
	Churn       float64 // fraction of the 4 KiB blocks each generation changes
	Generations int     // generations after the initial copy; the older case goes this far back
	Seed        uint64
	Drfs        string    // the drfs binary that fails over (the command a user runs)
	Progress    io.Writer // or nil
}

// FailoverCase is one failover measured.
type FailoverCase struct {
	Name    string        `json:"name"`
	Point   uint64        `json:"point"`
	Back    int           `json:"generations_back"`
	Wall    time.Duration `json:"wall"` // the whole command: start, open the store, materialise
	RTO     time.Duration `json:"rto"`  // materialising, as the command reports it
	Written string        `json:"written"`
	Method  string        `json:"method"` // reflink or sparse copy
	Equal   bool          `json:"equal"`  // the disk equals the source at that point
}

// FailoverReport is the result of RunFailover.
type FailoverReport struct {
	Size        int64          `json:"size"`
	Churn       float64        `json:"churn"`
	Generations int            `json:"generations"`
	BuildTime   time.Duration  `json:"build_time"` // making the replica and its points
	Cases       []FailoverCase `json:"cases"`
	Failback    *FailbackCase  `json:"failback,omitempty"`
	Machine     Machine        `json:"machine"`
}

// FailbackCase is what reprotect sends back to the original site after the
// failed-over disk ran at the recovery site for one generation's churn:
// the ranges resync.Diff finds between that disk and the original site's
// copy (the latest point), as drfs reprotect finds them, and the checksum
// traffic of finding them over the remote protocol. drfs failback then
// sends the same ranges the other way.
type FailbackCase struct {
	DiskSize  int64         `json:"disk_size"`
	Changed   int64         `json:"changed_bytes"` // written at the recovery site
	Ranges    int64         `json:"range_bytes"`   // the differing ranges found
	SumBytes  int64         `json:"checksum_bytes"`
	Wire      int64         `json:"wire_bytes"` // ranges + checksums
	Duration  time.Duration `json:"duration"`   // the comparison
	AllCaught bool          `json:"all_caught"` // every changed block is in a range
}

// RunFailover builds a directory store holding a VM of one disk of
// opts.Size (random data in 3/4, a hole after), then opts.Generations
// generations each changing opts.Churn of its 4 KiB blocks at random, and
// times `drfs failover --type unplanned` to the latest point and to the
// point opts.Generations back, checking each materialised disk against
// the source as it was.
func RunFailover(ctx context.Context, opts FailoverOptions) (*FailoverReport, error) {
	if opts.Generations < 1 || opts.Churn <= 0 || opts.Churn > 1 || opts.Size < 1<<20 {
		return nil, fmt.Errorf("bench failover: want generations >= 1, 0 < churn <= 1, size >= 1 MiB")
	}
	work, err := os.MkdirTemp(opts.Dir, "drfs-bench-failover-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	logf := func(format string, a ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, format+"\n", a...)
		}
	}
	rep := &FailoverReport{Size: opts.Size, Churn: opts.Churn, Generations: opts.Generations, Machine: describeMachine(work)}
	storeDir := filepath.Join(work, "target")
	start := time.Now()
	rng := rand.New(rand.NewPCG(opts.Seed, 7))
	sums, last, err := buildPoints(ctx, storeDir, filepath.Join(work, "source.img"), opts.Size, opts.Churn, opts.Generations, rng, logf)
	if err != nil {
		return nil, err
	}
	rep.BuildTime = time.Since(start)
	blocks := opts.Size / 4096
	changed := max(1, int64(float64(blocks)*opts.Churn))

	older := last - uint64(opts.Generations)
	for _, c := range []struct {
		name  string
		point string
		gen   uint64
	}{
		{"latest", "latest", last},
		{fmt.Sprintf("%d generations back", opts.Generations), fmt.Sprint(older), older},
	} {
		dir := filepath.Join(work, "failover-"+c.point)
		// Cold caches as after a real disaster would be; best effort.
		os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
		t0 := time.Now()
		out, err := exec.CommandContext(ctx, opts.Drfs, "failover", "vm", "--type", "unplanned", "--target", "dir://"+storeDir, "--point", c.point, "--to", dir).CombinedOutput()
		wall := time.Since(t0)
		if err != nil {
			return nil, fmt.Errorf("drfs failover to %s: %v\n%s", c.point, err, out)
		}
		fc := FailoverCase{Name: c.name, Point: c.gen, Back: int(last - c.gen), Wall: wall}
		if m := regexp.MustCompile(`materialised in (\S+) \(RTO\), (.+?) written, ([a-z ]+)`).FindSubmatch(out); m != nil {
			fc.RTO, _ = time.ParseDuration(string(m[1]))
			fc.Written, fc.Method = string(m[2]), string(m[3])
		}
		got, err := hashFile(filepath.Join(dir, "disk"))
		if err != nil {
			return nil, err
		}
		fc.Equal = got == sums[c.gen]
		logf("failover to %s: %v (RTO %v), %s", c.name, wall, fc.RTO, fc.Method)
		rep.Cases = append(rep.Cases, fc)
		if c.gen == last {
			if rep.Failback, err = failback(ctx, storeDir, filepath.Join(dir, "disk"), opts.Size, last, rng, blocks, changed); err != nil {
				return nil, err
			}
			logf("failback: %d of %d bytes changed at the recovery site, %d bytes on the wire", rep.Failback.Changed, opts.Size, rep.Failback.Wire)
		}
		os.RemoveAll(dir)
	}
	return rep, nil
}

// buildPoints builds a directory store in storeDir holding a VM "vm" of
// one disk "disk" of size (random data in 3/4, a hole after, written first
// to src), then generations generations each changing churn of its 4 KiB
// blocks at random. It returns the source's hash at the newest point (last)
// and at the oldest (last-generations), for checking what is read back.
func buildPoints(ctx context.Context, storeDir, src string, size int64, churnFrac float64, generations int, rng *rand.Rand, logf func(string, ...any)) (map[uint64]xxh3.Uint128, uint64, error) {
	if err := writeImage(src, size, rng); err != nil {
		return nil, 0, err
	}
	store, err := dirstore.Open(storeDir, dirstore.Options{})
	if err != nil {
		return nil, 0, err
	}
	defer store.Close() // the commands measured open the store themselves
	logf("initial copy of %d MiB", size>>20)
	if err := commitFile(ctx, store, src, size, nil, 1); err != nil {
		return nil, 0, err
	}
	sums := map[uint64]xxh3.Uint128{}
	if sums[1], err = hashFile(src); err != nil {
		return nil, 0, err
	}
	blocks := size / 4096
	changed := max(1, int64(float64(blocks)*churnFrac))
	last := uint64(1 + generations)
	for gen := uint64(2); gen <= last; gen++ {
		ranges, err := churn(src, rng, blocks, changed)
		if err != nil {
			return nil, 0, err
		}
		if err := commitFile(ctx, store, src, size, ranges, gen); err != nil {
			return nil, 0, err
		}
		if gen == last || gen == last-uint64(generations) {
			if sums[gen], err = hashFile(src); err != nil {
				return nil, 0, err
			}
		}
		logf("generation %d: %d blocks changed", gen, changed)
	}
	exec.Command("sync").Run()
	return sums, last, nil
}

// failback changes n random blocks of the failed-over disk at path (the VM
// running at the recovery site) and measures what reprotect finds to send
// back: resync.Diff of the disk against point gen of the store, the
// original site's copy.
func failback(ctx context.Context, storeDir, path string, size int64, gen uint64, rng *rand.Rand, blocks, n int64) (*FailbackCase, error) {
	changed, err := churn(path, rng, blocks, n)
	if err != nil {
		return nil, err
	}
	store, err := dirstore.Open(storeDir, dirstore.Options{})
	if err != nil {
		return nil, err
	}
	defer store.Close()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res, err := resync.Diff(ctx, f, size, store, "vm", gen, "disk", resync.Options{})
	if err != nil {
		return nil, err
	}
	fc := &FailbackCase{DiskSize: size, Duration: res.Duration, AllCaught: true}
	for _, e := range changed {
		fc.Changed += e.Len
		i, _ := slices.BinarySearchFunc(res.Ranges, e.Off, func(r target.Extent, off int64) int {
			if r.Off+r.Len <= off {
				return -1
			}
			if r.Off > off {
				return 1
			}
			return 0
		})
		if i == len(res.Ranges) || res.Ranges[i].Off > e.Off || res.Ranges[i].Off+res.Ranges[i].Len < e.Off+e.Len {
			fc.AllCaught = false
		}
	}
	for _, r := range res.Ranges {
		fc.Ranges += r.Len
	}
	fc.SumBytes = res.SumBytesUp + res.SumBytesDown
	fc.Wire = fc.Ranges + fc.SumBytes
	return fc, nil
}

// churn overwrites n distinct random 4 KiB blocks of the file with random
// data and returns them as sorted ranges.
func churn(path string, rng *rand.Rand, blocks, n int64) ([]target.Extent, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pick := map[int64]bool{}
	for int64(len(pick)) < n {
		pick[rng.Int64N(blocks)] = true
	}
	idx := make([]int64, 0, n)
	for b := range pick {
		idx = append(idx, b)
	}
	slices.Sort(idx)
	buf := make([]byte, 4096)
	var out []target.Extent
	for _, b := range idx {
		fillRandom(buf, rng.Uint64())
		if _, err := f.WriteAt(buf, b*4096); err != nil {
			return nil, err
		}
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == b*4096 {
			out[k].Len += 4096
		} else {
			out = append(out, target.Extent{Off: b * 4096, Len: 4096})
		}
	}
	return out, f.Sync()
}

func hashFile(path string) (xxh3.Uint128, error) {
	f, err := os.Open(path)
	if err != nil {
		return xxh3.Uint128{}, err
	}
	defer f.Close()
	h := xxh3.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 4<<20)); err != nil {
		return xxh3.Uint128{}, err
	}
	return h.Sum128(), nil
}

// WriteTable prints the report.
func (r *FailoverReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "failover of a %d MiB disk, %.1f%% of its blocks changed per generation, %d generations; scratch on %s (%s), %d CPUs, kernel %s\n",
		r.Size>>20, r.Churn*100, r.Generations, r.Machine.FSType, r.Machine.FSSource, r.Machine.CPUs, r.Machine.Kernel)
	fmt.Fprintf(w, "building the replica and its points took %v\n\n", r.BuildTime.Round(time.Millisecond))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "point\tback\tcommand\tRTO (materialise)\twritten\tmethod\tequal\t")
	for _, c := range r.Cases {
		fmt.Fprintf(tw, "%s\t%d\t%v\t%v\t%s\t%s\t%v\t\n", c.Name, c.Back, c.Wall.Round(time.Millisecond), c.RTO, c.Written, c.Method, c.Equal)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if fb := r.Failback; fb != nil {
		fmt.Fprintf(w, "\nfailback after %s changed at the recovery site: reprotect sends %s of ranges + %s of checksums = %s, %.3f%% of the %s disk (%.2f× the changed bytes; compared in %v; every changed block caught: %v)\n",
			mib(fb.Changed), mib(fb.Ranges), mib(fb.SumBytes), mib(fb.Wire), 100*float64(fb.Wire)/float64(fb.DiskSize), mib(fb.DiskSize),
			float64(fb.Wire)/float64(max(1, fb.Changed)), fb.Duration.Round(time.Millisecond), fb.AllCaught)
	}
	return nil
}
