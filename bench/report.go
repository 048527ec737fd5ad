package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints the report for people: the figures of every workload
// on every target with drfs's ratios, mean latencies, peak memory, and what
// the change log wrote.
func (r *MountReport) WriteTable(w io.Writer) error {
	engine := r.Engine
	if r.Machine.FioVersion != "" {
		engine = r.Machine.FioVersion + " " + strings.TrimPrefix(engine, "fio ")
	}
	rotate := "never rotated"
	if r.Rotate > 0 {
		rotate = "rotated every " + r.Rotate.String()
	}
	rounds := ""
	if r.Rounds > 1 {
		rounds = fmt.Sprintf("; median of %d rounds", r.Rounds)
	}
	fmt.Fprintf(w, "engine %s; file %s; %v per job%s; change log %s, tracking block %s\n",
		engine, sizeString(r.Size), r.Runtime, rounds, rotate, sizeString(int64(r.BlockSize)))
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs, %s RAM, Linux %s, scratch directory on %s (%s), %s\n\n",
		m.CPUs, sizeString(m.MemTotal), m.Kernel, m.FSType, m.FSSource, m.GoVersion)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	ratios := r.ratios()
	fmt.Fprint(tw, "workload\tunit\t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t", t.Target)
	}
	for _, q := range ratios {
		fmt.Fprintf(tw, "%s/%s\t", q[0].Target, q[1].Target)
	}
	fmt.Fprintln(tw)
	for i, wl := range r.Workloads {
		unit, value := "IOPS", Measure.IOPS
		if wl.Sequential() {
			unit, value = "MB/s", Measure.MBps
		}
		fmt.Fprintf(tw, "%s\t%s\t", wl.String(), unit)
		for _, t := range r.Targets {
			fmt.Fprintf(tw, "%s\t", figure(value(t.Jobs[i])))
		}
		for _, q := range ratios {
			fmt.Fprintf(tw, "%s\t", ratio(value(q[0].Jobs[i]), value(q[1].Jobs[i])))
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw)

	fmt.Fprint(tw, "mean latency\t\t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t", t.Target)
	}
	fmt.Fprintln(tw)
	for i, wl := range r.Workloads {
		fmt.Fprintf(tw, "%s\tµs\t", wl.String())
		for _, t := range r.Targets {
			fmt.Fprintf(tw, "%.1f\t", float64(t.Jobs[i].MeanLatency)/float64(time.Microsecond))
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw)

	label := "memory (peaks)"
	if r.Rounds > 1 {
		label += ", first round"
	}
	fmt.Fprintf(tw, "%s\t\t", label)
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t", t.Target)
	}
	fmt.Fprintln(tw)
	for _, row := range []struct {
		name  string
		bytes func(TargetReport) int64
	}{
		{"RSS of the serving process, write jobs", func(t TargetReport) int64 { return t.PeakRSSWrite }},
		{"RSS of the serving process, read jobs", func(t TargetReport) int64 { return t.PeakRSSRead }},
		{"page cache of its files, write jobs", func(t TargetReport) int64 { return t.PageCacheWrite }},
		{"page cache of its files, cold read jobs", func(t TargetReport) int64 { return t.PageCacheRead }},
	} {
		fmt.Fprintf(tw, "%s\tMiB\t", row.name)
		for _, t := range r.Targets {
			fmt.Fprintf(tw, "%.1f\t", float64(row.bytes(t))/(1<<20))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	for _, t := range r.Targets {
		if t.Target != TargetDRFS {
			continue
		}
		fmt.Fprintf(w, "\ndrfs change log: the write jobs wrote %s, the log %s (%.2f× the data); %d rotations, %d generations dropped; %s of log on disk at the end\n",
			sizeString(t.WorkloadWritten), sizeString(t.LogWritten), safeDiv(float64(t.LogWritten), float64(t.WorkloadWritten)),
			t.Rotations, t.Dropped, sizeString(t.LogOnDisk))
	}
	fmt.Fprintln(w, "\n(cold): the job starts with the file's pages dropped from the page cache; (warm): with the backing file read once in full.")
	fmt.Fprintln(w, "RSS: this process for the in-process targets (native is the harness alone), passthrough_hp's own process; page cache: mincore(2) of the backing file and, for drfs, the change log, while the cold jobs run.")
	return nil
}

// ratios are the pairs of targets whose ratio the table shows, numerator
// first: every target to native, then drfs to every other FUSE target.
func (r *MountReport) ratios() [][2]*TargetReport {
	var q [][2]*TargetReport
	if native := r.target(TargetNative); native != nil {
		for i := range r.Targets {
			if t := &r.Targets[i]; t != native {
				q = append(q, [2]*TargetReport{t, native})
			}
		}
	}
	if drfs := r.target(TargetDRFS); drfs != nil {
		for i := range r.Targets {
			if t := &r.Targets[i]; t != drfs && t.Target != TargetNative {
				q = append(q, [2]*TargetReport{drfs, t})
			}
		}
	}
	return q
}

func (r *MountReport) target(name string) *TargetReport {
	for i := range r.Targets {
		if r.Targets[i].Target == name {
			return &r.Targets[i]
		}
	}
	return nil
}

// figure prints a rate with three significant digits or more.
func figure(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func safeDiv(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
