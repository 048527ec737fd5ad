package recovery

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/drfs-project/drfs/orchestrator"
)

// CleanupResult is what drfs failover cleanup removed and kept.
type CleanupResult struct {
	Dir  string   `json:"dir"`
	VM   string   `json:"vm,omitempty"`
	Plan string   `json:"plan,omitempty"`
	VMs  []string `json:"vms,omitempty"` // of the plan
	// Removed are the disks, markers and directories removed; Kept what
	// drfs did not write, left in place.
	Removed    []string `json:"removed"`
	Kept       []string `json:"kept"`
	DirRemoved bool     `json:"dir_removed"`
}

// Cleanup removes the test failover in dir: what drfs failover wrote
// there (the disks and markers), then dir if nothing else is left; what
// drfs did not write stays, and is named in Kept.
func Cleanup(dir string) (CleanupResult, error) {
	res := CleanupResult{Dir: dir, Removed: []string{}, Kept: []string{}}
	mk, err := ReadMarker(dir)
	if err != nil {
		return res, err
	}
	res.VM, res.Plan, res.VMs = mk.VM, mk.Plan, mk.VMs
	if mk.Type != orchestrator.Test {
		what := "VM " + mk.VM
		if mk.Plan != "" {
			what = "plan " + mk.Plan
		}
		return res, fmt.Errorf("%s holds the %s failover of %s: those are the VM's disks now, not a test copy; drfs failover cleanup removes only test failovers", dir, mk.Type, what)
	}
	var left, removed []string
	if mk.Plan != "" {
		for _, vm := range mk.VMs {
			sub := filepath.Join(dir, vm)
			if _, err := os.Stat(sub); errors.Is(err, os.ErrNotExist) {
				continue // the plan stopped before it
			}
			vmk, err := ReadMarker(sub)
			if err == nil && (vmk.Type != orchestrator.Test || vmk.VM != vm) {
				err = fmt.Errorf("%s: its marker does not name a test failover of %s: not removing it", sub, vm)
			}
			if err != nil {
				return res, err
			}
			r, l, err := cleanupVM(sub, vmk)
			removed = append(removed, r...)
			if err != nil {
				return res, err
			}
			left = append(left, l...)
		}
	} else if removed, left, err = cleanupVM(dir, mk); err != nil {
		return res, err
	}
	res.Removed = append(res.Removed, removed...)
	marker := filepath.Join(dir, MarkerName)
	if err := os.Remove(marker); err == nil {
		res.Removed = append(res.Removed, marker)
	} else if !errors.Is(err, os.ErrNotExist) {
		return res, err
	}
	switch err := os.Remove(dir); {
	case err == nil:
		res.Removed = append(res.Removed, dir)
		res.DirRemoved = true
	case errors.Is(err, os.ErrNotExist):
		res.DirRemoved = true // with its VM's disks
	default:
		left = append(left, leftIn(dir, left)...)
	}
	res.Kept = append(res.Kept, left...)
	return res, nil
}

// leftIn returns what is in dir and not named in listed already: neither
// listed itself (what cleanupVM found left in dir) nor a directory that
// holds a listed path (the folder of a plan's VM, whose leftovers are
// named), so that each leftover is named once.
func leftIn(dir string, listed []string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if !slices.ContainsFunc(listed, func(l string) bool { return l == path || strings.HasPrefix(l, path+string(filepath.Separator)) }) {
			out = append(out, path)
		}
	}
	return out
}

// cleanupVM removes the disks and marker of one VM's test failover in dir,
// and dir if it is then empty; it returns what it removed and what was
// left.
func cleanupVM(dir string, mk Marker) (removed, left []string, err error) {
	for _, d := range mk.Disks {
		if !filepath.IsLocal(filepath.FromSlash(d)) {
			return nil, nil, fmt.Errorf("%s: %s names disk %q outside the directory: not removing anything", dir, MarkerName, d)
		}
	}
	for _, d := range mk.Disks {
		path := filepath.Join(dir, filepath.FromSlash(d))
		if err := os.Remove(path); err == nil {
			removed = append(removed, path)
		} else if !errors.Is(err, os.ErrNotExist) {
			return removed, nil, err
		}
		// Directories of disk names (a/b.img), when empty.
		for p := filepath.Dir(path); p != dir && strings.HasPrefix(p, dir); p = filepath.Dir(p) {
			if os.Remove(p) != nil {
				break
			}
			removed = append(removed, p)
		}
	}
	marker := filepath.Join(dir, MarkerName)
	if err := os.Remove(marker); err == nil {
		removed = append(removed, marker)
	} else if !errors.Is(err, os.ErrNotExist) {
		return removed, nil, err
	}
	if os.Remove(dir) == nil {
		return append(removed, dir), nil, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return removed, nil, err
	}
	for _, e := range entries {
		left = append(left, filepath.Join(dir, e.Name()))
	}
	return removed, left, nil
}
