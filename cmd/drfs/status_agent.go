package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/orchestrator"
)

// agentStatus prints the protection of every VM of the agent, or of vm;
// with check, its exit code then says the worst health among them.
func agentStatus(w io.Writer, socket, vm string, asJSON, check bool) error {
	views, err := agent.NewClient(socket).VMs(vm)
	if err != nil {
		return err
	}
	if asJSON {
		err = printJSON(views)
	} else {
		err = printAgentStatus(w, views)
	}
	if err != nil || !check {
		return err
	}
	code := 0
	for _, v := range views {
		switch v.Health.Level {
		case orchestrator.Critical:
			code = exitCrit
		case orchestrator.Warning:
			code = max(code, exitWarning)
		}
	}
	if code != 0 {
		return exitCode{code: code}
	}
	return nil
}

// printAgentStatus prints views as a table.
func printAgentStatus(w io.Writer, views []agent.VMView) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tSTATE\tHEALTH\tRPO\tLOG\tSENT\tNEXT RETRY\tDETAIL")
	for _, v := range views {
		rpo, retry := "-", "-"
		if v.RPO >= 0 {
			rpo = time.Duration(v.RPO * float64(time.Second)).Round(time.Second).String()
		}
		if !v.NextRetry.IsZero() {
			retry = v.NextRetry.Local().Format(time.TimeOnly)
		}
		detail := v.Health.Reason
		if v.SnapshotBytes > 0 {
			detail += fmt.Sprintf(" (snapshot %s)", bytesString(v.SnapshotBytes))
		}
		if detail == "" && v.AppHookError != "" {
			detail = v.AppHookError
		}
		if detail == "" && v.Job != nil {
			detail = fmt.Sprintf("job %d %s %d%% %s", v.Job.ID, v.Job.Kind, v.Job.Progress, v.Job.Message)
		}
		if detail == "" && v.ResyncReason != "" {
			detail = "resync: " + v.ResyncReason
		}
		if detail == "" && v.Target != "" {
			detail = "every " + v.Interval + " to " + v.Target + ", points kept " + v.Retention
			if v.MaxPoints > 0 {
				detail += fmt.Sprintf(" (at most %d)", v.MaxPoints)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.VM, v.Describe, v.Health.Level, rpo,
			bytesString(v.LogBytes), bytesString(int64(v.BytesSent)), retry, detail)
	}
	return tw.Flush()
}
