package wrap

import (
	"context"
	"errors"
	"io"

	"golang.org/x/time/rate"

	"github.com/drfs-project/drfs/target"
)

// limitStore limits the bytes Stage reads from its streams.
type limitStore struct {
	target.Store
	lim   *rate.Limiter
	burst int
}

// RateLimit wraps store so that all Stage streams together are read at
// most bytesPerSec bytes per second (a token bucket; bursts are at most
// about a hundredth of a second's worth, and 4 MiB). Other calls pass
// through, and the store returned is a target.Checksummer if store is one.
// bytesPerSec <= 0 returns store unchanged.
func RateLimit(store target.Store, bytesPerSec int64) target.Store {
	if bytesPerSec <= 0 {
		return store
	}
	burst := int(min(max(bytesPerSec/100, 32<<10), 4<<20))
	l := &limitStore{Store: store, lim: rate.NewLimiter(rate.Limit(bytesPerSec), burst), burst: burst}
	if cs, ok := store.(target.Checksummer); ok {
		return &limitChecksummer{l, cs}
	}
	return l
}

// limitChecksummer is a limitStore of a store that is a
// target.Checksummer: it is one too. Checksums are not limited: only
// sums cross the network, and the limit is on what is shipped.
type limitChecksummer struct {
	*limitStore
	target.Checksummer
}

func (l *limitStore) Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) error {
	return l.Store.Stage(ctx, vm, gen, disk, &limitReader{ctx: ctx, r: stream, l: l})
}

// limitReader takes tokens for every byte it reads. It is an io.Seeker
// when the reader under it is, so Retry above it can rewind.
type limitReader struct {
	ctx context.Context
	r   io.Reader
	l   *limitStore
}

func (r *limitReader) Read(p []byte) (int, error) {
	if len(p) > r.l.burst {
		p = p[:r.l.burst]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.lim.WaitN(r.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

func (r *limitReader) Seek(off int64, whence int) (int64, error) {
	s, ok := r.r.(io.Seeker)
	if !ok {
		return 0, errors.New("wrap: stream is not seekable")
	}
	return s.Seek(off, whence)
}
