package orchestrator

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/drfs-project/drfs/target"
)

// Plan is a recovery plan: the VMs of an application in groups that fail
// over one after the other, the VMs of a group in parallel, with actions
// before and after each group. Its file format is YAML (docs/failover.md):
//
//	name: shop
//	groups:
//	  - name: databases
//	    vms: [db1, db2]
//	    post:
//	      - run: ./check-db.sh
//	      - manual: Check the databases, then run drfs plan continue shop.
//	  - name: web
//	    vms: [web1]
//
// Groups have no dependencies but their order: a group runs after every
// group above it, so a plan cannot hold a cycle.
type Plan struct {
	File   string
	Name   string
	Groups []PlanGroup
}

// PlanGroup is one group of a plan.
type PlanGroup struct {
	Name string // "group N" when the file names none
	Line int
	VMs  []string
	Pre  []PlanAction // before the group's VMs fail over
	Post []PlanAction // after all of them have
}

// PlanAction is a hook or a manual step: exactly one of Run and Manual is set.
type PlanAction struct {
	Line int
	// Run is a shell command (sh -c); a non-zero exit stops the plan.
	Run string
	// Manual is a message for the operator; the plan waits for
	// drfs plan continue.
	Manual string
}

// PlanError is one mistake in a plan file, at a line (0: the whole file).
type PlanError struct {
	File string
	Line int
	Msg  string
}

func (e *PlanError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// ParsePlan parses and checks a plan file; file names it in errors. It
// reports every mistake it finds, each a *PlanError, joined with
// errors.Join: unknown keys, a missing or bad name, no groups, a group
// without VMs, a VM in two places, an action that is not exactly one of
// run or manual.
func ParsePlan(file string, data []byte) (*Plan, error) {
	p := &planParser{plan: &Plan{File: file}, seen: map[string]int{}}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &PlanError{File: file, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if len(doc.Content) == 0 {
		return nil, &PlanError{File: file, Msg: "empty plan: give a name and groups"}
	}
	p.top(doc.Content[0])
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return p.plan, nil
}

type planParser struct {
	plan *Plan
	errs []error
	seen map[string]int // VM → line of its first mention
}

func (p *planParser) errorf(line int, format string, a ...any) {
	p.errs = append(p.errs, &PlanError{File: p.plan.File, Line: line, Msg: fmt.Sprintf(format, a...)})
}

// mapping calls fn for each key of a mapping node, refusing keys not in
// keys and keys given twice.
func (p *planParser) mapping(n *yaml.Node, what string, keys []string, fn func(key string, v *yaml.Node)) bool {
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, "%s: want a mapping with keys %s", what, strings.Join(keys, ", "))
		return false
	}
	got := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case !slices.Contains(keys, k.Value):
			p.errorf(k.Line, "unknown key %q in %s (known: %s)", k.Value, what, strings.Join(keys, ", "))
		case got[k.Value]:
			p.errorf(k.Line, "key %q given twice in %s", k.Value, what)
		default:
			got[k.Value] = true
			fn(k.Value, v)
		}
	}
	return true
}

func (p *planParser) scalar(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errorf(n.Line, "%s: want a string", what)
		return "", false
	}
	return n.Value, true
}

func (p *planParser) top(n *yaml.Node) {
	named, grouped := false, false
	ok := p.mapping(n, "the plan", []string{"name", "groups"}, func(key string, v *yaml.Node) {
		switch key {
		case "name":
			named = true
			if s, ok := p.scalar(v, "name"); ok {
				if err := CheckPlanName(s); err != nil {
					p.errorf(v.Line, "%v", err)
				}
				p.plan.Name = s
			}
		case "groups":
			grouped = true
			if v.Kind != yaml.SequenceNode {
				p.errorf(v.Line, "groups: want a list of groups")
				return
			}
			for _, g := range v.Content {
				p.group(g)
			}
		}
	})
	if !ok {
		return
	}
	if !named {
		p.errorf(n.Line, "the plan has no name")
	}
	if !grouped {
		p.errorf(n.Line, "the plan has no groups")
	}
}

func (p *planParser) group(n *yaml.Node) {
	g := PlanGroup{Line: n.Line}
	what := fmt.Sprintf("group %d", len(p.plan.Groups)+1)
	listed := 0 // VM entries, good or not
	p.mapping(n, what, []string{"name", "vms", "pre", "post"}, func(key string, v *yaml.Node) {
		switch key {
		case "name":
			g.Name, _ = p.scalar(v, what+" name")
		case "vms":
			if v.Kind != yaml.SequenceNode {
				p.errorf(v.Line, "%s: vms: want a list of VM names", what)
				return
			}
			listed = len(v.Content)
			for _, vn := range v.Content {
				vm, ok := p.scalar(vn, what+" VM")
				if !ok {
					continue
				}
				if err := target.CheckVM(vm); err != nil {
					p.errorf(vn.Line, "%s: %v", what, err)
					continue
				}
				if first, dup := p.seen[vm]; dup {
					p.errorf(vn.Line, "VM %s is in the plan twice (first at line %d): a VM fails over once", vm, first)
					continue
				}
				p.seen[vm] = vn.Line
				g.VMs = append(g.VMs, vm)
			}
		case "pre":
			g.Pre = p.actions(v, what+" pre")
		case "post":
			g.Post = p.actions(v, what+" post")
		}
	})
	if n.Kind != yaml.MappingNode {
		return
	}
	if listed == 0 {
		if g.Name == "" {
			p.errorf(n.Line, "%s has no VMs", what)
		} else {
			p.errorf(n.Line, "%s (%s) has no VMs", what, g.Name)
		}
	}
	if g.Name == "" {
		g.Name = what
	}
	p.plan.Groups = append(p.plan.Groups, g)
}

func (p *planParser) actions(n *yaml.Node, what string) []PlanAction {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n.Line, "%s: want a list of actions (- run: COMMAND or - manual: MESSAGE)", what)
		return nil
	}
	var out []PlanAction
	for _, an := range n.Content {
		a := PlanAction{Line: an.Line}
		bad := false // already reported
		p.mapping(an, what+" action", []string{"run", "manual"}, func(key string, v *yaml.Node) {
			s, ok := p.scalar(v, what+" "+key)
			if ok && strings.TrimSpace(s) == "" {
				p.errorf(v.Line, "%s: %s is empty", what, key)
				ok = false
			}
			if !ok {
				bad = true
				return
			}
			if key == "run" {
				a.Run = s
			} else {
				a.Manual = s
			}
		})
		if an.Kind != yaml.MappingNode || bad {
			continue
		}
		if (a.Run == "") == (a.Manual == "") {
			if a.Run != "" {
				p.errorf(an.Line, "%s: an action is either run or manual, not both", what)
			} else {
				p.errorf(an.Line, "%s: an action needs run: COMMAND or manual: MESSAGE", what)
			}
			continue
		}
		out = append(out, a)
	}
	return out
}

// CheckPlanName checks a plan's name: it names the plan's files in the
// state directory, so it is letters, digits, '.', '_' and '-', up to 64,
// not starting with '.'.
func CheckPlanName(s string) error {
	if s == "" || len(s) > 64 || s[0] == '.' || strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
	}) >= 0 {
		return fmt.Errorf("plan name %q: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'", s)
	}
	return nil
}

// VMs lists the plan's VMs in the order they fail over.
func (p *Plan) VMs() []string {
	var out []string
	for _, g := range p.Groups {
		out = append(out, g.VMs...)
	}
	return out
}

// CheckVMs reports, as *PlanErrors at the line of each group, the VMs of
// the plan that are not in known (the VMs a target holds).
func (p *Plan) CheckVMs(known []string) error {
	var errs []error
	for _, g := range p.Groups {
		for _, vm := range g.VMs {
			if !slices.Contains(known, vm) {
				errs = append(errs, &PlanError{File: p.File, Line: g.Line, Msg: fmt.Sprintf("%s: VM %s is not on the target", g.Name, vm)})
			}
		}
	}
	return errors.Join(errs...)
}

// StepKind is what a step of a plan does.
type StepKind string

const (
	StepHook     StepKind = "hook"     // run a command
	StepManual   StepKind = "manual"   // wait for the operator
	StepFailover StepKind = "failover" // fail the group's VMs over, in parallel
)

// PlanStep is one step of a plan, in the order Steps gives.
type PlanStep struct {
	N       int // 1-based
	Group   int // index into Plan.Groups
	Kind    StepKind
	Phase   string   // "pre" or "post" for actions
	Command string   // StepHook
	Message string   // StepManual
	VMs     []string // StepFailover
}

// Steps flattens the plan into the order it runs: for each group its pre
// actions, the failover of its VMs, its post actions.
func (p *Plan) Steps() []PlanStep {
	var out []PlanStep
	add := func(s PlanStep) {
		s.N = len(out) + 1
		out = append(out, s)
	}
	actions := func(gi int, phase string, as []PlanAction) {
		for _, a := range as {
			if a.Run != "" {
				add(PlanStep{Group: gi, Kind: StepHook, Phase: phase, Command: a.Run})
			} else {
				add(PlanStep{Group: gi, Kind: StepManual, Phase: phase, Message: a.Manual})
			}
		}
	}
	for gi, g := range p.Groups {
		actions(gi, "pre", g.Pre)
		add(PlanStep{Group: gi, Kind: StepFailover, VMs: g.VMs})
		actions(gi, "post", g.Post)
	}
	return out
}

// Describe says what step s of p does, in one line.
func (p *Plan) Describe(s PlanStep) string {
	g := p.Groups[s.Group].Name
	switch s.Kind {
	case StepHook:
		return fmt.Sprintf("%s: %s hook: %s", g, s.Phase, s.Command)
	case StepManual:
		return fmt.Sprintf("%s: %s manual step: %s", g, s.Phase, s.Message)
	}
	return fmt.Sprintf("%s: fail over %s", g, strings.Join(s.VMs, ", "))
}

// PlanRun follows one run of a plan: the steps done and the one that
// failed, for the report a stopped plan gives. Not safe for concurrent use.
type PlanRun struct {
	plan  *Plan
	steps []PlanStep
	next  int
	done  []string
}

// NewPlanRun starts following a run of p.
func NewPlanRun(p *Plan) *PlanRun { return &PlanRun{plan: p, steps: p.Steps()} }

// Next returns the next step to run, or false when the plan is through.
func (r *PlanRun) Next() (PlanStep, bool) {
	if r.next >= len(r.steps) {
		return PlanStep{}, false
	}
	return r.steps[r.next], true
}

// Len is the number of steps.
func (r *PlanRun) Len() int { return len(r.steps) }

// Record notes something done in the current step (a VM failed over, a
// hook run); the runner calls it for each part that succeeded, also in a
// step that fails.
func (r *PlanRun) Record(what string) {
	r.done = append(r.done, what)
}

// Done moves past the current step.
func (r *PlanRun) Done() { r.next++ }

// Completed lists what the run has done so far.
func (r *PlanRun) Completed() []string { return slices.Clone(r.done) }

// Fail ends the run at the current step with err, and returns the
// *PlanFailure that says so.
func (r *PlanRun) Fail(err error) *PlanFailure {
	s := r.steps[r.next]
	f := &PlanFailure{Plan: r.plan.Name, Step: s.N, Steps: len(r.steps), What: r.plan.Describe(s), Err: err, Done: slices.Clone(r.done)}
	for _, rest := range r.steps[r.next+1:] {
		f.NotRun = append(f.NotRun, r.plan.Describe(rest))
	}
	return f
}

// PlanFailure is a plan stopped by a failed step.
type PlanFailure struct {
	Plan        string
	Step, Steps int
	What        string
	Err         error
	Done        []string // what was done before and in the failed step
	NotRun      []string // the steps after it
}

// Error is one line; Report has the lists.
func (f *PlanFailure) Error() string {
	return fmt.Sprintf("plan %s stopped at step %d of %d (%s): %v", f.Plan, f.Step, f.Steps, f.What, f.Err)
}

func (f *PlanFailure) Unwrap() error { return f.Err }

// Report is the error line, what was done, and what was not run.
func (f *PlanFailure) Report() string {
	var b strings.Builder
	b.WriteString(f.Error() + "\n")
	if len(f.Done) == 0 {
		b.WriteString("done: nothing\n")
	} else {
		b.WriteString("done:\n")
		for _, d := range f.Done {
			b.WriteString("  " + d + "\n")
		}
	}
	if len(f.NotRun) > 0 {
		b.WriteString("not run:\n")
		for _, d := range f.NotRun {
			b.WriteString("  " + d + "\n")
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}
