package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/drfs-project/drfs/internal/control"
)

type statusCmd struct {
	Of    string `arg:"" optional:"" name:"vm|statedir" help:"A VM of the agent (all of them if left out), or the state directory of a running drfs mount."`
	JSON  bool   `help:"Print JSON."`
	Check bool   `help:"Exit 3 if a VM's health is Warning, 4 if one is Critical, 0 if all are Normal (for monitoring scripts). For a mount: 4 when its state directory is full or a VM's replication stopped, 3 while one is retried."`
	socketFlag

	State string `kong:"-"`
}

func (c *statusCmd) Run() error {
	if st, err := os.Stat(c.Of); c.Of == "" || err != nil || !st.IsDir() {
		return agentStatus(os.Stdout, c.Socket, c.Of, c.JSON, c.Check)
	}
	c.State = c.Of
	return c.mountStatus()
}

// mountStatus prints the replication of the drfs mount whose state
// directory is c.State.
func (c *statusCmd) mountStatus() error {
	st, err := control.NewClient(filepath.Join(c.State, control.SocketName)).Replication()
	if err != nil {
		return fmt.Errorf("status of %s: %w", c.State, err)
	}
	if c.JSON {
		if err := printJSON(st); err != nil {
			return err
		}
		return c.checkMount(st)
	}
	if len(st) == 0 {
		fmt.Println("nothing replicated yet (is the mount running with --target?)")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tTARGET\tLAST POINT\tSHIPPED\tRPO\tPENDING\tSENT\tSTATE")
	for _, r := range st {
		state := "ok"
		switch {
		case r.StateFull != "":
			state = "CRITICAL: " + r.StateFull
		case r.Stopped:
			state = "STOPPED: " + r.LastError
		case r.LastError != "":
			state = fmt.Sprintf("retrying (%d failures): %s", r.Failures, r.LastError)
		}
		if rs := resyncSummary(r.Resync); rs != "" {
			if state == "ok" {
				state = rs
			} else {
				state += "; " + rs
			}
		}
		shipped := "never"
		if !r.LastShipped.IsZero() {
			shipped = time.Since(r.LastShipped).Round(time.Second).String() + " ago"
		}
		// The RPO is the age of the newest consistent point: a fuzzy
		// point after it does not make the VM's protection any younger.
		rpo := "-"
		if !r.LastConsistentCut.IsZero() {
			rpo = fmt.Sprintf("%v (point %d)", time.Since(r.LastConsistentCut).Round(time.Second), r.LastConsistent)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", r.VM, r.Target, r.LastGeneration, shipped, rpo, r.Pending, bytesString(int64(r.BytesSent)), state)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range st {
		for _, d := range r.Resync {
			fmt.Printf("%s/%s: resync %s; flagged %s: %s\n", r.VM, d.Disk, resyncWhen(d, time.Now()),
				d.Since.Local().Format(time.RFC3339), d.Reason)
		}
	}
	return c.checkMount(st)
}

// checkMount returns, with --check, the exit code of a mount's status: 4
// (Critical) when its state directory is full or a VM's replication
// stopped, 3 (Warning) while one is retried.
func (c *statusCmd) checkMount(st []control.Replication) error {
	if !c.Check {
		return nil
	}
	code := 0
	for _, r := range st {
		switch {
		case r.StateFull != "" || r.Stopped:
			code = exitCrit
		case r.LastError != "":
			code = max(code, exitWarning)
		}
	}
	if code != 0 {
		return exitCode{code: code}
	}
	return nil
}

// resyncSummary sums up the resync state of a VM's disks for its STATE.
func resyncSummary(disks []control.DiskResync) string {
	running, waiting := 0, 0
	for _, d := range disks {
		if d.Running {
			running++
		} else {
			waiting++
		}
	}
	switch {
	case running > 0:
		return fmt.Sprintf("resynchronizing %d disk(s)", running)
	case waiting > 0:
		return fmt.Sprintf("resync required (%d disk(s)): %s", waiting, resyncWhen(disks[0], time.Now()))
	}
	return ""
}

// resyncWhen says when the resync of a disk runs.
func resyncWhen(d control.DiskResync, now time.Time) string {
	switch {
	case d.Running:
		return "running (it resumes from its cursor if cut)"
	case d.Now:
		return "starts at the next replication round (asked for now)"
	case d.WindowOpens.IsZero():
		return "waits: the resync window is never; drfs resync --now runs it"
	case !d.WindowOpens.After(now):
		return "starts at the next replication round (the resync window is open)"
	default:
		return "waits for the resync window, which opens " + d.WindowOpens.Local().Format("Mon 2006-01-02 15:04 MST") + " (drfs resync --now runs it at once)"
	}
}
