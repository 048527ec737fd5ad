// Package control is the local control socket of a running drfs mount: a
// unix socket in the state directory, readable by root only, over which the
// other commands read the change log and ask for rotations while the mount
// holds the log open.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/drfs-project/drfs/tracker"
)

// SocketName is the socket's file name inside the state directory.
const SocketName = "control.sock"

// ErrNotRunning means no mount serves the socket.
var ErrNotRunning = errors.New("no running drfs mount serves this state directory")

// Log is what the socket exposes of the change log.
type Log interface {
	Status() []tracker.VMStatus
	Rotate(vm string) (uint64, error)
	MarkResync(vm, disk, reason string)
}

// Replication is the state of the replication of one VM, as a running
// mount reports it.
type Replication struct {
	VM             string    `json:"vm"`
	Target         string    `json:"target"`
	LastGeneration uint64    `json:"last_generation"` // newest point committed on the target by this mount
	LastShipped    time.Time `json:"last_shipped"`
	// LastConsistent is the newest crash-consistent point this mount
	// committed (0 if none yet) and LastConsistentCut when it was cut: the
	// RPO is the age of that cut, whatever fuzzy points came after it.
	LastConsistent    uint64    `json:"last_consistent"`
	LastConsistentCut time.Time `json:"last_consistent_cut,omitzero"`
	Pending           int       `json:"pending"` // frozen generations waiting in the log
	LastError         string    `json:"last_error,omitempty"`
	Failures          int       `json:"failures"`
	Stopped           bool      `json:"stopped"` // a permanent error stopped the VM's replication
	BytesRaw          uint64    `json:"bytes_raw"`
	BytesSent         uint64    `json:"bytes_sent"`
	// ResyncWindow is the mount's resync window (its text form).
	ResyncWindow string `json:"resync_window,omitempty"`
	// Resync lists the disks of the VM that need a resynchronization.
	Resync []DiskResync `json:"resync,omitempty"`
	// StateFull is set while the mount's state directory is full: why,
	// and since when. The disks changed meanwhile are flagged for a
	// resync; health is Critical until shipped generations give the space
	// back.
	StateFull      string    `json:"state_full,omitempty"`
	StateFullSince time.Time `json:"state_full_since,omitzero"`
}

// DiskResync is the resynchronization of one disk: waiting for the resync
// window, or running.
type DiskResync struct {
	Disk   string    `json:"disk"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
	// Running: the resynchronization has started (it goes on, from its
	// cursor, whatever the window). Otherwise it waits for WindowOpens, or
	// for drfs resync --now if WindowOpens is zero (a "never" window).
	Running     bool      `json:"running"`
	Now         bool      `json:"now,omitempty"` // asked for now: runs at the next round
	WindowOpens time.Time `json:"window_opens,omitzero"`
}

// ResyncAnswer is the answer to a resync request.
type ResyncAnswer struct {
	Disks []string `json:"disks"`
	// Now: the resynchronization runs at the mount's next replication
	// round. Otherwise it waits for the resync window, which opens at
	// WindowOpens (zero: never, the window is "never").
	Now          bool      `json:"now"`
	ResyncWindow string    `json:"resync_window,omitempty"`
	WindowOpens  time.Time `json:"window_opens,omitzero"`
	// Replicating is false when the mount has no target: the disks are
	// only flagged.
	Replicating bool `json:"replicating"`
}

// ResyncHook is told of a resync request for vm after its disks were
// flagged; it returns when the resynchronization will run. now asks for it
// at once.
type ResyncHook func(vm string, now bool) (ResyncAnswer, error)

// Server serves one control socket.
type Server struct {
	http *http.Server
	path string
	hook atomic.Pointer[ResyncHook]
}

// OnResync sets the hook of resync requests; without one, a request only
// flags the disks and one for now is refused.
func (s *Server) OnResync(h ResyncHook) { s.hook.Store(&h) }

// Listen listens on a unix socket at path that only root can use. A stale
// socket left by a killed process is replaced; a live one is an error that
// ends with hint.
func Listen(path, hint string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s is served by another drfs process: %s", path, hint)
		}
		os.Remove(path)
	}
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// Serve listens on the unix socket at path. A stale socket left by a killed
// mount is replaced; a live one is an error.
func Serve(path string, log Log, replication func() []Replication) (*Server, error) {
	ln, err := Listen(path, "is this state directory mounted already?")
	if err != nil {
		return nil, err
	}
	s := &Server{path: path}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, log.Status())
	})
	mux.HandleFunc("GET /v1/replication", func(w http.ResponseWriter, r *http.Request) {
		out := []Replication{}
		if replication != nil {
			out = replication()
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("POST /v1/resync", func(w http.ResponseWriter, r *http.Request) {
		vm := r.URL.Query().Get("vm")
		now := r.URL.Query().Get("now") == "1"
		hook := s.hook.Load()
		if now && hook == nil {
			http.Error(w, "this mount does not replicate (no --target): nothing to resynchronize now", http.StatusBadRequest)
			return
		}
		var disks []string
		for _, st := range log.Status() {
			if st.Name == vm {
				for _, d := range st.Disks {
					if !d.Removed {
						log.MarkResync(vm, d.Name, "resynchronization requested by the operator")
						disks = append(disks, d.Name)
					}
				}
			}
		}
		if len(disks) == 0 {
			http.Error(w, fmt.Sprintf("no VM %q in the change log", vm), http.StatusNotFound)
			return
		}
		ans := ResyncAnswer{}
		if hook != nil {
			var err error
			if ans, err = (*hook)(vm, now); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		ans.Disks = disks
		writeJSON(w, ans)
	})
	mux.HandleFunc("POST /v1/rotate", func(w http.ResponseWriter, r *http.Request) {
		gen, err := log.Rotate(r.URL.Query().Get("vm"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, map[string]uint64{"generation": gen})
	})
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.http.Serve(ln)
	return s, nil
}

// Shutdown stops serving and removes the socket.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	os.Remove(s.path)
	return err
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Client talks to the socket at a path.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Status returns the change log's status. It returns ErrNotRunning when no
// mount serves the socket.
func (c *Client) Status() ([]tracker.VMStatus, error) {
	var st []tracker.VMStatus
	return st, c.call(http.MethodGet, "/v1/status", &st)
}

// Replication returns the replication state of every VM; none when the
// mount does not replicate.
func (c *Client) Replication() ([]Replication, error) {
	var st []Replication
	return st, c.call(http.MethodGet, "/v1/replication", &st)
}

// Resync flags every disk of vm for resynchronization and returns them.
// The mount resynchronizes them in its resync window.
func (c *Client) Resync(vm string) ([]string, error) {
	a, err := c.ResyncVM(vm, false)
	return a.Disks, err
}

// ResyncVM flags every disk of vm for resynchronization, at once if now,
// else in the mount's resync window, and says when it runs.
func (c *Client) ResyncVM(vm string, now bool) (ResyncAnswer, error) {
	var a ResyncAnswer
	q := "/v1/resync?vm=" + url.QueryEscape(vm)
	if now {
		q += "&now=1"
	}
	return a, c.call(http.MethodPost, q, &a)
}

// Rotate freezes the active generation of vm and returns its number.
func (c *Client) Rotate(vm string) (uint64, error) {
	var out struct{ Generation uint64 }
	err := c.call(http.MethodPost, "/v1/rotate?vm="+url.QueryEscape(vm), &out)
	return out.Generation, err
}

func (c *Client) call(method, path string, out any) error {
	req, err := http.NewRequest(method, "http://drfs"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return ErrNotRunning
		}
		return fmt.Errorf("control socket %s: %w", c.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var msg [512]byte
		n, _ := resp.Body.Read(msg[:])
		return fmt.Errorf("%s", string(msg[:n]))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
