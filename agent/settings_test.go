package agent

import (
	"testing"
	"time"
)

// TestOverridesMerge: the settings a later drfs protect gives replace
// those it names and keep the others; a hook gets its default period.
func TestOverridesMerge(t *testing.T) {
	old := Overrides{Interval: 30 * time.Second, Retention: 24 * time.Hour}
	got := old.merge(Overrides{Interval: time.Minute, MaxPoints: 5})
	if want := (Overrides{Interval: time.Minute, Retention: 24 * time.Hour, MaxPoints: 5}); got != want {
		t.Errorf("merge = %+v, want %+v", got, want)
	}
	got = got.merge(Overrides{AppHook: "freeze.sh"})
	if got.AppHook != "freeze.sh" || got.AppEvery != time.Hour || got.Interval != time.Minute {
		t.Errorf("a hook added: %+v", got)
	}
	if got.merge(Overrides{}) != got || (Overrides{}).given() || !(Overrides{MaxPoints: 1}).given() {
		t.Error("an empty request changes nothing and gives nothing")
	}
}
