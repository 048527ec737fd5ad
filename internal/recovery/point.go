package recovery

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/drfs-project/drfs/target"
)

// SelectPoint finds the point named by spec among points (oldest first):
//   - latest: the newest crash-consistent point (kind generation or snapshot);
//   - latest-processed: the newest point of any kind, which may be a fuzzy
//     initial or resync copy: the replica as the target holds it;
//   - a number: that generation;
//   - a time, RFC 3339 or relative to now ("-1h", "-90m"): the newest
//     crash-consistent point cut at or before it (of any kind with anyKind).
func SelectPoint(points []target.Point, spec string, now time.Time, anyKind bool) (target.Point, error) {
	consistent := func(p target.Point) bool { return anyKind || p.Kind.Consistent() }
	switch {
	case spec == "latest":
		for i := len(points) - 1; i >= 0; i-- {
			if points[i].Kind.Consistent() {
				return points[i], nil
			}
		}
		return target.Point{}, errors.New("no crash-consistent recovery point yet: the initial copy is finalised by the next interval's point (latest-processed takes the fuzzy copy)")
	case spec == "latest-processed":
		if len(points) == 0 {
			return target.Point{}, fmt.Errorf("no recovery point: %w", target.ErrNotFound)
		}
		return points[len(points)-1], nil
	}
	if gen, err := strconv.ParseUint(spec, 10, 64); err == nil {
		for _, p := range points {
			if p.Generation == gen {
				return p, nil
			}
		}
		return target.Point{}, fmt.Errorf("no recovery point %d (it may have expired): %w", gen, target.ErrNotFound)
	}
	at, err := parseTime(spec, now)
	if err != nil {
		return target.Point{}, err
	}
	for i := len(points) - 1; i >= 0; i-- {
		if !points[i].Frozen.After(at) && consistent(points[i]) {
			return points[i], nil
		}
	}
	if len(points) > 0 && points[0].Frozen.After(at) {
		return target.Point{}, fmt.Errorf("no recovery point cut at or before %s: the oldest, %s, was cut at %s: %w",
			at.Local().Format(time.RFC3339), points[0].ID(), points[0].Frozen.Local().Format(time.RFC3339), target.ErrNotFound)
	}
	return target.Point{}, fmt.Errorf("no crash-consistent recovery point cut at or before %s (only fuzzy copies; --force takes one): %w", at.Local().Format(time.RFC3339), target.ErrNotFound)
}

// parseTime reads an RFC 3339 time or a negative duration from now.
func parseTime(spec string, now time.Time) (time.Time, error) {
	if strings.HasPrefix(spec, "-") {
		d, err := time.ParseDuration(spec)
		if err == nil {
			return now.Add(d), nil
		}
	} else if t, err := time.Parse(time.RFC3339Nano, spec); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("point %q: give a point number from drfs points, latest, latest-processed, an RFC 3339 time (2026-11-23T09:00:00Z) or a time before now (-1h)", spec)
}
