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

	"github.com/drfs-project/drfs/target"
)

// Bandwidth is a rate in bytes per second; 0 means unlimited. It parses
// from text like "50MiB/s", "1GB/s", "500k" or "0" (see ParseBandwidth), so
// a command-line flag can be of this type.
type Bandwidth int64

// ParseBandwidth parses a rate in bytes per second: a number, optionally
// with a fraction, then an optional unit and an optional "/s". Units:
// B; k, M, G, T and KiB, MiB, GiB, TiB are powers of 1024; kB (or KB), MB,
// GB and TB are powers of 1000. Units are case-sensitive except k/K. "0"
// means unlimited.
func ParseBandwidth(s string) (Bandwidth, error) {
	in := s
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(s, "/s")
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	v, err := strconv.ParseFloat(num, 64)
	if num == "" || err != nil || v < 0 {
		return 0, fmt.Errorf("shipper: bandwidth %q: want a number with an optional unit, like 50MiB/s, 1GB/s, 500k or 0 for unlimited", in)
	}
	const ki = 1024
	mult := map[string]float64{
		"": 1, "B": 1,
		"k": ki, "K": ki, "KiB": ki, "kB": 1e3, "KB": 1e3,
		"M": ki * ki, "MiB": ki * ki, "MB": 1e6,
		"G": ki * ki * ki, "GiB": ki * ki * ki, "GB": 1e9,
		"T": ki * ki * ki * ki, "TiB": ki * ki * ki * ki, "TB": 1e12,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("shipper: bandwidth %q: unknown unit %q (use B, k, KiB, kB, M, MiB, MB, G, GiB, GB, T, TiB or TB)", in, unit)
	}
	v *= mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("shipper: bandwidth %q is too large", in)
	}
	if v > 0 && v < 1 {
		v = 1
	}
	return Bandwidth(v), nil
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
