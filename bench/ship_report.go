package bench

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteTable prints the report for people: per workload and case the rate,
// its ratio to the plain copy, to the scattered writes and to the log read,
// the bytes on the wire, CPU time and peak memory of both processes.
func (r *ShipReport) WriteTable(w io.Writer) error {
	rounds := ""
	if r.Rounds > 1 {
		rounds = fmt.Sprintf("; median of %d rounds", r.Rounds)
	}
	m := r.Machine
	fmt.Fprintf(w, "one frozen generation per workload, shipped from a change log%s\n", rounds)
	fmt.Fprintf(w, "machine: %d CPUs, %s RAM, Linux %s, scratch directory on %s (%s), %s; load average %.1f to %.1f\n",
		m.CPUs, sizeString(m.MemTotal), m.Kernel, m.FSType, m.FSSource, m.GoVersion, r.LoadMin, r.LoadMax)
	server := "drfs target serve in a child process"
	if r.Server != "child" {
		server = "remote server in the benchmark's process (its CPU and memory count there)"
	}
	fmt.Fprintf(w, "plain copy: %s; remote: %s, %s over loopback, mutual TLS\n\n", r.Copy, server, r.TLS)

	for _, wl := range r.Workloads {
		fmt.Fprintf(w, "%s: %s: %s of data", wl.Workload, wl.Description, sizeString(wl.Bytes))
		if wl.ZeroBlocks > 0 {
			fmt.Fprintf(w, ", %.0f%% of it in all-zero 4 KiB blocks", 100*float64(wl.ZeroBlocks)*4096/float64(wl.Bytes))
		}
		fmt.Fprintf(w, "; written to the log in %.1fs, dropped in %v\n", wl.Fill.Seconds(), wl.Drop.Round(time.Millisecond))
	}
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tcase\tMB/s\tvs cp\tvs scatter\tvs log read\twire\tLZ4 ratio\tstage s\tcommit s\tCPU s\tother CPU s\tpeak RSS\tother peak RSS\t")
	for _, wl := range r.Workloads {
		cp, read, sc := wl.Case(CaseCopy), wl.Case(CaseLogRead), wl.Case(CaseScatter)
		for _, c := range wl.Cases {
			wire, lz4, stage, commit := "", "", "", ""
			if c.WireBytes > 0 {
				wire, lz4 = mib(c.WireBytes), fmt.Sprintf("%.3f", c.Ratio())
				stage, commit = fmt.Sprintf("%.2f", c.Stage.Seconds()), fmt.Sprintf("%.2f", c.Commit.Seconds())
			}
			other, otherRSS := "", ""
			if c.ChildCPU > 0 {
				other = fmt.Sprintf("%.2f", c.ChildCPU.Seconds())
			}
			if c.ChildPeakRSS > 0 {
				otherRSS = mib(c.ChildPeakRSS)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\t\n",
				wl.Workload, c.Case, figure(c.MBps()),
				ratio(c.MBps(), cp.MBps()), ratio(c.MBps(), sc.MBps()), ratio(c.MBps(), read.MBps()),
				wire, lz4, stage, commit, c.CPU.Seconds(), other, mib(c.PeakRSS), otherRSS)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nscatter: the generation's bytes written at their places in a new sparse file of the disk's size, then fsync: the floor of a store that keeps a disk image.")
	fmt.Fprintln(w, "other: cp for the cp case, the server for the remote case. Peak RSS of the first round.")
	if r.Rounds > 1 {
		for _, base := range []string{CaseCopy, CaseScatter} {
			fmt.Fprintf(w, "\nvs %s in each round:\n", base)
			for _, wl := range r.Workloads {
				b := wl.Case(base)
				for _, name := range []string{CaseDirstore, CaseRemote} {
					c := wl.Case(name)
					if c == nil || b == nil || len(c.Rounds) != len(b.Rounds) {
						continue
					}
					fmt.Fprintf(w, "  %s %s:", wl.Workload, name)
					for i := range c.Rounds {
						fmt.Fprintf(w, " %s", ratio(c.Rounds[i].MBps(), b.Rounds[i].MBps()))
					}
					fmt.Fprintln(w)
				}
			}
		}
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
