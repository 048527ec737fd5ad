package wrap

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
)

// discardStore stages by reading the stream to its end.
type discardStore struct{ target.Store }

func (discardStore) Stage(_ context.Context, _ string, _ uint64, _ string, r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// TestRateLimit reads 8 MiB through a 16 MiB/s limit from a store that
// takes them as fast as it can: it must never go faster than the limit
// (+10% for the bucket's burst), and, on a machine with its CPU to spare,
// not much slower. A loaded machine (other tests' processes) only slows it,
// so the lower bound is loose: it catches a limiter that throttles far too
// hard, not scheduling noise.
func TestRateLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("takes half a second of real time")
	}
	const rate, size = 16 << 20, 8 << 20
	data := make([]byte, size) // the limit does not look at the bytes
	st := RateLimit(discardStore{}, rate)
	start := time.Now()
	// Two streams one after the other share the limit.
	for range 2 {
		if err := st.Stage(context.Background(), "vm", 1, "d", bytes.NewReader(data[:size/2])); err != nil {
			t.Fatal(err)
		}
	}
	got := float64(size) / time.Since(start).Seconds()
	t.Logf("%.2f MiB/s through a limit of %d MiB/s", got/(1<<20), rate>>20)
	if got > 1.1*rate {
		t.Fatalf("rate %.2f MiB/s is over the limit of %d MiB/s", got/(1<<20), rate>>20)
	}
	if got < 0.25*rate {
		t.Fatalf("rate %.2f MiB/s: the limit of %d MiB/s throttles far too hard", got/(1<<20), rate>>20)
	}
}

func TestRateLimitUnlimited(t *testing.T) {
	st := discardStore{}
	if got := RateLimit(st, 0); got != target.Store(st) {
		t.Fatalf("RateLimit(store, 0) = %T, want the store itself", got)
	}
}

// TestRateLimitCancel: a cancelled context ends a throttled stream.
func TestRateLimitCancel(t *testing.T) {
	st := RateLimit(discardStore{}, 1<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := st.Stage(ctx, "vm", 1, "d", bytes.NewReader(make([]byte, 1<<20)))
	if err == nil {
		t.Fatal("a 1 MiB stream at 1 KiB/s finished within 50ms")
	}
}
