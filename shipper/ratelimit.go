package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"golang.org/x/time/rate"

	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/target"
)

// Bandwidth is a rate in bytes per second; 0 means unlimited. It parses
// from text like "50MiB/s", "1GB/s", "500k" or "0" (see ParseBandwidth), so
// a command-line flag can be of this type.
type Bandwidth int64

// ParseBandwidth parses a rate in bytes per second: a size (units.ParseSize:
// 50MiB, 1GB, 500k) and an optional "/s". "0" means unlimited.
func ParseBandwidth(s string) (Bandwidth, error) {
	n, err := units.ParseSize(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	if err != nil {
		return 0, fmt.Errorf("shipper: bandwidth %q: want a number with an optional unit, like 50MiB/s, 1GB/s, 500k or 0 for unlimited: %w", s, err)
	}
	return Bandwidth(n), nil
}

// UnmarshalText parses text with ParseBandwidth.
func (b *Bandwidth) UnmarshalText(text []byte) error {
	v, err := ParseBandwidth(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// String formats b in the largest binary unit that keeps it whole (or
// with one decimal), e.g. "50MiB/s"; "unlimited" for 0.
func (b Bandwidth) String() string {
	if b <= 0 {
		return "unlimited"
	}
	v := float64(b)
	for _, u := range []string{"B", "KiB", "MiB", "GiB"} {
		if v < 1024 {
			return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) + u + "/s"
		}
		v /= 1024
	}
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) + "TiB/s"
}

// MarshalText formats b as String does, so it parses back.
func (b Bandwidth) MarshalText() ([]byte, error) {
	if b <= 0 {
		return []byte("0"), nil
	}
	return []byte(b.String()), nil
}

// limitStore limits the bytes Stage reads from its streams.
type limitStore struct {
	target.Store
	lim   *rate.Limiter
	burst int
}

// RateLimit wraps store so that all Stage streams together are read at
// most bytesPerSec bytes per second (a token bucket; bursts are at most
// about a hundredth of a second's worth, and 4 MiB). Other calls pass
// through. bytesPerSec <= 0 returns store unchanged.
func RateLimit(store target.Store, bytesPerSec Bandwidth) target.Store {
	if bytesPerSec <= 0 {
		return store
	}
	burst := int(min(max(int64(bytesPerSec)/100, 32<<10), 4<<20))
	return &limitStore{Store: store, lim: rate.NewLimiter(rate.Limit(bytesPerSec), burst), burst: burst}
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
		return 0, errors.New("shipper: stream is not seekable")
	}
	return s.Seek(off, whence)
}
