package orchestrator

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/drfs-project/drfs/internal/clock"
	"slices"
	"sync"
	"time"
)

// JobKind is what a job does.
type JobKind string

// The kinds of job: every long action of the lifecycle is one.
const (
	JobEnableProtection   JobKind = "enable-protection"
	JobInitialReplication JobKind = "initial-replication"
	JobFinalize           JobKind = "finalize"
	JobResync             JobKind = "resync"
	JobFailover           JobKind = "failover"
	JobCommit             JobKind = "commit"
	JobFailback           JobKind = "failback"
)

// JobKinds lists every kind.
var JobKinds = []JobKind{JobEnableProtection, JobInitialReplication, JobFinalize, JobResync, JobFailover, JobCommit, JobFailback}

// JobState is where a job is: queued → running → succeeded, failed or
// cancelled (a queued job may be cancelled too). A queued or running job
// may wait (for the resync window, say) and run again once it may.
type JobState string

// The states of a job.
const (
	JobQueued    JobState = "queued"
	JobRunning   JobState = "running"
	JobWaiting   JobState = "waiting"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
	JobCancelled JobState = "cancelled"
)

// Done reports whether the job has ended.
func (s JobState) Done() bool { return s == JobSucceeded || s == JobFailed || s == JobCancelled }

// Job is one long action on one VM, as drfs jobs lists it.
type Job struct {
	ID       uint64   `json:"id"`
	Kind     JobKind  `json:"kind"`
	VM       string   `json:"vm"`
	State    JobState `json:"state"`
	Progress int      `json:"progress"`          // percent, 0 to 100
	Message  string   `json:"message,omitempty"` // what it is doing, or did
	// Created is when it was queued; Started and Ended are zero until it
	// starts and ends.
	Created time.Time `json:"created"`
	Started time.Time `json:"started,omitzero"`
	Ended   time.Time `json:"ended,omitzero"`
	Error   string    `json:"error,omitempty"` // of a failed job, or why it was cancelled
}

func (j Job) String() string { return fmt.Sprintf("job %d (%s of %s)", j.ID, j.Kind, j.VM) }

// ErrNoJob is wrapped by the errors about an unknown job id.
var ErrNoJob = errors.New("no such job")

// Jobs is the registry of jobs: at most one unfinished job per VM (a VM's
// long actions run one after the other), finished ones kept until Prune.
// It is safe for concurrent use, and its JSON form is what the agent
// persists. Every method returns a copy of the job it changed.
type Jobs struct {
	clock clock.Clock
	mu    struct {
		sync.Mutex
		next uint64 // id of the next job
		jobs map[uint64]*Job
	}
}

// NewJobs returns an empty registry that stamps jobs with clk's time.
func NewJobs(clk clock.Clock) *Jobs {
	r := &Jobs{clock: clk}
	r.mu.next = 1
	r.mu.jobs = map[uint64]*Job{}
	return r
}

// Add queues a job of kind on vm. It fails if vm has an unfinished job.
func (r *Jobs) Add(kind JobKind, vm string) (Job, error) {
	if !slices.Contains(JobKinds, kind) {
		return Job{}, fmt.Errorf("unknown job kind %q", kind)
	}
	if vm == "" {
		return Job{}, errors.New("a job needs a vm")
	}
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if a := r.activeLocked(vm); a != nil {
		return Job{}, fmt.Errorf("cannot queue %s of %s: %s is %s; wait for it or cancel it", kind, vm, a, a.State)
	}
	j := &Job{ID: r.mu.next, Kind: kind, VM: vm, State: JobQueued, Created: now}
	r.mu.next++
	r.mu.jobs[j.ID] = j
	return *j, nil
}

// Start moves a queued or waiting job to running.
func (r *Jobs) Start(id uint64) (Job, error) {
	return r.update(id, "start", []JobState{JobQueued, JobWaiting}, func(j *Job, now time.Time) error {
		j.State = JobRunning
		if j.Started.IsZero() {
			j.Started = now
		}
		return nil
	})
}

// Wait marks a queued or running job as waiting, with why (what it waits
// for); its progress stays as it is. Start runs it again.
func (r *Jobs) Wait(id uint64, why string) (Job, error) {
	return r.update(id, "wait", []JobState{JobQueued, JobRunning, JobWaiting}, func(j *Job, _ time.Time) error {
		j.State, j.Message = JobWaiting, why
		return nil
	})
}

// Progress records how far a running job is (percent, 0 to 100) and what
// it is doing.
func (r *Jobs) Progress(id uint64, percent int, message string) (Job, error) {
	if percent < 0 || percent > 100 {
		return Job{}, fmt.Errorf("job %d: progress %d%% is out of range (0..100)", id, percent)
	}
	return r.update(id, "report progress of", []JobState{JobRunning}, func(j *Job, _ time.Time) error {
		j.Progress, j.Message = percent, message
		return nil
	})
}

// Succeed ends a running (or waiting) job well; message, if not empty, replaces its
// message.
func (r *Jobs) Succeed(id uint64, message string) (Job, error) {
	return r.update(id, "succeed", []JobState{JobRunning, JobWaiting}, func(j *Job, now time.Time) error {
		j.State, j.Ended, j.Progress = JobSucceeded, now, 100
		if message != "" {
			j.Message = message
		}
		return nil
	})
}

// Fail ends a running or waiting job with err.
func (r *Jobs) Fail(id uint64, err error) (Job, error) {
	if err == nil {
		return Job{}, fmt.Errorf("job %d: Fail with a nil error", id)
	}
	return r.update(id, "fail", []JobState{JobRunning, JobWaiting}, func(j *Job, now time.Time) error {
		j.State, j.Ended, j.Error = JobFailed, now, err.Error()
		return nil
	})
}

// Cancel ends a queued, waiting or running job; why says by whom or why.
// The caller stops the work itself.
func (r *Jobs) Cancel(id uint64, why string) (Job, error) {
	return r.update(id, "cancel", []JobState{JobQueued, JobWaiting, JobRunning}, func(j *Job, now time.Time) error {
		j.State, j.Ended, j.Error = JobCancelled, now, why
		return nil
	})
}

func (r *Jobs) update(id uint64, verb string, from []JobState, fn func(*Job, time.Time) error) (Job, error) {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	j := r.mu.jobs[id]
	if j == nil {
		return Job{}, fmt.Errorf("cannot %s job %d: %w", verb, id, ErrNoJob)
	}
	if !slices.Contains(from, j.State) {
		names := make([]string, len(from))
		for i, s := range from {
			names[i] = string(s)
		}
		return Job{}, fmt.Errorf("cannot %s %s: it is %s, not %s", verb, j, j.State, orList(names))
	}
	if err := fn(j, now); err != nil {
		return Job{}, err
	}
	return *j, nil
}

// Get returns the job of id.
func (r *Jobs) Get(id uint64) (Job, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if j := r.mu.jobs[id]; j != nil {
		return *j, true
	}
	return Job{}, false
}

// Active returns the unfinished job of vm, if any.
func (r *Jobs) Active(vm string) (Job, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if j := r.activeLocked(vm); j != nil {
		return *j, true
	}
	return Job{}, false
}

func (r *Jobs) activeLocked(vm string) *Job {
	for _, j := range r.mu.jobs {
		if j.VM == vm && !j.State.Done() {
			return j
		}
	}
	return nil
}

// List returns the jobs, oldest first; those of vm only if vm is not
// empty.
func (r *Jobs) List(vm string) []Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.listLocked(vm)
}

func (r *Jobs) listLocked(vm string) []Job {
	out := make([]Job, 0, len(r.mu.jobs))
	for _, j := range r.mu.jobs {
		if vm == "" || j.VM == vm {
			out = append(out, *j)
		}
	}
	slices.SortFunc(out, func(a, b Job) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Prune forgets the finished jobs that ended before before, and returns
// how many.
func (r *Jobs) Prune(before time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for id, j := range r.mu.jobs {
		if j.State.Done() && j.Ended.Before(before) {
			delete(r.mu.jobs, id)
			n++
		}
	}
	return n
}

// Interrupt fails every unfinished job with reason, as the agent does at
// start for the jobs a stop cut short, and returns them: the agent queues
// them again, or whatever follows from their VM's state.
func (r *Jobs) Interrupt(reason string) []Job {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Job
	for _, j := range r.listLocked("") {
		if !j.State.Done() {
			p := r.mu.jobs[j.ID]
			p.State, p.Ended, p.Error = JobFailed, now, reason
			out = append(out, *p)
		}
	}
	return out
}

// jobsFile is the JSON form of Jobs.
type jobsFile struct {
	Next uint64 `json:"next_id"`
	Jobs []Job  `json:"jobs"`
}

// MarshalJSON writes the registry: the next id and the jobs, oldest first.
func (r *Jobs) MarshalJSON() ([]byte, error) {
	r.mu.Lock()
	f := jobsFile{Next: r.mu.next, Jobs: r.listLocked("")}
	r.mu.Unlock()
	return json.Marshal(f)
}

// UnmarshalJSON replaces the registry's jobs with those of data, checked:
// known kinds and states, unique ids below the next id, at most one
// unfinished job per VM.
func (r *Jobs) UnmarshalJSON(data []byte) error {
	var f jobsFile
	if err := json.Unmarshal(data, &f); err != nil {
		return err
	}
	jobs := make(map[uint64]*Job, len(f.Jobs))
	active := map[string]uint64{}
	for i := range f.Jobs {
		j := &f.Jobs[i]
		switch {
		case j.ID == 0 || j.ID >= f.Next:
			return fmt.Errorf("jobs: job id %d is outside 1..%d", j.ID, max(f.Next, 1)-1)
		case jobs[j.ID] != nil:
			return fmt.Errorf("jobs: job id %d appears twice", j.ID)
		case !slices.Contains(JobKinds, j.Kind):
			return fmt.Errorf("jobs: job %d has an unknown kind %q", j.ID, j.Kind)
		case !j.State.Done() && j.State != JobQueued && j.State != JobRunning && j.State != JobWaiting:
			return fmt.Errorf("jobs: job %d has an unknown state %q", j.ID, j.State)
		case j.VM == "":
			return fmt.Errorf("jobs: job %d has no vm", j.ID)
		case j.Progress < 0 || j.Progress > 100:
			return fmt.Errorf("jobs: job %d has progress %d%%", j.ID, j.Progress)
		}
		if !j.State.Done() {
			if other, dup := active[j.VM]; dup {
				return fmt.Errorf("jobs: jobs %d and %d of %s are both unfinished", other, j.ID, j.VM)
			}
			active[j.VM] = j.ID
		}
		jobs[j.ID] = j
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mu.next, r.mu.jobs = max(f.Next, 1), jobs
	return nil
}
