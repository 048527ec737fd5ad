package wrap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
)

// countStore fails the first fails calls of every kind with err, after
// reading read bytes of a Stage stream, then succeeds, keeping what Stage
// read.
type countStore struct {
	target.Store
	fails int
	read  int64
	err   error
	calls map[string]int
	got   [][]byte // what each successful Stage read
}

func (c *countStore) call(op string) error {
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[op]++
	if c.calls[op] <= c.fails {
		return c.err
	}
	return nil
}

func (c *countStore) Stage(_ context.Context, _ string, _ uint64, _ string, r io.Reader) error {
	if err := c.call("stage"); err != nil {
		io.CopyN(io.Discard, r, c.read)
		return err
	}
	b, err := io.ReadAll(r)
	c.got = append(c.got, b)
	return err
}

func (c *countStore) Commit(context.Context, string, uint64, target.Commit) error {
	return c.call("commit")
}

func (c *countStore) Points(context.Context, string) ([]target.Point, error) {
	return nil, c.call("points")
}

func TestRetry(t *testing.T) {
	ctx := context.Background()
	transient := retryable{"timeout"}
	data := []byte("0123456789abcdefghij")

	t.Run("backoff", func(t *testing.T) {
		clock := newFakeClock()
		clock.SetAuto(true)
		st := &countStore{fails: 3, read: 5, err: transient}
		var notes []string
		p := DefaultPolicy
		p.Notify = func(op string, try int, err error, wait time.Duration) {
			notes = append(notes, fmt.Sprintf("%s %d %v %v", op, try, err, wait))
		}
		r := Retry(st, p, clock)
		if err := r.Stage(ctx, "vm", 1, "d", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.got[0], data) {
			t.Fatalf("the store read %q after retries, want %q", st.got[0], data)
		}
		if w := clock.Waits(); !slices.Equal(w, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}) {
			t.Fatalf("waits %v, want 1s 2s 4s", w)
		}
		if len(notes) != 3 || notes[0] != "stage 1 timeout 1s" {
			t.Fatalf("notes %q", notes)
		}
		if err := r.Commit(ctx, "vm", 1, target.Commit{}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Points(ctx, "vm"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("gives up", func(t *testing.T) {
		clock := newFakeClock()
		clock.SetAuto(true)
		st := &countStore{fails: 10, err: transient}
		err := Retry(st, Policy{Retries: 2, Delay: time.Second, MaxDelay: time.Minute}, clock).Commit(ctx, "vm", 1, target.Commit{})
		if !errors.Is(err, transient) || st.calls["commit"] != 3 {
			t.Fatalf("Commit: %v after %d calls, want the store's error after 3", err, st.calls["commit"])
		}
	})

	t.Run("permanent", func(t *testing.T) {
		clock := newFakeClock()
		clock.SetAuto(true)
		st := &countStore{fails: 10, err: fmt.Errorf("owned elsewhere: %w", target.ErrWrongSource)}
		err := Retry(st, DefaultPolicy, clock).Commit(ctx, "vm", 1, target.Commit{})
		if !errors.Is(err, target.ErrWrongSource) || st.calls["commit"] != 1 || len(clock.Waits()) != 0 {
			t.Fatalf("Commit: %v after %d calls, want the permanent error at once", err, st.calls["commit"])
		}
	})

	t.Run("unread stream", func(t *testing.T) {
		clock := newFakeClock()
		clock.SetAuto(true)
		st := &countStore{fails: 1, read: 0, err: transient}
		// Not a Seeker, but the store read none of it: it can be sent again.
		if err := Retry(st, DefaultPolicy, clock).Stage(ctx, "vm", 1, "d", io.MultiReader(bytes.NewReader(data))); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.got[0], data) {
			t.Fatalf("got %q", st.got[0])
		}
	})

	t.Run("partly read stream", func(t *testing.T) {
		clock := newFakeClock()
		clock.SetAuto(true)
		st := &countStore{fails: 1, read: 3, err: transient}
		err := Retry(st, DefaultPolicy, clock).Stage(ctx, "vm", 1, "d", io.MultiReader(bytes.NewReader(data)))
		if !errors.Is(err, transient) || st.calls["stage"] != 1 {
			t.Fatalf("Stage: %v after %d calls, want the error at once: the stream cannot be read again", err, st.calls["stage"])
		}
	})

	t.Run("seeker not at its start", func(t *testing.T) {
		clock := newFakeClock()
		clock.SetAuto(true)
		st := &countStore{fails: 1, read: 4, err: transient}
		r := bytes.NewReader(data)
		r.Seek(10, io.SeekStart)
		if err := Retry(st, DefaultPolicy, clock).Stage(ctx, "vm", 1, "d", r); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.got[0], data[10:]) {
			t.Fatalf("got %q, want %q", st.got[0], data[10:])
		}
	})

	t.Run("cancelled while waiting", func(t *testing.T) {
		clock := newFakeClock() // never moves
		st := &countStore{fails: 10, err: transient}
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error)
		go func() { done <- Retry(st, DefaultPolicy, clock).Commit(ctx, "vm", 1, target.Commit{}) }()
		if err := clock.WaitTimers(1, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-done; !errors.Is(err, transient) {
			t.Fatalf("Commit: %v, want the store's error", err)
		}
	})

	t.Run("rate limit under retry", func(t *testing.T) {
		clock := newFakeClock()
		clock.SetAuto(true)
		st := &countStore{fails: 1, read: 7, err: transient}
		if err := Retry(RateLimit(st, 1<<30), DefaultPolicy, clock).Stage(ctx, "vm", 1, "d", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.got[0], data) {
			t.Fatalf("got %q", st.got[0])
		}
		st = &countStore{fails: 1, read: 7, err: transient}
		if err := RateLimit(Retry(st, DefaultPolicy, clock), 1<<30).Stage(ctx, "vm", 1, "d", bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(st.got[0], data) {
			t.Fatalf("got %q", st.got[0])
		}
	})
}

func TestPolicyWait(t *testing.T) {
	p := Policy{Retries: 6, Delay: time.Second, MaxDelay: 10 * time.Second}
	var got []time.Duration
	for n := 1; n <= 6; n++ {
		got = append(got, p.wait(n))
	}
	want := []time.Duration{1e9, 2e9, 4e9, 8e9, 10e9, 10e9}
	if !slices.Equal(got, want) {
		t.Fatalf("waits %v, want %v", got, want)
	}
}
