package azblob

import (
	"context"
	"fmt"
	"slices"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"
)

// This file is what Commit knows of a disk's contents at the newest point,
// to fill the gaps between dirty blocks that it coalesces into one page
// write (read-modify-write).
//
// A gap is a range that the generation does not change, so the point being
// built holds there what the newest point holds, and so does the disk blob
// at any time during the commit: the commit (this attempt, an earlier cut
// one, or another process finishing the same marker) writes a gap only
// with the bytes it read there, and writes the generation's records only
// outside the gaps. So a gap is read from the disk blob itself, and each
// gap write puts back bytes the blob already holds: applying a stream
// stays idempotent. (The newest point's snapshot holds the same bytes; the
// blob is read because a container SAS on Azurite cannot read snapshots.)
//
// The same holds of the blob's allocated page ranges, listed once after
// the blob is resized: where the blob is a hole, the newest point holds
// zeros and the generation writes either nothing or zeros, so a zero
// extent of the generation there needs no request, and a gap there needs
// no read.

// baseView is what Commit knows of a disk blob at the newest point: its
// allocated page ranges. Outside them it holds zeros. A baseView of a blob
// created empty for the commit is all zeros.
type baseView struct {
	pb     *pageblob.Client // the disk blob; nil if it is all holes
	name   string
	ranges []extent // allocated, sorted, disjoint, not adjacent
	known  bool     // ranges were listed (or the base is empty); else nothing is a known hole
}

// extent is the byte range [off, end).
type extent struct{ off, end int64 }

// newBaseView lists the allocated page ranges of disk blob pb.
func (s *Store) newBaseView(ctx context.Context, pb *pageblob.Client, name string) (*baseView, error) {
	v := &baseView{name: name, known: true}
	pager := pb.NewGetPageRangesPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, s.fail("page ranges of", name, err)
		}
		s.stats.baseLists.Add(1)
		for _, pr := range page.PageRange {
			if pr.Start == nil || pr.End == nil || *pr.End < *pr.Start {
				continue
			}
			start, end := *pr.Start, *pr.End+1
			if n := len(v.ranges); n > 0 && v.ranges[n-1].end >= start {
				v.ranges[n-1].end = max(v.ranges[n-1].end, end)
				continue
			}
			v.ranges = append(v.ranges, extent{start, end})
		}
	}
	slices.SortFunc(v.ranges, func(a, b extent) int { return compareInt64(a.off, b.off) })
	if len(v.ranges) > 0 {
		v.pb = pb
	}
	return v, nil
}

func compareInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// allocated returns the first allocated range that intersects [off, end),
// clipped to it, and whether there is one.
func (v *baseView) allocated(off, end int64) (extent, bool) {
	i, _ := slices.BinarySearchFunc(v.ranges, off, func(e extent, off int64) int {
		if e.end <= off {
			return -1
		}
		return 1
	})
	if i == len(v.ranges) || v.ranges[i].off >= end {
		return extent{}, false
	}
	return extent{max(off, v.ranges[i].off), min(end, v.ranges[i].end)}, true
}

// hole says whether the base holds only zeros in [off, end), known without
// reading.
func (v *baseView) hole(off, end int64) bool {
	if !v.known {
		return false
	}
	_, ok := v.allocated(off, end)
	return !ok
}

// fill puts the base's contents of the gaps into buf, which holds the
// range from off and is zero in the gaps. The allocated parts of all gaps
// are read with one ranged GET into scratch (grown as needed), from the
// first allocated byte to the last: one request per page write.
func (v *baseView) fill(ctx context.Context, s *Store, buf []byte, off int64, gaps []extent, scratch *[]byte) error {
	var parts []extent
	for _, g := range gaps {
		for at := g.off; at < g.end; {
			e, ok := v.allocated(at, g.end)
			if !ok {
				break
			}
			parts = append(parts, e)
			at = e.end
		}
	}
	if len(parts) == 0 {
		return nil
	}
	lo, hi := parts[0].off, parts[len(parts)-1].end
	if int64(cap(*scratch)) < hi-lo {
		*scratch = make([]byte, hi-lo)
	}
	b := (*scratch)[:hi-lo]
	s.stats.gapReads.Add(1)
	s.stats.gapReadBytes.Add(hi - lo)
	if _, err := v.pb.DownloadBuffer(ctx, b, &blob.DownloadBufferOptions{
		Range: blob.HTTPRange{Offset: lo, Count: hi - lo}, Concurrency: 1, BlockSize: hi - lo,
	}); err != nil {
		return s.fail(fmt.Sprintf("read gap [%d, %d) of", lo, hi), v.name, err)
	}
	for _, p := range parts {
		copy(buf[p.off-off:p.end-off], b[p.off-lo:p.end-lo])
	}
	return nil
}
