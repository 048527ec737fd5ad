package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/tracker"
)

type logCmd struct {
	State string `arg:"" help:"State directory of the change log (as given to drfs mount --state)." type:"existingdir"`
	JSON  bool   `help:"Print JSON instead of a table."`
}

func (c *logCmd) Run() error {
	st, err := readStatus(c.State)
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(st)
	}
	printStatus(os.Stdout, st, resyncStates(c.State))
	return nil
}

// resyncStates asks a running mount when its flagged disks are
// resynchronized, by "vm\x00disk"; none if no mount replicates.
func resyncStates(state string) map[string]control.DiskResync {
	out := map[string]control.DiskResync{}
	repl, err := control.NewClient(filepath.Join(state, control.SocketName)).Replication()
	if err != nil {
		return out
	}
	for _, r := range repl {
		for _, d := range r.Resync {
			out[r.VM+"\x00"+d.Disk] = d
		}
	}
	return out
}

// readStatus asks the running mount, or reads the state directory when no
// mount holds it.
func readStatus(state string) ([]tracker.VMStatus, error) {
	st, err := control.NewClient(filepath.Join(state, control.SocketName)).Status()
	if !errors.Is(err, control.ErrNotRunning) {
		return st, err
	}
	log, err := tracker.Open(tracker.Options{Dir: state, ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer log.Close()
	if r := log.Recovered(); r.Pending {
		slog.Info(fmt.Sprintf("the process that had the change log open died without closing it; the next drfs start recovers it from its in-flight table (%d change(s) in flight), without resynchronizing the disks it does not show as flagged", r.InFlight))
	}
	if r := log.Recovered(); r.HostCrash && r.Pending {
		slog.Info(fmt.Sprintf("the host crashed while drfs ran; the next drfs start compares %d hot extent(s) (%s) with the target, as the activity log names them, instead of whole disks", r.HotExtents, bytesString(r.HotBytes)))
	}
	return log.Status(), nil
}

func printStatus(w io.Writer, vms []tracker.VMStatus, resync map[string]control.DiskResync) {
	if len(vms) == 0 {
		fmt.Fprintln(w, "no VMs in the change log yet")
		return
	}
	for i, vm := range vms {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "VM %s (active generation %d)\n", vm.Name, vm.Active)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  DISK\tSIZE\tLOG\tRESYNC")
		for _, d := range vm.Disks {
			rs, known := resync[vm.Name+"\x00"+d.Name]
			resync := "no"
			switch {
			case known && rs.Running:
				resync = "RUNNING: " + rs.Reason
			case d.Resync && tracker.IsHotReason(d.Reason):
				resync = fmt.Sprintf("%s (since %s)", d.Reason, d.Since.Format(time.RFC3339))
				if known {
					resync += "; " + resyncWhen(rs, time.Now())
				}
			case d.Resync:
				resync = fmt.Sprintf("REQUIRED since %s: %s", d.Since.Format(time.RFC3339), d.Reason)
				if known {
					resync += "; " + resyncWhen(rs, time.Now())
				}
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", d.Name, bytesString(d.Size), bytesString(d.LogBytes), resync)
		}
		tw.Flush()
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  GENERATION\tSTATE\tCREATED\tDISK\tBLOCKS\tZERO BLOCKS\tBYTES\tSIZE")
		for _, g := range vm.Generations {
			state := "active"
			if g.Frozen {
				state = "frozen"
			}
			if len(g.Disks) == 0 {
				fmt.Fprintf(tw, "  %d\t%s\t%s\t-\t0\t0\t0 B\t-\n", g.Gen, state, g.Created.Format(time.RFC3339))
			}
			for _, d := range g.Disks {
				fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", g.Gen, state, g.Created.Format(time.RFC3339),
					d.Disk, d.DataBlocks, d.ZeroBlocks, bytesString(d.Bytes), bytesString(d.Size))
			}
		}
		tw.Flush()
	}
}

// bytesString prints n in binary units.
func bytesString(n int64) string { return units.Bytes(n) }
