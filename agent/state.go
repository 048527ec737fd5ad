package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/drfs-project/drfs/orchestrator"
)

// agentStateVersion is the version of the agent's state file.
const agentStateVersion = 1

// agentState is the agent's state file, STATE/agent/state.json: every
// protected VM with its lifecycle state, and the jobs.
type agentState struct {
	Version int                `json:"version"`
	VMs     []protectionRecord `json:"vms"`
	Jobs    *orchestrator.Jobs `json:"jobs"`
}

// protectionRecord is one protected VM in the state file.
type protectionRecord struct {
	Target string           `json:"target"`
	Policy Overrides        `json:"policy"`
	Status *orchestrator.VM `json:"status"`
	// Reverse: where the recovery site replicates back into.
	Reverse string `json:"reverse,omitempty"`
}

func agentStateFile(state string) string { return filepath.Join(state, "agent", "state.json") }

// load restores the protected VMs and the jobs of the state file, if there
// is one. Jobs a stop cut short are marked failed; the VMs' supervisors
// take their work up again.
func (a *agent) load() error {
	data, err := os.ReadFile(a.file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	st := agentState{Jobs: a.jobs}
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("agent state %s is damaged (%v): move it away to start with no VM protected", a.file, err)
	}
	if st.Version != agentStateVersion {
		return fmt.Errorf("agent state %s has version %d; this drfs reads version %d", a.file, st.Version, agentStateVersion)
	}
	for _, r := range st.VMs {
		if r.Status == nil || r.Status.State() == orchestrator.Unprotected {
			continue
		}
		name := r.Status.Name()
		r.Status.SetPolicy(a.policy(name, r.Policy))
		p := &protection{name: name, target: r.Target, reverse: r.Reverse}
		p.mu.vm, p.mu.over = r.Status, r.Policy
		a.mu.vms[name] = p
	}
	a.jobs.Interrupt("the agent stopped while it ran")
	return nil
}

// persist saves the state file, and logs an error if it cannot: for the
// agent's own steps, which a restart takes up again from the state saved
// before. A command whose change must be saved calls save.
func (a *agent) persist() {
	if err := a.save(); err != nil {
		slog.Error(fmt.Sprintf("agent: %v", err))
	}
}

// save writes the state file (a temporary file, synced, renamed over the
// old one), so that a crash leaves the old state or the new one. A state
// directory out of space releases the change log's reserve, and the write
// is tried once more.
func (a *agent) save() error {
	a.persistMu.Lock()
	defer a.persistMu.Unlock()
	st := agentState{Version: agentStateVersion, Jobs: a.jobs}
	for _, p := range a.protections() {
		p.mu.Lock()
		vm, reverse, over := *p.mu.vm, p.reverse, p.mu.over
		p.mu.Unlock()
		st.VMs = append(st.VMs, protectionRecord{Target: p.target, Policy: over, Status: &vm, Reverse: reverse})
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	err = writeFileSynced(a.file, data)
	if err != nil && a.log != nil && a.log.NoteFull(err) {
		err = writeFileSynced(a.file, data)
	}
	if err != nil {
		return fmt.Errorf("cannot save the agent's state in %s: %w", a.file, err)
	}
	return nil
}

// writeFileSynced replaces the file at path with data durably.
func writeFileSynced(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
