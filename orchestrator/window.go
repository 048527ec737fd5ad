package orchestrator

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DefaultWindowSpec is the resync window unless configured: nights and
// weekends, when a full comparison of the disks disturbs the least.
const DefaultWindowSpec = "18:00-08:00,sat,sun"

// Window is when resynchronizations may run, in local time (or the
// location given with In). Its text form is a comma-separated list of
//
//	HH:MM-HH:MM   a time range every day, from the first time up to (not
//	              including) the second; one that ends earlier than it
//	              starts runs past midnight; 24:00 ends a range at midnight
//	mon … sun     a whole day (full names too: saturday)
//	mon-fri       a range of whole days, in week order (fri-mon wraps)
//
// or one of the words "always" and "never" (a resynchronization then runs
// only when asked for now). "18:00-08:00,sat,sun" is every night from 18:00
// to 08:00 and the whole weekend.
//
// The zero Window is the default one (DefaultWindowSpec, local time).
type Window struct {
	spec   string // canonical; "" for the zero Window
	always bool
	never  bool
	ranges []clockRange
	days   [7]bool // by time.Weekday
	loc    *time.Location
}

// clockRange is [from, to) in minutes after midnight; to <= from wraps past
// midnight.
type clockRange struct{ from, to int }

// DefaultWindow returns the window of DefaultWindowSpec.
func DefaultWindow() Window {
	w, err := ParseWindow(DefaultWindowSpec)
	if err != nil {
		panic(err)
	}
	return w
}

var dayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// ParseWindow parses the text form of a window (see Window).
func ParseWindow(s string) (Window, error) {
	fail := func(format string, args ...any) (Window, error) {
		return Window{}, fmt.Errorf("resync window %q: %s", s, fmt.Sprintf(format, args...))
	}
	text := strings.ToLower(strings.TrimSpace(s))
	switch text {
	case "":
		return fail(`empty: give times like 18:00-08:00, days like sat,sun, or "always" or "never"`)
	case "always":
		return Window{spec: text, always: true}, nil
	case "never":
		return Window{spec: text, never: true}, nil
	}
	var w Window
	var canon []string
	for item := range strings.SplitSeq(text, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return fail("an item is empty (two commas, or a comma at an end)")
		}
		if item == "always" || item == "never" {
			return fail("%q cannot be combined with other items", item)
		}
		a, b, isRange := strings.Cut(item, "-")
		a, b = strings.TrimSpace(a), strings.TrimSpace(b)
		if strings.Contains(item, ":") {
			if !isRange {
				return fail("%q is a time, not a range: give HH:MM-HH:MM", item)
			}
			from, err := parseClock(a, false)
			if err != nil {
				return fail("%v", err)
			}
			to, err := parseClock(b, true)
			if err != nil {
				return fail("%v", err)
			}
			if from == to {
				return fail("%q is empty: a range starts and ends at different times (00:00-24:00 is the whole day)", item)
			}
			w.ranges = append(w.ranges, clockRange{from, to})
			canon = append(canon, fmtClock(from)+"-"+fmtClock(to))
			continue
		}
		first, err := parseDay(a)
		if err != nil {
			return fail("%v", err)
		}
		last := first
		if isRange {
			if last, err = parseDay(b); err != nil {
				return fail("%v", err)
			}
		}
		for d := first; ; d = (d + 1) % 7 {
			w.days[d] = true
			if d == last {
				break
			}
		}
		if isRange {
			canon = append(canon, dayNames[first]+"-"+dayNames[last])
		} else {
			canon = append(canon, dayNames[first])
		}
	}
	w.spec = strings.Join(canon, ",")
	return w, nil
}

// parseClock parses H:MM or HH:MM; 24:00 only if end.
func parseClock(s string, end bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || err1 != nil || err2 != nil || len(h) < 1 || len(h) > 2 || len(m) != 2 || h[0] == '+' || h[0] == '-' || m[0] == '+' || m[0] == '-' {
		return 0, fmt.Errorf("%q is not a time of day (HH:MM)", s)
	}
	if end && hh == 24 && mm == 0 {
		return 24 * 60, nil
	}
	if hh > 23 || mm > 59 {
		return 0, fmt.Errorf("%q is not a time of day (00:00 to 23:59, or 24:00 to end a range)", s)
	}
	return hh*60 + mm, nil
}

func fmtClock(m int) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

func parseDay(s string) (time.Weekday, error) {
	for d, name := range dayNames {
		if s == name || len(s) > 3 && strings.ToLower(time.Weekday(d).String()) == s {
			return time.Weekday(d), nil
		}
	}
	return 0, fmt.Errorf("%q is neither a day (mon, tue, wed, thu, fri, sat, sun) nor a time range (HH:MM-HH:MM)", s)
}

func (w Window) norm() Window {
	if w.spec == "" {
		loc := w.loc
		w = DefaultWindow()
		w.loc = loc
	}
	return w
}

// In returns the window read in loc; nil means local time.
func (w Window) In(loc *time.Location) Window {
	w.loc = loc
	return w
}

// Location returns the location the window is read in.
func (w Window) Location() *time.Location {
	if w.loc == nil {
		return time.Local
	}
	return w.loc
}

// String returns the canonical text form.
func (w Window) String() string { return w.norm().spec }

// InWindow reports whether t falls inside the window.
func (w Window) InWindow(t time.Time) bool {
	w = w.norm()
	switch {
	case w.always:
		return true
	case w.never:
		return false
	}
	t = t.In(w.Location())
	if w.days[t.Weekday()] {
		return true
	}
	m := t.Hour()*60 + t.Minute()
	for _, r := range w.ranges {
		if r.from < r.to && m >= r.from && m < r.to {
			return true
		}
		if r.to <= r.from && (m >= r.from || m < r.to) {
			return true
		}
	}
	return false
}

// NextOpen returns the first time from t on that is inside the window: t
// itself if it is inside, the zero Time for a "never" window.
func (w Window) NextOpen(t time.Time) time.Time {
	w = w.norm()
	if w.InWindow(t) {
		return t
	}
	if w.never {
		return time.Time{}
	}
	// The window opens at a midnight or at the start of a range: try those
	// of the next eight days, earliest first.
	lt := t.In(w.Location())
	var best time.Time
	for i := 0; i <= 7; i++ {
		y, m, d := lt.Date()
		starts := []int{0}
		for _, r := range w.ranges {
			starts = append(starts, r.from)
		}
		for _, s := range starts {
			c := time.Date(y, m, d+i, s/60, s%60, 0, 0, w.Location())
			if c.After(t) && w.InWindow(c) && (best.IsZero() || c.Before(best)) {
				best = c
			}
		}
		if !best.IsZero() {
			return best
		}
	}
	return best
}

// MarshalText returns the canonical text form; the location is not part
// of it.
func (w Window) MarshalText() ([]byte, error) { return []byte(w.String()), nil }

// UnmarshalText parses the text form, keeping the window's location.
func (w *Window) UnmarshalText(b []byte) error {
	v, err := ParseWindow(string(b))
	if err != nil {
		return err
	}
	v.loc = w.loc
	*w = v
	return nil
}
