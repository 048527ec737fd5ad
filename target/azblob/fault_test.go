package azblob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// cutScenario applies three generations to st, then builds and stages
// generation 5, in which disk a shrinks into a page, b/c grows, new/disk is
// new, and disk gone (removed at 3) stays away.
func cutScenario(t *testing.T, st target.Store) (*storetest.VM, *storetest.Gen) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 11))
	m, g := storetest.NewVM(rng, "vm", "a", "b/c", "gone")
	must(t, g.Apply(bg, st))
	for gen := uint64(2); gen <= 3; gen++ {
		g = m.Next(gen)
		if gen == 3 {
			g.Remove("gone")
		}
		g.RandomGen(rng, storetest.RandomOptions{Changes: 20, MaxGrow: 20000, MinSize: 4096})
		must(t, g.Apply(bg, st))
	}
	g = m.Next(5)
	size := int64(len(g.Contents("a")))
	g.Resize("a", size-10000-size%pageSize-100) // shrink into the middle of a page
	g.Resize("b/c", int64(len(g.Contents("b/c")))+3*4096+7)
	g.Add("new/disk", 6*4096)
	g.RandomGen(rng, storetest.RandomOptions{Changes: 30})
	must(t, g.Build())
	must(t, g.Stage(bg, st))
	return m, g
}

// reopen returns a second Store on st's container, as a new process would
// open it after a crash.
func reopen(t *testing.T, st *Store) *Store {
	t.Helper()
	u := fmt.Sprintf("azblob://%s/%s?endpoint=%s", st.account, st.container, strings.TrimSuffix(st.cc.URL(), "/"+st.container))
	s2 := openTestStore(t, u, Options{}, false)
	s2.sweepAge = 0
	return s2
}

// wantRetryable fails t unless err is a retryable error.
func wantRetryable(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || target.IsPermanent(err) {
		t.Fatalf("%s: %v, want a retryable error", what, err)
	}
}

// checkClean checks that a VM at rest has no marker, no staging, and (after
// a sweep) exactly the snapshots its points name.
func checkClean(t *testing.T, st *Store, vm string, swept bool) {
	t.Helper()
	m, _, err := st.readManifest(bg, vm)
	must(t, err)
	if m.Applying != nil {
		t.Fatalf("manifest still has a marker for generation %d", m.Applying.Point.Generation)
	}
	named := map[string]bool{}
	for _, p := range m.Points {
		for _, d := range p.Disks {
			named[st.diskBlob(vm, d.Name)+"@"+d.Snapshot] = true
		}
	}
	var staging, snaps []string
	pager := st.cc.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix: ptr(st.vmDir(vm)), Include: container.ListBlobsInclude{Snapshots: true},
	})
	for pager.More() {
		page, err := pager.NextPage(bg)
		must(t, err)
		for _, it := range page.Segment.BlobItems {
			switch {
			case strings.HasPrefix(*it.Name, st.stagingRoot(vm)):
				staging = append(staging, *it.Name)
			case it.Snapshot != nil && *it.Snapshot != "":
				snaps = append(snaps, *it.Name+"@"+*it.Snapshot)
			}
		}
	}
	if len(staging) > 0 {
		t.Fatalf("staging left behind: %q", staging)
	}
	for _, sn := range snaps {
		if !named[sn] && swept {
			t.Errorf("snapshot %s is named by no point", sn)
		}
		delete(named, sn)
	}
	for sn := range named {
		t.Errorf("snapshot %s named by a point is missing", sn)
	}
}

// TestCommitCutPages cuts a Commit after n page writes (its context
// cancelled from the write hook), checks that nothing is visible and every
// old point still reads as it was, then lets a second Store, as a restarted
// process would, finish the commit with its next Commit: with one block
// per write, and with writes that bridge gaps (read-modify-write).
func TestCommitCutPages(t *testing.T) {
	azuriteEndpoint(t)
	for _, c := range []struct {
		name string
		opts Options
		cuts []int64
	}{
		{"block", Options{PageWrite: 4096, Parallel: 4}, []int64{1, 4, 11, 16}},          // of 16
		{"gaps", Options{PageWrite: 16384, Gap: 8192, Parallel: 4}, []int64{1, 3, 6, 8}}, // of 8
	} {
		for _, n := range c.cuts {
			t.Run(fmt.Sprint(c.name, n), func(t *testing.T) { cutPages(t, c.opts, n) })
		}
	}
}

func cutPages(t *testing.T, opts Options, n int64) {
	st := newTestStore(t, opts)
	m, g := cutScenario(t, st)
	before, err := st.Points(bg, "vm")
	must(t, err)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	st.pageHook = func(seq int64) error {
		if seq == n {
			cancel()
		}
		return nil
	}
	err = st.Commit(ctx, "vm", g.Gen, g.Commit())
	wantRetryable(t, "Commit cut by its context", err)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit cut by its context: %v, want context.Canceled", err)
	}
	after, err := st.Points(bg, "vm")
	must(t, err)
	if !slices.EqualFunc(after, before, func(a, b target.Point) bool { return a.Generation == b.Generation }) {
		t.Fatalf("points %v after a cut commit, want %v", after, before)
	}
	// The disk blobs hold part of generation 5; the snapshots do not.
	m.CheckPoints(t, st)

	s2 := reopen(t, st)
	must(t, s2.Commit(bg, "vm", g.Gen, g.Commit()))
	g.Committed()
	m.CheckPoints(t, s2)
	checkClean(t, s2, "vm", true)

	// Replication goes on on top of it.
	next := m.Next(6)
	next.RandomGen(rand.New(rand.NewPCG(1, uint64(n))), storetest.RandomOptions{Changes: 20, MaxGrow: 9000, MinSize: 4096})
	must(t, next.Apply(bg, s2))
	m.CheckPoints(t, s2)
}

// TestCommitCutSteps cuts a Commit after each step of its protocol and
// finishes it with the next Commit or Expire of another Store.
func TestCommitCutSteps(t *testing.T) {
	azuriteEndpoint(t)
	steps := []string{"marker", "apply a", "apply new/disk", "snapshot a", "snapshot new/disk", "manifest"}
	for i, step := range steps {
		t.Run(strings.ReplaceAll(step, "/", "_"), func(t *testing.T) {
			st := newTestStore(t, Options{})
			m, g := cutScenario(t, st)
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			st.stepHook = func(s string) {
				if s == step {
					cancel()
				}
			}
			err := st.Commit(ctx, "vm", g.Gen, g.Commit())
			if step == "manifest" {
				must(t, err) // the point is made: only the clean-up was cut
			} else {
				wantRetryable(t, "Commit cut after "+step, err)
				m.CheckPoints(t, st)
			}
			s2 := reopen(t, st)
			if i%2 == 0 {
				must(t, s2.Commit(bg, "vm", g.Gen, g.Commit()))
			} else {
				// Expire finishes it too (and drops nothing here).
				must(t, s2.Expire(bg, "vm", time.Time{}, 1))
			}
			g.Committed()
			m.CheckPoints(t, s2)
			must(t, s2.Expire(bg, "vm", time.Time{}, 1)) // sweeps what the cut attempt left
			checkClean(t, s2, "vm", true)
		})
	}
}

// TestStageDuringCutCommit: staging the generation of a cut commit again,
// even with other data, changes nothing: the commit finishes with the
// streams it began with.
func TestStageDuringCutCommit(t *testing.T) {
	azuriteEndpoint(t)
	st := newTestStore(t, Options{})
	m, g := cutScenario(t, st)
	ctx, cancel := context.WithCancel(bg)
	st.stepHook = func(s string) {
		if s == "apply a" {
			cancel()
		}
	}
	wantRetryable(t, "cut Commit", st.Commit(ctx, "vm", g.Gen, g.Commit()))
	st.stepHook = nil

	other := m.Next(g.Gen)
	other.Touch("a")
	other.Write("a", 0, bytes.Repeat([]byte{0xee}, 4096))
	must(t, other.Build())
	must(t, st.Stage(bg, "vm", g.Gen, "a", bytes.NewReader(other.Streams["a"])))
	must(t, st.Commit(bg, "vm", g.Gen, g.Commit()))
	g.Committed()
	m.CheckPoints(t, st)
}

// TestStagedStreamGone: a cut commit whose staged stream was deleted by
// hand cannot be finished: a permanent error that says what to do.
func TestStagedStreamGone(t *testing.T) {
	azuriteEndpoint(t)
	st := newTestStore(t, Options{})
	_, g := cutScenario(t, st)
	ctx, cancel := context.WithCancel(bg)
	st.stepHook = func(s string) {
		if s == "marker" {
			cancel()
		}
	}
	wantRetryable(t, "cut Commit", st.Commit(ctx, "vm", g.Gen, g.Commit()))
	_, err := st.cc.NewBlobClient(st.stagedBlob("vm", g.Gen, "b/c")).Delete(bg, nil)
	must(t, err)
	err = st.Commit(bg, "vm", g.Gen, g.Commit())
	if err == nil || !target.IsPermanent(err) || !strings.Contains(err.Error(), "resynchronize") {
		t.Fatalf("Commit with a staged stream gone: %v, want a permanent error that says to resynchronize", err)
	}
}

// TestStaleApplierFenced: an applier of generation 5 that stalls in the
// middle of its page writes (a process presumed dead, requests the service
// runs late) while another process finishes generation 5 and commits 6
// over every block must not change the disk blobs when it wakes: its
// writes, and its create of the new disk, are fenced by the blobs'
// sequence numbers. Generation 7, which changes one block per disk, shows
// the blobs as 6 left them.
func TestStaleApplierFenced(t *testing.T) {
	azuriteEndpoint(t)
	st := newTestStore(t, Options{PageWrite: 4096, Parallel: 1, Gap: -1})
	m, g := cutScenario(t, st)
	paused, release := make(chan struct{}), make(chan struct{})
	st.pageHook = func(n int64) error {
		if n == 2 {
			close(paused)
			<-release
		}
		return nil
	}
	errA := make(chan error, 1)
	go func() { errA <- st.Commit(bg, "vm", g.Gen, g.Commit()) }()
	select {
	case <-paused:
	case err := <-errA:
		t.Fatalf("the first applier did not stall in its page writes: %v", err)
	}

	s2 := reopen(t, st)
	must(t, s2.Commit(bg, "vm", g.Gen, g.Commit()))
	g.Committed()
	six := m.Next(6)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, d := range six.Disks() {
		for b := 0; b*4096 < len(six.Contents(d)); b++ {
			data := make([]byte, 4096)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			six.Write(d, uint64(b), data)
		}
	}
	must(t, six.Apply(bg, s2))

	close(release)
	err := <-errA
	if err == nil || target.IsPermanent(err) || !strings.Contains(err.Error(), "fenced") {
		t.Fatalf("the stale applier: %v, want a retryable error saying it was fenced", err)
	}
	// Its retry finds generation 5 committed.
	must(t, st.Commit(bg, "vm", g.Gen, g.Commit()))

	seven := m.Next(7)
	for _, d := range seven.Disks() {
		seven.Write(d, 0, bytes.Repeat([]byte{7}, 4096))
	}
	must(t, seven.Apply(bg, s2))
	m.CheckPoints(t, s2)
}

// TestReaderOfExpiredPoint: a reader in another process than the writer
// (here another Store) whose point expires under it gets an error that
// says so, never the bytes of another point.
func TestReaderOfExpiredPoint(t *testing.T) {
	st := newTestStore(t, Options{})
	m := replicate(t, st, 5, 4)
	other := reopen(t, st)
	old := m.Points[0]
	r, err := other.Open(bg, "vm", old.Gen, "d")
	must(t, err)
	defer r.Close()
	must(t, st.Expire(bg, "vm", m.Newest().Frozen, 1))
	buf := make([]byte, r.Size())
	_, err = r.ReadAt(buf, 0)
	if !errors.Is(err, target.ErrNotFound) || !strings.Contains(err.Error(), fmt.Sprintf("point %d expired while it was read", old.Gen)) {
		t.Fatalf("reading a point that expired: %v", err)
	}
}
