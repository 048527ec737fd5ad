package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/drfs-project/drfs/internal/clock"
	"sync"
	"testing"
	"time"
)

// Many agents' goroutines drive their own jobs while others list and
// persist the registry (run with -race).
func TestJobsConcurrent(t *testing.T) {
	c := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	r := NewJobs(c)
	const vms, rounds = 16, 20
	var wg sync.WaitGroup
	for i := range vms {
		wg.Go(func() {
			vm := fmt.Sprintf("vm%d", i)
			for n := range rounds {
				j, err := r.Add(JobResync, vm)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := r.Add(JobCommit, vm); err == nil {
					t.Errorf("%s: a second unfinished job was queued", vm)
				}
				if _, err := r.Start(j.ID); err != nil {
					t.Error(err)
				}
				for p := 0; p <= 100; p += 25 {
					if _, err := r.Progress(j.ID, p, "comparing"); err != nil {
						t.Error(err)
					}
				}
				if n%2 == 0 {
					_, err = r.Succeed(j.ID, "")
				} else {
					_, err = r.Fail(j.ID, errors.New("network"))
				}
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range rounds {
				if _, err := json.Marshal(r); err != nil {
					t.Error(err)
				}
				r.List("")
				r.Active("vm1")
				c.Advance(time.Second)
			}
		})
	}
	wg.Wait()
	jobs := r.List("")
	if len(jobs) != vms*rounds {
		t.Fatalf("%d jobs, want %d", len(jobs), vms*rounds)
	}
	seen := map[uint64]bool{}
	for _, j := range jobs {
		if seen[j.ID] || !j.State.Done() {
			t.Fatalf("job %+v: duplicate id or unfinished", j)
		}
		seen[j.ID] = true
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	r2 := NewJobs(c)
	if err := json.Unmarshal(data, r2); err != nil {
		t.Fatal(err)
	}
	if j, err := r2.Add(JobFailback, "vm0"); err != nil || j.ID != vms*rounds+1 {
		t.Fatalf("after reload, the next job is %+v, %v", j, err)
	}
}

func TestJobsErrors(t *testing.T) {
	r := NewJobs(clock.NewFake(time.Time{}))
	if _, err := r.Start(7); !errors.Is(err, ErrNoJob) {
		t.Fatalf("Start of an unknown job: %v", err)
	}
	j, _ := r.Add(JobFailover, "vm1")
	if _, err := r.Fail(j.ID, nil); err == nil {
		t.Fatal("Fail with a nil error succeeded")
	}
	if _, ok := r.Get(j.ID); !ok {
		t.Fatal("Get lost the job")
	}
}
