package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/drfs-project/drfs/internal/control"
	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/orchestrator"
)

// The agent's control socket speaks JSON over HTTP on a unix socket that
// only root can open:
//
//	GET  /v1/vms[?vm=NAME]         []VMView: every VM of the source
//	POST /v1/protect               ProtectRequest → ProtectAnswer: the enable-protection job, or the settings changed
//	POST /v1/unprotect?vm=NAME     UnprotectResult: what was removed and kept
//	POST /v1/resume?vm=NAME        a VM stopped by a permanent error runs again
//	POST /v1/resync?vm=NAME        every disk compared with the replica, now
//	POST /v1/failover              FailoverRequest → the planned failover's job
//	POST /v1/failover/cancel?vm=NAME  the source replicates again
//	POST /v1/commit?vm=NAME        the failover is final
//	POST /v1/reprotect             ReprotectRequest: reverse replication set up
//	POST /v1/failback?vm=NAME      the recovery site's last point written back
//	GET  /v1/jobs[?vm=NAME]        []orchestrator.Job, oldest first
//	GET  /v1/jobs/ID               one job
//
// An error is a 4xx or 5xx status with the message as the body.

// VMView is one VM as drfs status shows it.
type VMView struct {
	orchestrator.Status
	Describe  string `json:"state_text"`
	Target    string `json:"target,omitempty"`
	Interval  string `json:"interval,omitempty"`
	Retention string `json:"retention,omitempty"`
	MaxPoints int    `json:"max_points,omitempty"`
	// AppHook and AppEvery: the application-consistency hook, if any.
	AppHook   string            `json:"app_consistent_hook,omitempty"`
	AppEvery  string            `json:"app_consistent_every,omitempty"`
	RPO       float64           `json:"rpo_seconds"` // age of the newest consistent point; -1 before the first
	Disks     []string          `json:"disks"`
	LogBytes  int64             `json:"log_bytes"`
	Pending   int               `json:"pending_generations"`
	BytesSent uint64            `json:"bytes_sent"`
	Job       *orchestrator.Job `json:"job,omitempty"` // the unfinished job, if any
	// SnapshotBytes: the space the before-images of the initial
	// replication's snapshot take, while it exists.
	SnapshotBytes int64 `json:"snapshot_bytes,omitempty"`
	// AppHookError: why the last application-consistency hook failed.
	AppHookError string `json:"app_consistent_error,omitempty"`
	// StateDir is the agent's state directory, which drfs resync, drfs
	// log and drfs rotate take to reach the agent's mount.
	StateDir string `json:"state_dir,omitempty"`
	// StateFull: the state directory is full (health says why).
	StateFull bool `json:"state_dir_full,omitempty"`
}

// UnprotectResult is what drfs unprotect removed and what it kept.
type UnprotectResult struct {
	VM     string `json:"vm"`
	Was    string `json:"was"` // the state it was in, in words
	Target string `json:"target"`
	// GenerationsDropped and BytesDropped are what its change log held.
	GenerationsDropped int   `json:"generations_dropped"`
	BytesDropped       int64 `json:"bytes_dropped"`
	// PointsKept are its recovery points on the target, which stay: 0 when
	// nothing was sent to it yet, -1 when the target did not say.
	PointsKept int `json:"points_kept"`
}

// String says it in one line.
func (r UnprotectResult) String() string {
	kept := "nothing was sent to it yet"
	switch {
	case r.PointsKept > 0:
		kept = fmt.Sprintf("its %d recovery point(s) there are kept; drfs restore still reads them", r.PointsKept)
	case r.PointsKept < 0:
		kept = "its recovery points there are kept"
	}
	return fmt.Sprintf("%s unprotected (it was %s): replication to %s stopped; dropped %d generation(s), %s, of its change log; %s",
		r.VM, r.Was, r.Target, r.GenerationsDropped, units.Bytes(r.BytesDropped), kept)
}

// views returns every VM of the source and every protected one, by name;
// only vm if it is not empty.
func (a *agent) views(vm string) []VMView {
	now := a.clock.Now()
	logStatus := map[string]map[string]int64{}
	for _, st := range a.log.Status() {
		m := map[string]int64{}
		for _, d := range st.Disks {
			m[d.Name] = d.LogBytes
		}
		logStatus[st.Name] = m
	}
	names := a.vmNames()
	for _, p := range a.protections() {
		if !slices.Contains(names, p.name) {
			names = append(names, p.name)
		}
	}
	slices.Sort(names)
	space := a.log.Space()
	var out []VMView
	for _, name := range names {
		if vm != "" && name != vm {
			continue
		}
		v := VMView{RPO: -1, StateDir: a.cfg.State}
		disks, _ := a.disksOf(name)
		for d := range disks {
			v.Disks = append(v.Disks, d)
		}
		slices.Sort(v.Disks)
		if p := a.protection(name); p != nil {
			p.mu.Lock()
			v.Status = p.mu.vm.Status(now)
			v.Describe = p.mu.vm.Describe()
			pol := p.mu.vm.Policy()
			v.Interval, v.Retention, v.MaxPoints = units.FormatDuration(pol.Interval), units.FormatDuration(pol.Retention), pol.MaxPoints
			if p.mu.over.AppHook != "" {
				v.AppHook, v.AppEvery = p.mu.over.AppHook, units.FormatDuration(p.mu.over.AppEvery)
			}
			v.AppHookError = p.mu.appErr
			if p.mu.snap != nil {
				v.SnapshotBytes = p.mu.snap.Bytes()
			}
			p.mu.Unlock()
			v.Target = p.target
			for _, b := range logStatus[name] {
				v.LogBytes += b
			}
			if r := p.replication(); r != nil {
				if st, ok := r.loop.State(name); ok {
					v.Pending, v.BytesSent = st.Pending, st.WireBytes
				}
			}
			if !v.NewestPoint.IsZero() {
				v.RPO = now.Sub(v.NewestPoint).Seconds()
			}
			if space.Full && v.State.Replicating() {
				// The log cannot keep the VM's changes: its disks are
				// flagged as they change, and no consistent point is made
				// until space comes back and they are resynchronized.
				v.Health = orchestrator.Health{Level: orchestrator.Critical, Reason: space.FullReason()}
			}
			v.StateFull = space.Full
			if j, ok := a.jobs.Active(name); ok {
				v.Job = &j
			}
		} else {
			v.Status = orchestrator.NewVM(name, a.cfg.PolicyFor(name)).Status(now)
			v.Describe = string(orchestrator.Unprotected)
		}
		out = append(out, v)
	}
	return out
}

// serveAPI serves the agent's control socket at path.
func (a *agent) serveAPI(path string) (*http.Server, error) {
	ln, err := control.Listen(path, "stop that agent first, or give --socket")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/vms", func(w http.ResponseWriter, r *http.Request) {
		vm := r.URL.Query().Get("vm")
		v := a.views(vm)
		if vm != "" && len(v) == 0 {
			httpError(w, http.StatusNotFound, fmt.Errorf("unknown VM %q: not in %s and not protected (VMs there: %s)", vm, a.cfg.Source, orNone(a.vmNames())))
			return
		}
		writeJSON(w, v)
	})
	mux.HandleFunc("POST /v1/protect", func(w http.ResponseWriter, r *http.Request) {
		var req ProtectRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		if p := a.protection(req.VM); p != nil && req.Target != "" && req.Target != p.target {
			// Protected already, to another target: moved in place.
			job, msg, err := a.retarget(p, req)
			if err != nil {
				httpError(w, http.StatusConflict, err)
				return
			}
			writeJSON(w, ProtectAnswer{Job: job, Changed: msg})
			return
		}
		if p := a.protection(req.VM); p != nil {
			// Protected already: the settings given change in place.
			msg, err := a.changeSettings(p, req)
			if err != nil {
				httpError(w, http.StatusConflict, err)
				return
			}
			writeJSON(w, ProtectAnswer{Changed: msg})
			return
		}
		job, err := a.protect(req)
		if err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, ProtectAnswer{Job: job})
	})
	mux.HandleFunc("POST /v1/unprotect", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.unprotect(r.URL.Query().Get("vm"))
		if err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, res)
	})
	mux.HandleFunc("POST /v1/resume", func(w http.ResponseWriter, r *http.Request) {
		if err := a.resume(r.URL.Query().Get("vm")); err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, "resumed")
	})
	mux.HandleFunc("POST /v1/resync", func(w http.ResponseWriter, r *http.Request) {
		disks, err := a.resyncNow(r.URL.Query().Get("vm"))
		if err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, disks)
	})
	mux.HandleFunc("POST /v1/failover", func(w http.ResponseWriter, r *http.Request) {
		var req FailoverRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		job, err := a.plannedFailover(r.Context(), req)
		if err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, job)
	})
	mux.HandleFunc("POST /v1/failover/cancel", func(w http.ResponseWriter, r *http.Request) {
		if err := a.cancelFailover(r.URL.Query().Get("vm")); err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, "cancelled")
	})
	mux.HandleFunc("POST /v1/commit", func(w http.ResponseWriter, r *http.Request) {
		msg, err := a.commitFailover(r.Context(), r.URL.Query().Get("vm"))
		if err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, msg)
	})
	mux.HandleFunc("POST /v1/reprotect", func(w http.ResponseWriter, r *http.Request) {
		var req ReprotectRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		msg, err := a.reprotect(r.Context(), req)
		if err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, msg)
	})
	mux.HandleFunc("POST /v1/failback", func(w http.ResponseWriter, r *http.Request) {
		msg, err := a.failback(r.Context(), r.URL.Query().Get("vm"))
		if err != nil {
			httpError(w, http.StatusConflict, err)
			return
		}
		writeJSON(w, msg)
	})
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.jobs.List(r.URL.Query().Get("vm")))
	})
	mux.HandleFunc("GET /v1/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
		if err != nil {
			httpError(w, http.StatusBadRequest, fmt.Errorf("job id %q is not a number", r.PathValue("id")))
			return
		}
		j, ok := a.jobs.Get(id)
		if !ok {
			httpError(w, http.StatusNotFound, fmt.Errorf("no job %d (drfs jobs --all lists them)", id))
			return
		}
		writeJSON(w, j)
	})
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.Serve(ln)
	return s, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	http.Error(w, err.Error(), code)
}
