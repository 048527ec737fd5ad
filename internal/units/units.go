// Package units reads and writes the sizes and durations of drfs's command
// line and configuration, one way everywhere: durations are Go's with
// whole days in front ("7d", "1d12h"), sizes are numbers with binary
// (KiB, MiB; k, M) or decimal (kB, MB) units.
package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ParseDuration parses a Go duration, optionally after a number of days
// ("7d", "1d12h", "36h", "90s").
func ParseDuration(s string) (time.Duration, error) {
	bad := fmt.Errorf("%q is not a duration (such as 30s, 5m, 1h30m or 7d)", s)
	var days time.Duration
	v := s
	if i := strings.IndexByte(v, 'd'); i >= 0 {
		n, err := strconv.ParseUint(v[:i], 10, 16)
		if err != nil {
			return 0, bad
		}
		days = time.Duration(n) * 24 * time.Hour
		if v = v[i+1:]; v == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil || days > 0 && d < 0 {
		return 0, bad
	}
	return days + d, nil
}

// FormatDuration writes d without zero units, and whole days from two on
// as days: 5m, 1h30m, 90s → 1m30s, 24h, 36h, 7d. ParseDuration reads it
// back.
func FormatDuration(d time.Duration) string {
	if d < time.Second || d%time.Second != 0 {
		return d.String()
	}
	s := ""
	if day := 24 * time.Hour; d >= 2*day && d%day == 0 {
		s, d = fmt.Sprintf("%dd", d/day), 0
	}
	if h := d / time.Hour; h > 0 {
		s += fmt.Sprintf("%dh", h)
		d -= h * time.Hour
	}
	if m := d / time.Minute; m > 0 {
		s += fmt.Sprintf("%dm", m)
		d -= m * time.Minute
	}
	if d > 0 {
		s += fmt.Sprintf("%ds", d/time.Second)
	}
	return s
}

// ErrUnit is wrapped by the error of a size with an unknown unit.
var ErrUnit = errors.New("unknown unit (use B, k, KiB, kB, M, MiB, MB, G, GiB, GB, T, TiB or TB)")

// ParseSize parses a number of bytes: a number, optionally with a
// fraction, then an optional unit. B; k, M, G, T and KiB, MiB, GiB, TiB are
// powers of 1024; kB (or KB), MB, GB and TB are powers of 1000. Units are
// case-sensitive except k/K. A fraction of a byte rounds up to 1.
func ParseSize(s string) (int64, error) {
	in := s
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	v, err := strconv.ParseFloat(num, 64)
	if num == "" || err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a size: want a number with an optional unit, like 512MiB, 1GB or 500k", in)
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
		return 0, fmt.Errorf("size %q: %q: %w", in, unit, ErrUnit)
	}
	v *= mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", in)
	}
	if v > 0 && v < 1 {
		v = 1
	}
	return int64(v), nil
}

// Bytes writes n in binary units: 512 B, 5.0 GiB.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%s%.1f %ciB", neg, float64(n)/float64(div), "KMGTPE"[exp])
}
