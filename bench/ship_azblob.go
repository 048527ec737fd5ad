package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drfs-project/drfs/target/azblob"
)

// The Azure Blob cases of the ship benchmark ("drfs bench ship --target
// azblob://..."): the same frozen generations as RunShip, shipped to an
// Azure Blob store (Stage, then Commit: page writes, snapshot, manifest),
// against the same bytes uploaded as one block blob in the same round.

// Cases of RunShipAzblob.
const (
	// CaseBlockBlob uploads the generation's bytes (the payload file) as
	// one block blob, 4 MiB blocks in parallel: the baseline.
	CaseBlockBlob = "block blob"
	// CaseAzblob ships the generation to an Azure Blob store.
	CaseAzblob = "azblob"
)

// DefaultAzblobVariants are the URL parameters of the azblob cases after
// the one the target URL gives: fewer writes in flight, and no gaps bridged
// (only adjacent blocks coalesced).
var DefaultAzblobVariants = []string{"parallel=1", "gap=0"}

// ShipAzblobConfig configures RunShipAzblob. Of the ShipConfig, Dir, Size,
// Rounds, Workloads (random-4k and extents-1m if nil), Ext4From,
// CPUProfile, Verify and Progress apply.
type ShipAzblobConfig struct {
	ShipConfig
	// Targets are the stores' URLs, azblob://ACCOUNT/CONTAINER[/PREFIX][?...],
	// one azblob case each (the block blob goes to the first); the
	// credentials come from the environment. Every case works under a new
	// prefix inside its URL and deletes what it wrote.
	Targets []string
	// Variants are further azblob cases on the first target, each a set of
	// URL parameters that override its own (such as "parallel=1" or
	// "gap=0&parallel=8"); nil means DefaultAzblobVariants.
	Variants []string
}

// ShipAzblobReport is the outcome of RunShipAzblob.
type ShipAzblobReport struct {
	Size    int64   `json:"size"`
	Rounds  int     `json:"rounds"`
	Machine Machine `json:"machine"`
	// Endpoint is the target's account and container (no credentials).
	Endpoint  string                     `json:"endpoint"`
	LoadMin   float64                    `json:"load_min"`
	LoadMax   float64                    `json:"load_max"`
	Workloads []ShipAzblobWorkloadReport `json:"workloads"`
}

// ShipAzblobWorkloadReport is what the cases did with one generation.
type ShipAzblobWorkloadReport struct {
	Workload    string        `json:"workload"`
	Description string        `json:"description"`
	DiskSize    int64         `json:"disk_size"`
	Bytes       int64         `json:"bytes"`
	Extents     int           `json:"extents"`
	Fill        time.Duration `json:"fill_ns"`
	// Cases: the block blob, then the azblob cases; each its median round.
	Cases []AzblobShipCase `json:"cases"`
}

// AzblobShipCase is one case: ShipCase's figures, the store's URL
// parameters and its request counters over the ship.
type AzblobShipCase struct {
	ShipCase
	Params string       `json:"params,omitempty"`
	Stats  azblob.Stats `json:"stats"`
	// Rounds holds every round when there were several.
	AllRounds []AzblobShipCase `json:"all_rounds,omitempty"`
}

// CommitMBps is the generation's data bytes per second of Commit alone.
func (c AzblobShipCase) CommitMBps() float64 {
	if c.Commit <= 0 {
		return 0
	}
	return float64(c.Bytes) / 1e6 / c.Commit.Seconds()
}

// RunShipAzblob measures, for each workload, shipping one frozen generation
// to an Azure Blob store, against uploading its bytes as one block blob.
func RunShipAzblob(ctx context.Context, cfg ShipAzblobConfig) (*ShipAzblobReport, error) {
	if cfg.Size < 1<<20 || cfg.Size%(1<<20) != 0 {
		return nil, fmt.Errorf("ship benchmark: size %d is not a positive multiple of 1 MiB", cfg.Size)
	}
	var targets []*url.URL
	for _, t := range cfg.Targets {
		u, err := url.Parse(t)
		if err != nil || u.Scheme != "azblob" {
			return nil, fmt.Errorf("ship benchmark: --target %q: want azblob://ACCOUNT/CONTAINER[/PREFIX][?endpoint=URL]", t)
		}
		targets = append(targets, u)
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("ship benchmark: no azblob target")
	}
	base := targets[0]
	cfg.Rounds = max(cfg.Rounds, 1)
	if cfg.Workloads == nil {
		cfg.Workloads = []string{ShipRandom4K, ShipExtents1M}
	}
	for _, w := range cfg.Workloads {
		if !slices.Contains(DefaultShipWorkloads, w) {
			return nil, fmt.Errorf("ship benchmark: unknown workload %q (known: %s)", w, strings.Join(DefaultShipWorkloads, ", "))
		}
	}
	if cfg.Variants == nil {
		cfg.Variants = DefaultAzblobVariants
	}
	// The azblob cases: each target as given, then the variants of the
	// first.
	var cases []azblobCaseSpec
	for _, t := range targets {
		cases = append(cases, azblobCaseSpec{base: t, params: showParams(t)})
	}
	for _, p := range cfg.Variants {
		if _, err := url.ParseQuery(p); err != nil {
			return nil, fmt.Errorf("ship benchmark: variant %q: %w", p, err)
		}
		cases = append(cases, azblobCaseSpec{base: base, extra: p, params: p})
	}
	if cfg.Ext4From == "" {
		cfg.Ext4From = DefaultExt4Tree
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if err := checkShipSpace(cfg.Dir, cfg.Size); err != nil {
		return nil, err
	}
	scratch, err := os.MkdirTemp(cfg.Dir, "drfs-bench-ship-")
	if err != nil {
		return nil, fmt.Errorf("ship benchmark: scratch directory: %w", err)
	}
	defer os.RemoveAll(scratch)
	var nonce [4]byte
	rand.Read(nonce[:])
	run := "drfs-bench-" + hex.EncodeToString(nonce[:])

	rep := &ShipAzblobReport{
		Size: cfg.Size, Rounds: cfg.Rounds, Machine: describeMachine(scratch),
		Endpoint: base.Host + base.Path, LoadMin: -1,
	}
	if ep := base.Query().Get("endpoint"); ep != "" {
		rep.Endpoint += " at " + ep
	}
	for _, w := range cfg.Workloads {
		wr, err := runAzblobWorkload(ctx, cfg, rep, run, cases, w, filepath.Join(scratch, w))
		if err != nil {
			return rep, fmt.Errorf("%s: %w", w, err)
		}
		rep.Workloads = append(rep.Workloads, *wr)
	}
	return rep, nil
}

// azblobCaseSpec is one azblob case: a target with extra URL parameters.
type azblobCaseSpec struct {
	base   *url.URL
	extra  string // URL parameters over base's
	params string // what the report shows
}

// showParams lists a target's URL parameters that tune the store.
func showParams(u *url.URL) string {
	q := u.Query()
	var out []string
	for _, k := range []string{"parallel", "gap"} {
		if v := q.Get(k); v != "" {
			out = append(out, k+"="+v)
		}
	}
	return strings.Join(out, "&")
}

func runAzblobWorkload(ctx context.Context, cfg ShipAzblobConfig, rep *ShipAzblobReport, run string, cases []azblobCaseSpec, workload, dir string) (_ *ShipAzblobWorkloadReport, err error) {
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = rerr
		}
	}()
	g, err := makeGeneration(ctx, cfg.ShipConfig, workload, dir)
	if err != nil {
		return nil, err
	}
	defer g.close()
	fmt.Fprintf(cfg.Progress, "%s: %s; written to the change log in %.1fs\n", workload, g.description, g.fill.Seconds())
	wr := &ShipAzblobWorkloadReport{
		Workload: workload, Description: g.description, DiskSize: g.diskSize,
		Bytes: g.bytes, Extents: len(g.spans), Fill: g.fill,
	}
	names := make([]azblobCaseSpec, 1+len(cases))
	names[0] = azblobCaseSpec{base: cases[0].base}
	copy(names[1:], cases)
	rounds := make([][]AzblobShipCase, len(names))
	for round := range cfg.Rounds {
		load := loadAverage()
		if rep.LoadMin < 0 || load < rep.LoadMin {
			rep.LoadMin = load
		}
		rep.LoadMax = max(rep.LoadMax, load)
		for i, spec := range names {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			name := CaseAzblob
			if i == 0 {
				name = CaseBlockBlob
			}
			p := spec.params
			r := shipRun{workload: workload, name: name, round: round, rounds: cfg.Rounds > 1}
			u := caseURL(spec.base, fmt.Sprintf("%s/%s/r%d-c%d", run, workload, round, i), spec.extra)
			var c AzblobShipCase
			if i == 0 {
				c, err = blockBlobCase(ctx, g, u)
			} else {
				c, err = azblobCase(ctx, cfg, g, r, u)
			}
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", r.label(), p, err)
			}
			c.Params, c.Load = p, load
			rounds[i] = append(rounds[i], c)
			line := fmt.Sprintf("%s: %-10s %-22s %8.1f MB/s  %6.2fs", r, name, p, c.MBps(), c.Elapsed.Seconds())
			if i > 0 {
				line += fmt.Sprintf("  commit %.2fs: %d page writes (%s), %d gap reads, %d clears",
					c.Commit.Seconds(), c.Stats.PageWrites, sizeString(c.Stats.WriteBytes), c.Stats.GapReads, c.Stats.Clears)
			}
			fmt.Fprintln(cfg.Progress, line)
		}
	}
	for i := range names {
		wr.Cases = append(wr.Cases, medianAzblobCase(rounds[i]))
	}
	return wr, nil
}

// caseURL is the target with sub appended to its prefix and the
// parameters of params set.
func caseURL(base *url.URL, sub, params string) string {
	u := *base
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + sub
	q := u.Query()
	extra, _ := url.ParseQuery(params)
	for k, v := range extra {
		q[k] = v
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// blockBlobCase uploads the payload file as one block blob, as many
// blocks in flight as the target's parallel (8 if unset).
func blockBlobCase(ctx context.Context, g *shipGen, u string) (AzblobShipCase, error) {
	st, err := azblob.New(u, azblob.Options{})
	if err != nil {
		return AzblobShipCase{}, err
	}
	defer st.DeleteAll(context.WithoutCancel(ctx))
	if err := evict(g.payload); err != nil {
		return AzblobShipCase{}, err
	}
	f, err := os.Open(g.payload)
	if err != nil {
		return AzblobShipCase{}, err
	}
	defer f.Close()
	m := startMeter()
	err = st.UploadBlockBlob(ctx, "payload", f, 0)
	c := AzblobShipCase{ShipCase: m.stop(CaseBlockBlob, g.bytes)}
	return c, err
}

// azblobCase ships the generation to a new store at u.
func azblobCase(ctx context.Context, cfg ShipAzblobConfig, g *shipGen, r shipRun, u string) (AzblobShipCase, error) {
	st, err := azblob.New(u, azblob.Options{})
	if err != nil {
		return AzblobShipCase{}, err
	}
	defer st.DeleteAll(context.WithoutCancel(ctx))
	sc, err := ship(ctx, cfg.ShipConfig, g, r, st)
	c := AzblobShipCase{ShipCase: sc, Stats: st.Stats()}
	if err != nil {
		return c, err
	}
	if cfg.Verify {
		if err := verifyReplica(ctx, st, g); err != nil {
			return c, err
		}
	}
	return c, nil
}

// medianAzblobCase is the median round by MB/s (the lower middle of an
// even count).
func medianAzblobCase(rounds []AzblobShipCase) AzblobShipCase {
	if len(rounds) == 1 {
		return rounds[0]
	}
	sorted := slices.Clone(rounds)
	slices.SortFunc(sorted, func(a, b AzblobShipCase) int {
		switch x, y := a.MBps(), b.MBps(); {
		case x < y:
			return -1
		case x > y:
			return 1
		}
		return 0
	})
	m := sorted[(len(sorted)-1)/2]
	m.AllRounds = rounds
	return m
}

// WriteTable prints the report for people: per workload and case the rate
// of the whole ship and of Commit alone, each against the block blob, and
// the requests Commit made.
func (r *ShipAzblobReport) WriteTable(w io.Writer) error {
	rounds := ""
	if r.Rounds > 1 {
		rounds = fmt.Sprintf("; median of %d rounds", r.Rounds)
	}
	m := r.Machine
	fmt.Fprintf(w, "one frozen generation per workload, shipped from a change log to Azure Blob (%s)%s\n", r.Endpoint, rounds)
	fmt.Fprintf(w, "machine: %d CPUs, %s RAM, Linux %s, %s; load average %.1f to %.1f\n",
		m.CPUs, sizeString(m.MemTotal), m.Kernel, m.GoVersion, r.LoadMin, r.LoadMax)
	fmt.Fprintf(w, "block blob: the generation's bytes as one block blob, 4 MiB blocks; azblob: Stage (the stream as a staging block blob), then Commit (read back, page writes, snapshot, manifest)\n\n")
	for _, wl := range r.Workloads {
		fmt.Fprintf(w, "%s: %s: %s of data in %d writes; written to the log in %.1fs\n",
			wl.Workload, wl.Description, sizeString(wl.Bytes), wl.Extents, wl.Fill.Seconds())
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tcase\tparameters\tMB/s\tvs block blob\tstage s\tcommit s\tcommit MB/s\tcommit vs block blob\tPut Page\twritten\tgap reads\tclears\t")
	for _, wl := range r.Workloads {
		bb := wl.Cases[0]
		for i, c := range wl.Cases {
			if i == 0 {
				fmt.Fprintf(tw, "%s\t%s\t\t%s\t1.00×\t\t\t\t\t\t\t\t\t\n", wl.Workload, c.Case, figure(c.MBps()))
				continue
			}
			params := c.Params
			if params == "" {
				params = "(defaults)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%s\t%s\t%d\t%s\t%d\t%d\t\n",
				wl.Workload, c.Case, params, figure(c.MBps()), ratio(c.MBps(), bb.MBps()),
				c.Stage.Seconds(), c.Commit.Seconds(), figure(c.CommitMBps()), ratio(c.CommitMBps(), bb.MBps()),
				c.Stats.PageWrites, mib(c.Stats.WriteBytes), c.Stats.GapReads, c.Stats.Clears)
		}
	}
	return tw.Flush()
}
