package wrap

import (
	"time"

	"github.com/drfs-project/drfs/internal/clock"
)

// retryable is an error the store may return that a retry may cure.
type retryable struct{ msg string }

func (e retryable) Error() string { return e.msg }

// newFakeClock returns a clock that moves only when told, or, in auto
// mode, jumps to each timer as it is made and records the wait.
func newFakeClock() *clock.Fake {
	return clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
}
