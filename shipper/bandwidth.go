package shipper

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/drfs-project/drfs/internal/units"
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
