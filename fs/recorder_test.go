package fs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// eventKind names a DiskRecorder call.
type eventKind int

const (
	evWritten eventKind = iota
	evZeroed
	evChanged
	evResized
)

func (k eventKind) String() string {
	return [...]string{"Written", "Zeroed", "Changed", "Resized"}[k]
}

// event is one change reported to a shadowDisk. For Resized, off is the new
// size and n is 0.
type event struct {
	kind eventKind
	off  int64
	n    int64
}

func (e event) String() string { return fmt.Sprintf("%v(%d,%d)", e.kind, e.off, e.n) }

// testRecorder is a Recorder that keeps a shadow copy of every disk by
// applying the reported changes, the way a change log and a replica would:
// Written copies the data and reads partly covered blocks back from src,
// Zeroed zeroes and reads partial edge blocks back, Changed reads the range
// from src, Resized truncates. If fs misses a change (kernel passthrough, a
// forgotten op) or reports one without the block lock (a stale read-back),
// the shadow differs from the backing file at the end of the test.
//
// It also checks the locking contract itself: two calls that touch the same
// block, or a Resized and any other call, must never be in progress at the
// same time.
type testRecorder struct {
	t         testing.TB
	src       string // the source directory, to read initial contents
	blockSize int

	// untracked names files for which OpenDisk returns nil.
	untracked func(rel string) bool
	// openErr, if set, is returned by OpenDisk for the files it names.
	openErr func(rel string) error
	// during, if set, runs inside every change call after the contract
	// check, outside any lock of the recorder (to widen race windows or
	// to measure parallelism).
	during func(event)

	mu      sync.Mutex
	syncErr error // returned by every Sync
	disks   []*shadowDisk
	renames [][2]string
	removed []string
}

func newTestRecorder(t testing.TB, src string, blockSize int) *testRecorder {
	return &testRecorder{t: t, src: src, blockSize: blockSize}
}

func (r *testRecorder) OpenDisk(rel string, size int64) (DiskRecorder, error) {
	if r.openErr != nil {
		if err := r.openErr(rel); err != nil {
			return nil, err
		}
	}
	if r.untracked != nil && r.untracked(rel) {
		return nil, nil
	}
	if strings.HasPrefix(rel, "/") || strings.Contains(rel, "\\") {
		r.t.Errorf("OpenDisk(%q): want a slash-separated relative path", rel)
	}
	data, err := os.ReadFile(filepath.Join(r.src, rel))
	if err != nil {
		r.t.Errorf("OpenDisk(%q): %v", rel, err)
	}
	if int64(len(data)) != size {
		r.t.Errorf("OpenDisk(%q, %d): the file has %d bytes", rel, size, len(data))
	}
	d := &shadowDisk{r: r, bs: int64(r.blockSize), path: rel, data: data, busy: map[int64]bool{}}
	r.mu.Lock()
	r.disks = append(r.disks, d)
	r.mu.Unlock()
	return d, nil
}

func (r *testRecorder) Renamed(from, to string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.renames = append(r.renames, [2]string{from, to})
	if from == to {
		return
	}
	for _, d := range r.disks {
		if !d.gone && d.path == to {
			d.gone = true // replaced by the rename
		}
	}
	for _, d := range r.disks {
		switch {
		case d.gone:
		case d.path == from:
			d.path = to
		case strings.HasPrefix(d.path, from+"/"):
			d.path = to + d.path[len(from):]
		}
	}
}

func (r *testRecorder) Removed(rel string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed = append(r.removed, rel)
	for _, d := range r.disks {
		if !d.gone && d.path == rel {
			d.gone = true
		}
	}
}

// disk returns the live shadow of the file at rel, or nil.
func (r *testRecorder) disk(rel string) *shadowDisk {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.disks {
		if !d.gone && d.path == rel {
			return d
		}
	}
	return nil
}

// mustDisk is disk that fails the test when there is none.
func (r *testRecorder) mustDisk(t testing.TB, rel string) *shadowDisk {
	t.Helper()
	d := r.disk(rel)
	if d == nil {
		t.Fatalf("no disk was opened for %s", rel)
	}
	return d
}

// verify checks, after unmount, that every disk was released exactly once
// and that the shadow of every file still in the source equals it byte for
// byte.
func (r *testRecorder) verify(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.disks {
		d.mu.Lock()
		if d.released != 1 {
			t.Errorf("disk %s released %d times, want 1", d.path, d.released)
		}
		if len(d.intents) != 0 {
			t.Errorf("disk %s: %d change(s) begun and never ended", d.path, len(d.intents))
		}
		if !d.gone {
			got, err := os.ReadFile(filepath.Join(r.src, d.path))
			if err != nil {
				t.Errorf("disk %s: %v", d.path, err)
			} else if diff := firstDiff(got, d.data); diff != "" {
				t.Errorf("disk %s: shadow differs from the backing file: %s", d.path, diff)
			}
		}
		d.mu.Unlock()
	}
}

// firstDiff describes where a and b first differ, or returns "".
func firstDiff(file, shadow []byte) string {
	if bytes.Equal(file, shadow) {
		return ""
	}
	for i := 0; i < min(len(file), len(shadow)); i++ {
		if file[i] != shadow[i] {
			return fmt.Sprintf("first at byte %d (file %#x, shadow %#x; sizes %d, %d)", i, file[i], shadow[i], len(file), len(shadow))
		}
	}
	return fmt.Sprintf("file has %d bytes, shadow %d", len(file), len(shadow))
}

// shadowDisk is the DiskRecorder of testRecorder.
type shadowDisk struct {
	r  *testRecorder
	bs int64

	// path and gone are guarded by r.mu.
	path string
	gone bool

	mu          sync.Mutex
	data        []byte
	events      []event
	syncs       int
	released    int
	busy        map[int64]bool // blocks of calls in progress
	busyAll     bool           // a Resized is in progress
	inflight    int
	maxInflight int
	touched     int // Touched calls

	// intents are the changes begun (InFlightRecorder) and not ended, by
	// token.
	intents   map[uint32][2]int64
	nextToken uint32
}

// Begin records a change about to be made (InFlightRecorder).
func (d *shadowDisk) Begin(off, n int64) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.intents == nil {
		d.intents = make(map[uint32][2]int64)
	}
	d.nextToken++
	d.intents[d.nextToken] = [2]int64{off, n}
	return d.nextToken
}

// End ends a change begun.
func (d *shadowDisk) End(token uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.intents[token]; !ok {
		d.r.t.Errorf("End(%d) of no change begun", token)
	}
	delete(d.intents, token)
}

// coveredLocked reports whether a change begun and not ended covers e: its
// range, or the size for a Resized.
func (d *shadowDisk) coveredLocked(e event) bool {
	for _, in := range d.intents {
		switch {
		case in[1] < 0 && (e.kind == evResized || e.off >= in[0]):
			return true
		case e.kind != evResized && in[1] >= 0 && e.off >= in[0] && e.off+e.n <= in[0]+in[1]:
			return true
		}
	}
	return false
}

func (d *shadowDisk) BlockSize() int { return int(d.bs) }

// Touched counts the metadata changes reported (MetadataRecorder).
func (d *shadowDisk) Touched() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.touched++
}

// enter checks the locking contract at the start of a change call and
// marks its blocks (or the whole file) busy.
func (d *shadowDisk) enter(e event) {
	d.mu.Lock()
	if d.released > 0 {
		d.r.t.Errorf("%v after Release", e)
	}
	if e.kind == evResized {
		if d.busyAll || len(d.busy) > 0 {
			d.r.t.Errorf("%v while another change is in progress", e)
		}
		d.busyAll = true
	} else {
		if d.busyAll {
			d.r.t.Errorf("%v while a Resized is in progress", e)
		}
		for b := e.off / d.bs; b <= (e.off+e.n-1)/d.bs; b++ {
			if d.busy[b] {
				d.r.t.Errorf("%v: block %d is being changed by another call", e, b)
			}
			d.busy[b] = true
		}
	}
	if !d.coveredLocked(e) {
		d.r.t.Errorf("%v outside any change begun (Begin)", e)
	}
	d.inflight++
	d.maxInflight = max(d.maxInflight, d.inflight)
	d.events = append(d.events, e)
	d.mu.Unlock()
	if d.r.during != nil {
		d.r.during(e)
	}
}

// exit ends what enter began; call it with d.mu held.
func (d *shadowDisk) exitLocked(e event) {
	if e.kind == evResized {
		d.busyAll = false
	} else {
		for b := e.off / d.bs; b <= (e.off+e.n-1)/d.bs; b++ {
			delete(d.busy, b)
		}
	}
	d.inflight--
}

// growLocked makes the shadow at least n bytes long (zero filled).
func (d *shadowDisk) growLocked(n int64) {
	if n > int64(len(d.data)) {
		d.data = append(d.data, make([]byte, n-int64(len(d.data)))...)
	}
}

// readBlockLocked copies block b of the backing file into the shadow.
func (d *shadowDisk) readBlockLocked(b int64, src io.ReaderAt) {
	buf := make([]byte, d.bs)
	n, err := src.ReadAt(buf, b*d.bs)
	if err != nil && !errors.Is(err, io.EOF) {
		d.r.t.Errorf("read back block %d: %v", b, err)
		return
	}
	d.growLocked(b*d.bs + int64(n))
	copy(d.data[b*d.bs:], buf[:n])
}

func (d *shadowDisk) Written(off int64, data []byte, src io.ReaderAt) {
	e := event{evWritten, off, int64(len(data))}
	d.enter(e)
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.exitLocked(e)
	end := off + int64(len(data))
	d.growLocked(end)
	copy(d.data[off:end], data)
	if off%d.bs != 0 {
		d.readBlockLocked(off/d.bs, src)
	}
	if end%d.bs != 0 {
		d.readBlockLocked((end-1)/d.bs, src)
	}
}

func (d *shadowDisk) Zeroed(off, n int64, src io.ReaderAt) {
	e := event{evZeroed, off, n}
	d.enter(e)
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.exitLocked(e)
	end := off + n
	d.growLocked(end)
	clear(d.data[off:end])
	if off%d.bs != 0 {
		d.readBlockLocked(off/d.bs, src)
	}
	if end%d.bs != 0 {
		d.readBlockLocked((end-1)/d.bs, src)
	}
}

func (d *shadowDisk) Changed(off, n int64, src io.ReaderAt) {
	e := event{evChanged, off, n}
	d.enter(e)
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.exitLocked(e)
	buf := make([]byte, n)
	k, err := src.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		d.r.t.Errorf("%v: read: %v", e, err)
	}
	d.growLocked(off + int64(k))
	copy(d.data[off:], buf[:k])
}

func (d *shadowDisk) Resized(size int64, src io.ReaderAt) {
	e := event{evResized, size, 0}
	d.enter(e)
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.exitLocked(e)
	if size < int64(len(d.data)) {
		d.data = d.data[:size]
	} else {
		d.growLocked(size)
	}
}

func (d *shadowDisk) Sync() error {
	d.mu.Lock()
	d.syncs++
	d.mu.Unlock()
	d.r.mu.Lock()
	defer d.r.mu.Unlock()
	return d.r.syncErr
}

// setSyncErr makes every Sync return err.
func (r *testRecorder) setSyncErr(err error) {
	r.mu.Lock()
	r.syncErr = err
	r.mu.Unlock()
}

func (d *shadowDisk) Release() {
	d.mu.Lock()
	d.released++
	d.mu.Unlock()
}

// takeEvents returns the events so far and forgets them.
func (d *shadowDisk) takeEvents() []event {
	d.mu.Lock()
	defer d.mu.Unlock()
	ev := d.events
	d.events = nil
	return ev
}

// syncCount returns how many times Sync was called.
func (d *shadowDisk) syncCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.syncs
}

// releaseCount returns how many times Release was called.
func (d *shadowDisk) releaseCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.released
}

// writtenBlocks returns the sorted, distinct blocks that the Written events
// of ev touched.
func writtenBlocks(ev []event, bs int64) []int64 {
	seen := map[int64]bool{}
	for _, e := range ev {
		if e.kind != evWritten {
			continue
		}
		for b := e.off / bs; b <= (e.off+e.n-1)/bs; b++ {
			seen[b] = true
		}
	}
	blocks := make([]int64, 0, len(seen))
	for b := range seen {
		blocks = append(blocks, b)
	}
	sort.Slice(blocks, func(i, j int) bool { return blocks[i] < blocks[j] })
	return blocks
}
