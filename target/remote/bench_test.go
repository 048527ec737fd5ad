package remote_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
)

// benchStream returns the frame stream of a generation writing mib MiB of
// random (incompressible) 4 KiB blocks to a new disk of that size: the
// initial replication of a disk. DRFS_BENCH_MIB overrides mib.
func benchStream(b *testing.B, mib int) ([]byte, int64) {
	if s := os.Getenv("DRFS_BENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		mib = n
	}
	const bs = 4096
	size := uint64(mib) << 20
	var buf bytes.Buffer
	buf.Grow(int(size) + int(size)/100)
	fw, err := frame.NewWriter(&buf, frame.Header{
		Kind: frame.StreamGeneration, VM: "bench", Disk: "d", Generation: 1,
		BlockSize: bs, DiskSize: size, Created: time.Unix(1700000000, 0),
	})
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	block := make([]byte, bs)
	for i := range size / bs {
		rng.Read(block)
		if err := fw.Data(i, block); err != nil {
			b.Fatal(err)
		}
	}
	if err := fw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes(), int64(size)
}

var benchCommit = target.Commit{Source: "bench", Kind: target.KindInitial, Disks: []string{"d"}}

// swapStore is a store whose directory store the benchmark replaces before
// each iteration, so that every iteration is an initial replication.
type swapStore struct {
	target.Store
	cur atomic.Pointer[dirstore.Store]
}

func (s *swapStore) Stage(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error {
	return s.cur.Load().Stage(ctx, vm, gen, disk, r)
}

func (s *swapStore) Commit(ctx context.Context, vm string, gen uint64, c target.Commit) error {
	return s.cur.Load().Commit(ctx, vm, gen, c)
}

// fresh replaces the directory store with a new, empty one.
func (s *swapStore) fresh(b *testing.B) {
	if old := s.cur.Load(); old != nil {
		old.Close()
	}
	dir, err := os.MkdirTemp(b.TempDir(), "store")
	if err != nil {
		b.Fatal(err)
	}
	st, err := dirstore.Open(dir, dirstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	s.cur.Store(st)
}

// BenchmarkStageCommit: Stage+Commit of 256 MiB of random 4 KiB blocks
// (an initial replication), directly on a directory store and through a
// Client and a Server on loopback TLS in front of one. The MB/s are disk
// bytes; the stream is about 0.5% larger.
func BenchmarkStageCommit(b *testing.B) {
	stream, size := benchStream(b, 256)
	run := func(b *testing.B, st target.Store, sw *swapStore) {
		b.SetBytes(size)
		for b.Loop() {
			b.StopTimer()
			sw.fresh(b)
			b.StartTimer()
			if err := st.Stage(ctx, "bench", 1, "d", bytes.NewReader(stream)); err != nil {
				b.Fatal(err)
			}
			if err := st.Commit(ctx, "bench", 1, benchCommit); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		sw.cur.Load().Close()
	}
	b.Run("dirstore", func(b *testing.B) {
		sw := &swapStore{}
		run(b, sw, sw)
	})
	b.Run("remote", func(b *testing.B) {
		sw := &swapStore{}
		pki, url, _ := serveStore(b, func(string) (target.Store, error) { return sw, nil })
		run(b, dialPKI(b, pki, url), sw)
	})
}
