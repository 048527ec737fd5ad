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
	drfs, loop, native := r.target(TargetDRFS), r.target(TargetLoopback), r.target(TargetNative)
	ratios := drfs != nil
	fmt.Fprint(tw, "workload\tunit\t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t", t.Target)
	}
	if ratios && loop != nil {
		fmt.Fprint(tw, "drfs/loopback\t")
	}
	if ratios && native != nil {
		fmt.Fprint(tw, "drfs/native\t")
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
		if ratios && loop != nil {
			fmt.Fprintf(tw, "%s\t", ratio(value(drfs.Jobs[i]), value(loop.Jobs[i])))
		}
		if ratios && native != nil {
			fmt.Fprintf(tw, "%s\t", ratio(value(drfs.Jobs[i]), value(native.Jobs[i])))
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

	label := "peak RSS of the process"
	if r.Rounds > 1 {
		label += " (first round)"
	}
	fmt.Fprintf(tw, "%s\t\t", label)
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%s\t", t.Target)
	}
	fmt.Fprintln(tw)
	fmt.Fprint(tw, "during the write jobs\tMiB\t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%.1f\t", float64(t.PeakRSSWrite)/(1<<20))
	}
	fmt.Fprintln(tw)
	fmt.Fprint(tw, "during the read jobs\tMiB\t")
	for _, t := range r.Targets {
		fmt.Fprintf(tw, "%.1f\t", float64(t.PeakRSSRead)/(1<<20))
	}
	fmt.Fprintln(tw)
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
	return nil
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
