package tracker

import (
	"slices"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// prefetchWindow is how many bytes of block data ReadGeneration reads
// ahead of what it emits (see ReadGeneration). Large enough that a window
// of scattered 4 KiB slots keeps the disk's queue full (4,096 reads), small
// enough that two windows of page cache cost nothing next to the agent's
// memory limit.
const prefetchWindow = 16 << 20

// prefetchGap is the largest hole between two slots that one read-ahead
// request spans: reading a few blocks too many is cheaper than another
// request.
const prefetchGap = 64 << 10

// readEntry is one index entry of a generation being read.
type readEntry struct {
	disk  uint32
	block uint64
	e     indexEntry
}

// prefetcher asks the kernel to read ranges of a segment into the page
// cache without waiting for them. It does nothing for a file without a
// descriptor (an in-memory filesystem) or where the system has no such
// request.
type prefetcher struct {
	fd     uintptr
	bs     int64
	window int64    // most bytes read ahead per call
	ranges []extent // reused: byte ranges [start, end)
}

func newPrefetcher(f vfs.File, bs, window int64) *prefetcher {
	return &prefetcher{fd: f.Fd(), bs: bs, window: window}
}

// prefetch starts reading the slots of the data entries of w, at most
// window bytes of them, in offset order with neighbours merged.
func (p *prefetcher) prefetch(w []readEntry) {
	if p.fd == vfs.InvalidFd || !prefetchSupported {
		return
	}
	p.ranges = p.ranges[:0]
	budget := p.window
	for _, re := range w {
		if re.e.kind != KindData || budget <= 0 {
			continue
		}
		n := min(int64(re.e.count)*p.bs, budget)
		budget -= n
		p.ranges = append(p.ranges, extent{uint64(re.e.arg), uint64(re.e.arg + n)})
	}
	if len(p.ranges) == 0 {
		return
	}
	slices.SortFunc(p.ranges, func(a, b extent) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	cur := p.ranges[0]
	for _, r := range p.ranges[1:] {
		if r.start <= cur.end+prefetchGap {
			cur.end = max(cur.end, r.end)
			continue
		}
		willNeed(p.fd, int64(cur.start), int64(cur.end-cur.start))
		cur = r
	}
	willNeed(p.fd, int64(cur.start), int64(cur.end-cur.start))
}
