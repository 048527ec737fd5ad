package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/drfs-project/drfs/orchestrator"
)

// Client talks to the agent's API on its unix socket (Options.Socket).
// Every call fails with a message that says what to do when no agent
// answers there or the socket is not the caller's to use.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client of the agent at socket path. A call waits
// for the answer up to 2 minutes (SetTimeout).
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{
		Timeout: 2 * time.Minute, // protect waits for the prerequisite checks
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// SetTimeout sets how long a call waits for the agent's answer; 0: no
// limit (a long job).
func (c *Client) SetTimeout(d time.Duration) { c.http.Timeout = d }

// Call sends a request with body in (if not nil) as JSON and decodes the
// answer into out.
func (c *Client) Call(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no drfs agent answers on %s: start it (drfs agent), or give --socket", c.path)
		}
		if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EACCES) {
			return fmt.Errorf("the drfs agent's socket %s is for root only", c.path)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return errors.New(strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// VMs returns the views of the VMs of the agent's source, or of vm alone.
func (c *Client) VMs(vm string) ([]VMView, error) {
	var out []VMView
	q := ""
	if vm != "" {
		q = "?vm=" + url.QueryEscape(vm)
	}
	return out, c.Call(http.MethodGet, "/v1/vms"+q, nil, &out)
}

// Protect asks the agent to protect a VM (or change its settings).
func (c *Client) Protect(req ProtectRequest) (ProtectAnswer, error) {
	var ans ProtectAnswer
	return ans, c.Call(http.MethodPost, "/v1/protect", req, &ans)
}

// Post asks for verb (unprotect, resume, commit, cancel, failback ...)
// on vm, the answer decoded into out.
func (c *Client) Post(verb, vm string, out any) error {
	return c.Call(http.MethodPost, "/v1/"+verb+"?vm="+url.QueryEscape(vm), nil, out)
}

// Failover starts a planned failover, as a job.
func (c *Client) Failover(req FailoverRequest) (orchestrator.Job, error) {
	var j orchestrator.Job
	return j, c.Call(http.MethodPost, "/v1/failover", req, &j)
}

// Jobs lists the jobs of vm, or of every VM.
func (c *Client) Jobs(vm string) ([]orchestrator.Job, error) {
	var out []orchestrator.Job
	q := ""
	if vm != "" {
		q = "?vm=" + url.QueryEscape(vm)
	}
	return out, c.Call(http.MethodGet, "/v1/jobs"+q, nil, &out)
}

// Job returns job id.
func (c *Client) Job(id uint64) (orchestrator.Job, error) {
	var j orchestrator.Job
	return j, c.Call(http.MethodGet, fmt.Sprintf("/v1/jobs/%d", id), nil, &j)
}
