package agent

import (
	"strings"
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

// TestOverridesReset: --reset gives the settings it names back to the
// configuration, the hook's period with the hook; an unknown name is an
// error that lists them; a setting both given and reset is a conflict.
func TestOverridesReset(t *testing.T) {
	o := Overrides{Interval: time.Minute, Retention: time.Hour, MaxPoints: 3, AppHook: "h", AppEvery: 2 * time.Hour}
	got, err := o.reset([]string{"interval", "app-consistent-hook"})
	if want := (Overrides{Retention: time.Hour, MaxPoints: 3}); err != nil || got != want {
		t.Errorf("reset interval, hook = %+v, %v; want %+v", got, err, want)
	}
	if got, err := o.reset([]string{"all"}); err != nil || got.given() {
		t.Errorf("reset all = %+v, %v", got, err)
	}
	if _, err := o.reset([]string{"intervall"}); err == nil || !strings.Contains(err.Error(), "max-points") {
		t.Errorf("an unknown setting: %v", err)
	}
	if name := (Overrides{Retention: time.Hour}).conflicts([]string{"interval", "retention"}); name != "retention" {
		t.Errorf("conflicts = %q, want retention", name)
	}
	if name := (Overrides{Retention: time.Hour}).conflicts([]string{"interval"}); name != "" {
		t.Errorf("conflicts = %q, want none", name)
	}
}
