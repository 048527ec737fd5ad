package recovery

import (
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
)

// TestSelectPoint: every form of --point, and its errors.
func TestSelectPoint(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	pt := func(gen uint64, min int, kind target.PointKind) target.Point {
		return target.Point{VM: "vm1", Generation: gen, Frozen: t0.Add(time.Duration(min) * time.Minute), Kind: kind}
	}
	points := []target.Point{
		pt(3, 0, target.KindInitial),
		pt(4, 10, target.KindGeneration),
		pt(5, 20, target.KindGeneration),
		pt(6, 30, target.KindResync),
	}
	now := t0.Add(time.Hour)
	cases := []struct {
		spec    string
		anyKind bool
		want    uint64
		err     string
	}{
		{spec: "latest", want: 5},
		{spec: "latest-processed", want: 6},
		{spec: "4", want: 4},
		{spec: "3", want: 3}, // the caller refuses a fuzzy one without --force
		{spec: "9", err: "no recovery point 9"},
		{spec: t0.Add(25 * time.Minute).Format(time.RFC3339), want: 5},
		{spec: t0.Add(20 * time.Minute).Format(time.RFC3339), want: 5}, // at the cut
		{spec: t0.Add(19 * time.Minute).Format(time.RFC3339), want: 4},
		{spec: t0.Add(35 * time.Minute).Format(time.RFC3339), want: 5},
		{spec: t0.Add(35 * time.Minute).Format(time.RFC3339), anyKind: true, want: 6},
		{spec: "-50m", want: 4},
		{spec: "-1h", anyKind: true, want: 3},
		{spec: "-1h", err: "only fuzzy copies"},
		{spec: "-2h", err: "no recovery point cut at or before"},
		{spec: "2000-01-01T00:00:00Z", err: "the oldest, 3"},
		{spec: "yesterday", err: "RFC 3339"},
		{spec: "-1x", err: "RFC 3339"},
	}
	for _, c := range cases {
		p, err := SelectPoint(points, c.spec, now, c.anyKind)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: got %v, %v; want an error with %q", c.spec, p.Generation, err, c.err)
		case c.err == "" && (err != nil || p.Generation != c.want):
			t.Errorf("%s (any kind %v): got %d, %v; want %d", c.spec, c.anyKind, p.Generation, err, c.want)
		}
	}
	if _, err := SelectPoint(points[:1], "latest", now, false); err == nil || !strings.Contains(err.Error(), "latest-processed") {
		t.Errorf("latest with only the initial copy: %v", err)
	}
}
