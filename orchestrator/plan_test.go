package orchestrator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPlanScripts runs the scripts in testdata/plan/, in the format of
// TestScripts (go test -rewrite rewrites them). Commands:
//
//	parse             the input lines are a plan file: its steps, or its errors
//	check VM...       the VMs of the last plan that are not among VM...
//	run [fail=N] [fail-vm=VM]  run the last plan, step N (or the failover of VM) failing
func TestPlanScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/plan/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata/plan: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) { runPlanScript(t, file) })
	}
}

func runPlanScript(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cases, trailer, err := parseScript(string(data))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var plan *Plan
	var out strings.Builder
	for _, c := range cases {
		var b strings.Builder
		if err := planCmd(&plan, c, &b); err != nil {
			fmt.Fprintf(&b, "error: %v\n", err)
		}
		got := b.String()
		for strings.Contains(got, "\n\n") {
			got = strings.ReplaceAll(got, "\n\n", "\n")
		}
		got = strings.TrimRight(got, "\n")
		if !*rewrite && got != c.want {
			t.Errorf("%s:%d: %s\n got:\n%s\nwant:\n%s", file, c.line, c.cmd, indent(got), indent(c.want))
		}
		out.WriteString(c.pre + c.cmd + "\n")
		for _, in := range c.input {
			out.WriteString(in + "\n")
		}
		out.WriteString("----\n" + got + "\n\n")
	}
	if *rewrite {
		text := strings.TrimRight(out.String()+trailer, "\n") + "\n"
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func planCmd(plan **Plan, c scriptCase, b *strings.Builder) error {
	args := strings.Fields(c.cmd)
	switch args[0] {
	case "parse":
		p, err := ParsePlan("plan.yaml", []byte(strings.Join(c.input, "\n")))
		if err != nil {
			for _, e := range unjoin(err) {
				var pe *PlanError
				if !errors.As(e, &pe) {
					return fmt.Errorf("not a *PlanError: %v", e)
				}
				fmt.Fprintln(b, e)
			}
			return nil
		}
		*plan = p
		fmt.Fprintf(b, "plan %s: %d groups, VMs %s\n", p.Name, len(p.Groups), strings.Join(p.VMs(), " "))
		for _, s := range p.Steps() {
			fmt.Fprintf(b, "%d. %s\n", s.N, p.Describe(s))
		}
	case "check":
		if *plan == nil {
			return errors.New("no plan parsed")
		}
		if err := (*plan).CheckVMs(args[1:]); err != nil {
			for _, e := range unjoin(err) {
				fmt.Fprintln(b, e)
			}
		} else {
			fmt.Fprintln(b, "ok")
		}
	case "run":
		if *plan == nil {
			return errors.New("no plan parsed")
		}
		failStep, failVM := 0, ""
		for _, a := range args[1:] {
			k, v, _ := strings.Cut(a, "=")
			switch k {
			case "fail":
				n, err := strconv.Atoi(v)
				if err != nil {
					return err
				}
				failStep = n
			case "fail-vm":
				failVM = v
			default:
				return fmt.Errorf("run: unknown argument %q", a)
			}
		}
		r := NewPlanRun(*plan)
		for {
			s, ok := r.Next()
			if !ok {
				fmt.Fprintf(b, "plan %s done: %s\n", (*plan).Name, strings.Join(r.Completed(), "; "))
				return nil
			}
			fmt.Fprintf(b, "[%d/%d] %s\n", s.N, r.Len(), (*plan).Describe(s))
			var err error
			switch s.Kind {
			case StepFailover:
				for _, vm := range s.VMs {
					if vm == failVM {
						err = errors.Join(err, fmt.Errorf("%s: no recovery point yet", vm))
						continue
					}
					r.Record("failed over " + vm)
				}
			case StepHook:
				if s.N == failStep {
					err = errors.New("exit status 3")
				} else {
					r.Record("ran " + s.Command)
				}
			case StepManual:
				r.Record("manual step done: " + s.Message)
			}
			if err == nil && s.N == failStep && s.Kind != StepHook {
				err = errors.New("injected failure")
			}
			if err != nil {
				f := r.Fail(err)
				fmt.Fprintln(b, f.Report())
				return nil
			}
			r.Done()
		}
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	return nil
}
