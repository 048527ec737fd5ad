package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/orchestrator"
)

type jobsCmd struct {
	List  jobsListCmd  `cmd:"" default:"withargs" help:"List the agent's jobs (the default)."`
	Watch jobsWatchCmd `cmd:"" help:"Follow a job with a progress bar until it ends."`
}

type jobsListCmd struct {
	All  bool   `help:"Also the jobs that ended more than an hour ago."`
	VM   string `help:"Only the jobs of this VM."`
	JSON bool   `help:"Print JSON."`
	socketFlag
}

func (c *jobsListCmd) Run() error {
	jobs, err := agent.NewClient(c.Socket).Jobs(c.VM)
	if err != nil {
		return err
	}
	if !c.All {
		recent := jobs[:0]
		for _, j := range jobs {
			if !j.State.Done() || time.Since(j.Ended) < time.Hour {
				recent = append(recent, j)
			}
		}
		jobs = recent
	}
	if c.JSON {
		return printJSON(jobs)
	}
	if len(jobs) == 0 {
		fmt.Println("no jobs (drfs jobs --all lists the older ones)")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVM\tKIND\tSTATE\tPROGRESS\tSTARTED\tENDED\tMESSAGE")
	for _, j := range jobs {
		msg := j.Message
		if j.Error != "" {
			msg = "ERROR: " + j.Error
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d%%\t%s\t%s\t%s\n", j.ID, j.VM, j.Kind, j.State, j.Progress,
			clockTime(j.Started), clockTime(j.Ended), msg)
	}
	return tw.Flush()
}

func clockTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

type jobsWatchCmd struct {
	ID uint64 `arg:"" help:"Job id (from drfs jobs)."`
	socketFlag
}

func (c *jobsWatchCmd) Run() error {
	cl := agent.NewClient(c.Socket)
	bar := newProgressBar(os.Stdout)
	defer bar.done()
	for {
		j, err := cl.Job(c.ID)
		if err != nil {
			return err
		}
		if j.State.Done() {
			bar.done()
			switch j.State {
			case orchestrator.JobSucceeded:
				fmt.Printf("%s succeeded in %v: %s\n", j, j.Ended.Sub(j.Started).Round(time.Second), j.Message)
				return nil
			default:
				return fmt.Errorf("%s %s: %s", j, j.State, j.Error)
			}
		}
		bar.show(fmt.Sprintf("job %d %s %s", j.ID, j.Kind, j.VM), j.Progress, j.Message)
		time.Sleep(500 * time.Millisecond)
	}
}

// progressBar draws one line that it rewrites on a terminal; elsewhere it
// prints a line each time the text changes.
type progressBar struct {
	w    io.Writer
	tty  bool
	last string
}

func newProgressBar(f *os.File) *progressBar {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return &progressBar{w: f, tty: err == nil}
}

func (b *progressBar) show(label string, percent int, msg string) {
	const width = 30
	filled := max(0, min(width, percent*width/100))
	line := fmt.Sprintf("%s [%s%s] %3d%% %s", label, strings.Repeat("#", filled), strings.Repeat(".", width-filled), percent, msg)
	if line == b.last {
		return
	}
	b.last = line
	if b.tty {
		fmt.Fprintf(b.w, "\r\033[K%s", line)
	} else {
		fmt.Fprintln(b.w, line)
	}
}

// done ends the bar's line.
func (b *progressBar) done() {
	if b.tty && b.last != "" {
		fmt.Fprintln(b.w)
	}
	b.last = ""
}
