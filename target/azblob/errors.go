package azblob

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/drfs-project/drfs/target"
)

// svcError is a failed call to the service, with a message that names the
// operation and blob but never a credential (no URL query, no response
// body). Unwrap gives the error kind (target.ErrNotFound, target.ErrAuth)
// and the SDK's error.
type svcError struct {
	msg       string
	kind      error // nil, or a target error kind
	permanent bool
	err       error
}

func (e *svcError) Error() string   { return e.msg }
func (e *svcError) Permanent() bool { return e.permanent }
func (e *svcError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// brokenError is a state of the container that retrying will not mend: a
// blob that is not what drfs wrote there, a manifest that names a snapshot
// that is gone. Permanent, for an operator to look at.
type brokenError struct{ msg string }

func (e *brokenError) Error() string   { return e.msg }
func (e *brokenError) Permanent() bool { return true }

func broken(format string, args ...any) error {
	return &brokenError{"azblob: " + fmt.Sprintf(format, args...)}
}

// conflictError: the manifest changed under a call (another process at
// the same VM). Retryable: the next call reads the new state.
type conflictError struct{ msg string }

func (e *conflictError) Error() string   { return e.msg }
func (e *conflictError) Permanent() bool { return false }

// statusOf returns the HTTP status and the service's error code of err, or
// 0 and "" if it is not a response of the service.
func statusOf(err error) (int, string) {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode, re.ErrorCode
	}
	return 0, ""
}

func isNotFound(err error) bool {
	st, _ := statusOf(err)
	return st == http.StatusNotFound
}

// fail maps an error of the SDK on op (what drfs was doing) at blob:
//
//   - 401, 403: target.ErrAuth, permanent;
//   - 404 of the container: permanent, says to create it;
//   - 404: target.ErrNotFound, permanent;
//   - other 4xx except 408, 409, 412 and 429: permanent (a request the service
//     will refuse again, such as a blob of the wrong type);
//   - 5xx, 408, 409, 412, 429, timeouts, network errors, a cancelled
//     context: retryable. The SDK has already retried what it retries.
func (s *Store) fail(op, blob string, err error) error {
	if err == nil {
		return nil
	}
	where := op
	if blob != "" {
		where += " " + blob
	}
	st, code := statusOf(err)
	if st == 0 {
		return &svcError{msg: s.redact(fmt.Sprintf("azblob: %s: %s", where, transportMessage(err))), err: err}
	}
	e := &svcError{err: err}
	detail := fmt.Sprintf("HTTP %d %s", st, code)
	switch {
	case st == http.StatusUnauthorized || st == http.StatusForbidden:
		e.kind, e.permanent = target.ErrAuth, true
		e.msg = fmt.Sprintf("azblob: %s: %v (%s): check the account key, SAS token (its permissions and expiry) or connection string of account %s",
			where, target.ErrAuth, detail, s.account)
	case code == string(bloberror.ContainerNotFound):
		e.permanent = true
		e.msg = fmt.Sprintf("azblob: %s: container %q does not exist in account %s (%s): create it, or add ?create=true to the target URL",
			where, s.container, s.account, detail)
	case st == http.StatusNotFound:
		e.kind, e.permanent = target.ErrNotFound, true
		e.msg = fmt.Sprintf("azblob: %s: %v (%s)", where, target.ErrNotFound, detail)
	case code == string(bloberror.SequenceNumberConditionNotMet):
		e.msg = fmt.Sprintf("azblob: %s: fenced (%s): another process applied a newer generation to this disk (retryable: a retry finds the generation committed or out of order)", where, detail)
	case st >= 400 && st < 500 && st != http.StatusRequestTimeout && st != http.StatusConflict &&
		st != http.StatusPreconditionFailed && st != http.StatusTooManyRequests:
		e.permanent = true
		e.msg = fmt.Sprintf("azblob: %s: refused by the service (%s)", where, detail)
	default:
		e.msg = fmt.Sprintf("azblob: %s: %s (retryable)", where, detail)
	}
	e.msg = s.redact(e.msg)
	return e
}

// transportMessage describes a transport error without the request's
// query (a SAS token travels there).
func transportMessage(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		u, perr := url.Parse(ue.URL)
		where := "request"
		if perr == nil {
			where = u.Scheme + "://" + u.Host + u.Path
		}
		return fmt.Sprintf("%s %s: %v", ue.Op, where, ue.Err)
	}
	return err.Error()
}

// redact removes the store's secrets from a message, in case a layer below
// put one there.
func (s *Store) redact(msg string) string {
	for _, secret := range s.secrets {
		if len(secret) >= 8 {
			msg = strings.ReplaceAll(msg, secret, "REDACTED")
		}
	}
	return msg
}

// fenced is the error of an applier of generation gen that finds the disk
// blob already raised to a newer generation (see prepareBlob): retryable,
// as its retry finds gen committed (or out of order).
func fenced(name string, gen uint64, seq int64) error {
	return &svcError{msg: fmt.Sprintf("azblob: disk blob %s: fenced: another process applied generation %d to it, newer than %d (retryable: a retry finds the generation committed or out of order)", name, seq, gen)}
}
