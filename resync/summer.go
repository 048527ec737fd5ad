package resync

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/drfs-project/drfs/target"
)

// summer computes the sums of the point's chunks: by the store where the
// replica lives, or here from a DiskReader.
type summer interface {
	sums(ctx context.Context, chunk int64, ranges []target.Extent) ([]target.Sum, error)
	storeSums() bool // the store computes them
	read() int64     // bytes of the point read here so far
	calls() int64    // requests made to the store so far
	close()
}

func newSummer(ctx context.Context, store target.Store, vm string, gen uint64, disk string, chunks []int64) (summer, error) {
	s := &storeSummer{store: store, vm: vm, gen: gen, disk: disk, chunks: chunks}
	s.cs, _ = store.(target.Checksummer)
	if s.cs == nil {
		if err := s.fallBack(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// storeSummer asks a target.Checksummer, and falls back on reading the
// point if the store turns out not to have the capability (a remote server
// of an older version).
type storeSummer struct {
	store    target.Store
	cs       target.Checksummer // nil once fallen back
	vm, disk string
	gen      uint64
	chunks   []int64
	reader   *readerSummer
	requests int64
}

func (s *storeSummer) fallBack(ctx context.Context) error {
	r, err := s.store.Open(ctx, s.vm, s.gen, s.disk)
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	exts, err := r.Extents()
	if err != nil {
		r.Close()
		return fmt.Errorf("resync: extents of %s/%s point %d: %w", s.vm, s.disk, s.gen, err)
	}
	if exts == nil {
		exts = []target.Extent{}
	}
	s.cs, s.reader = nil, &readerSummer{r: r, exts: exts, chunks: s.chunks}
	return nil
}

func (s *storeSummer) sums(ctx context.Context, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	if s.cs == nil {
		return s.reader.sums(ctx, chunk, ranges)
	}
	var out []target.Sum
	for len(ranges) > 0 {
		batch, rest := splitRequest(chunk, ranges)
		sums, err := s.cs.Checksums(ctx, s.vm, s.gen, s.disk, chunk, batch)
		s.requests++
		if errors.Is(err, errors.ErrUnsupported) && out == nil {
			if err := s.fallBack(ctx); err != nil {
				return nil, err
			}
			return s.reader.sums(ctx, chunk, ranges)
		}
		if err != nil {
			return nil, fmt.Errorf("resync: checksums of %s/%s point %d: %w", s.vm, s.disk, s.gen, err)
		}
		if want := chunkCount(chunk, batch); int64(len(sums)) != want {
			return nil, fmt.Errorf("resync: checksums of %s/%s point %d: the store answered %d sums for %d chunks", s.vm, s.disk, s.gen, len(sums), want)
		}
		out = append(out, sums...)
		ranges = rest
	}
	return out, nil
}

func (s *storeSummer) storeSums() bool { return s.cs != nil }

func (s *storeSummer) calls() int64 { return s.requests }

func (s *storeSummer) read() int64 {
	if s.reader == nil {
		return 0
	}
	return s.reader.read
}

func (s *storeSummer) close() {
	if s.reader != nil {
		s.reader.r.Close()
	}
}

// splitRequest returns the first ranges that hold at most target.MaxSums
// chunks (splitting a range if needed) and the rest.
func splitRequest(chunk int64, ranges []target.Extent) (batch, rest []target.Extent) {
	var n int64
	for i, rg := range ranges {
		c := rg.Len / chunk
		if n+c <= target.MaxSums {
			n += c
			continue
		}
		take := (target.MaxSums - n) * chunk
		batch = append(ranges[:i:i], target.Extent{Off: rg.Off, Len: take})
		if take == 0 {
			batch = ranges[:i:i]
		}
		rest = append([]target.Extent{{Off: rg.Off + take, Len: rg.Len - take}}, ranges[i+1:]...)
		return batch, rest
	}
	return ranges, nil
}

func chunkCount(chunk int64, ranges []target.Extent) int64 {
	var n int64
	for _, rg := range ranges {
		n += rg.Len / chunk
	}
	return n
}

// readerSummer computes the sums from a DiskReader of the point: the
// replica's bytes come here (across the network for a remote store). It
// reads each window once: the first level's request computes every
// level's sums of the window, which the finer levels' requests then find.
type readerSummer struct {
	r      target.DiskReader
	exts   []target.Extent
	chunks []int64
	read   int64

	off, span int64          // the window of sums
	cache     [][]target.Sum // per level
}

func (s *readerSummer) sums(ctx context.Context, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	if len(ranges) == 1 && chunk == s.chunks[0] {
		sums, n, err := levelSums(ctx, s.r, s.r.Size(), s.exts, s.chunks, ranges[0].Off, ranges[0].Len)
		s.read += n
		if err != nil {
			s.cache = nil
			return nil, err
		}
		s.off, s.span, s.cache = ranges[0].Off, ranges[0].Len, sums
		return sums[0], nil
	}
	l := slices.Index(s.chunks, chunk)
	if l < 0 || s.cache == nil {
		return nil, fmt.Errorf("resync: sums of chunks of %d asked before the window's first level", chunk)
	}
	var out []target.Sum
	for _, rg := range ranges {
		if rg.Off < s.off || rg.Off+rg.Len > s.off+s.span {
			return nil, fmt.Errorf("resync: sums of [%d, +%d) asked outside the window [%d, +%d)", rg.Off, rg.Len, s.off, s.span)
		}
		i := (rg.Off - s.off) / chunk
		out = append(out, s.cache[l][i:i+rg.Len/chunk]...)
	}
	return out, nil
}
