// Package remote puts a target.Store behind HTTPS: Server exposes any store
// to source hosts, and Client is a target.Store that talks to a Server.
// docs/remote-protocol.md specifies the HTTP API.
//
// Security: mutual TLS 1.3 only. The server accepts a client only with a
// certificate signed by its client CA, and the client's identity is the
// subject CommonName of that certificate (SANs are not used). Each identity
// has its own store (ServerOptions.Open), so one source host can neither
// read nor write the replicas of another; a name the identity does not own
// simply does not exist for it.
//
// Transport: HTTP/2 only (ALPN "h2"), one TCP connection per client, each
// call one request. A Stage body is streamed both ways: the client sends the
// caller's reader as it reads it, and the server hands the request body to
// Store.Stage as it arrives, so neither holds a generation in memory.
// HTTP/2 lets the server answer a bad stream at once (and stop the upload)
// without losing the answer, and its PING frames tell a dead connection
// from a busy server: both sides close a connection that stops answering
// (StallTimeout), so a stalled network fails a call instead of hanging it.
//
// Errors keep their kind across the wire: the server sends the kind
// (ErrNotFound, ErrCorrupt, ...) and whether target.IsPermanent holds, and
// the client returns an *Error that matches the same target error with
// errors.Is and the same answer from target.IsPermanent. Network failures,
// timeouts and 5xx answers are retryable.
//
// Retries are not made here: wrap the Client as any other store. A Stage cut
// by a broken connection stages nothing and is simply redone (Stage is
// idempotent); a Commit whose answer was lost is redone and returns nil if
// it had been applied.
package remote

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/drfs-project/drfs/target"
)

// API paths, version 1.
const (
	pathStage   = "/v1/stage"
	pathCommit  = "/v1/commit"
	pathVMs     = "/v1/vms"
	pathPoints  = "/v1/points"
	pathExpire  = "/v1/expire"
	pathReaders = "/v1/readers"
	pathSums    = "/v1/sums"
)

// maxRead is the longest range one read request returns; the client splits
// longer reads.
const maxRead = 4 << 20

// maxJSON bounds the JSON request bodies the server accepts.
const maxJSON = 1 << 20

// Checksums on the wire: a request body is its ranges, 16 bytes each (offset
// and length, big-endian uint64); an answer is one byte per sum, sumZero
// for target.ZeroSum, or sumData followed by the sum's 16 bytes.
const (
	rangeBytes = 16
	sumZero    = 0
	sumData    = 1
)

// maxSumsBody bounds a checksum request body: target.MaxSums ranges.
const maxSumsBody = rangeBytes * target.MaxSums

// commitRequest is the body of POST /v1/commit.
type commitRequest struct {
	Source        string           `json:"source"`
	Frozen        time.Time        `json:"frozen"`
	Kind          target.PointKind `json:"kind"`
	Disks         []string         `json:"disks"`
	AppConsistent bool             `json:"app_consistent"`
}

// expireRequest is the body of POST /v1/expire.
type expireRequest struct {
	Before time.Time `json:"before"`
	Keep   int       `json:"keep"`
}

type vmsResponse struct {
	VMs []string `json:"vms"`
}

type pointsResponse struct {
	Points []target.Point `json:"points"`
}

// openResponse is the answer to POST /v1/readers.
type openResponse struct {
	ID   string `json:"id"`
	Size int64  `json:"size"`
}

type extentsResponse struct {
	Extents [][2]int64 `json:"extents"` // [offset, length] pairs, in order
}

// errorResponse is the body of every error answer.
type errorResponse struct {
	Kind      string `json:"kind,omitempty"` // see kinds; empty for none
	Permanent bool   `json:"permanent"`
	Message   string `json:"error"`
}

// kindReaderGone is the kind of a read on a reader id the server no longer
// has (closed for idleness, or the server restarted): the client opens the
// point again. It is not a target error kind.
const kindReaderGone = "reader_gone"

// kinds maps the target error kinds to their wire names and HTTP statuses.
// The first kind an error matches wins.
var kinds = []struct {
	name   string
	err    error
	status int
}{
	{"not_found", target.ErrNotFound, http.StatusNotFound},
	{"bad_name", target.ErrBadName, http.StatusBadRequest},
	{"corrupt", target.ErrCorrupt, http.StatusUnprocessableEntity},
	{"wrong_source", target.ErrWrongSource, http.StatusConflict},
	{"out_of_order", target.ErrOutOfOrder, http.StatusConflict},
	{"auth", target.ErrAuth, http.StatusForbidden},
}

// toWire returns the status and body of the answer to err.
func toWire(err error) (int, errorResponse) {
	resp := errorResponse{Permanent: target.IsPermanent(err), Message: err.Error()}
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			resp.Kind = k.name
			return k.status, resp
		}
	}
	if resp.Permanent {
		return http.StatusBadRequest, resp
	}
	return http.StatusServiceUnavailable, resp
}

// Error is an error answer of the server, or a TLS refusal. It matches the
// target error kind the server reported (errors.Is(err, target.ErrNotFound))
// and reports the server's view of permanence to target.IsPermanent.
type Error struct {
	Op      string // the call: "stage", "commit", ...
	Status  int    // the HTTP status; 0 for a TLS refusal
	Kind    error  // a target error kind (ErrNotFound, ...), or nil
	Message string // the server's message

	permanent bool
	wireKind  string // the kind on the wire, target kind or not
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "remote: %s: ", e.Op)
	if e.Status != 0 {
		fmt.Fprintf(&b, "server answered %d: ", e.Status)
	}
	b.WriteString(e.Message)
	if e.Kind != nil && !strings.Contains(e.Message, e.Kind.Error()) {
		fmt.Fprintf(&b, " (%v)", e.Kind)
	}
	return b.String()
}

// Unwrap returns the target error kind, if any.
func (e *Error) Unwrap() error { return e.Kind }

// Permanent reports whether the call will fail again if retried unchanged.
func (e *Error) Permanent() bool { return e.permanent }

// fromWire turns an error answer into an *Error. body is nil when the answer
// had no JSON error body (a proxy, or a server that is not drfs).
func fromWire(op string, status int, body *errorResponse) *Error {
	e := &Error{Op: op, Status: status}
	if body != nil {
		e.Message, e.permanent, e.wireKind = body.Message, body.Permanent, body.Kind
		for _, k := range kinds {
			if body.Kind == k.name {
				e.Kind = k.err
			}
		}
		return e
	}
	e.Message = http.StatusText(status)
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		e.Kind, e.permanent = target.ErrAuth, true
	case status >= 500, status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		e.permanent = false
	default:
		e.permanent = true // a 4xx: the request itself is wrong
	}
	return e
}
