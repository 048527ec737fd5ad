package dirstore

import (
	"errors"
	"strings"
	"testing"

	"github.com/drfs-project/drfs/target"
)

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		name     string
		vm, disk bool // valid as a VM name, as a disk name
	}{
		{"vm", true, true},
		{".hidden", true, true},
		{"a b", true, true},
		{"dir/disk.qcow2", false, true},
		{"a/.b/c", false, true},
		{"...", true, true},
		{".drfs-lock", false, true},
		{".drfsx", false, true},
		{strings.Repeat("x", 255), true, true},
		{strings.Repeat("x", 256), false, false},
		{"", false, false},
		{".", false, false},
		{"..", false, false},
		{"/abs", false, false},
		{"a/../../b", false, false},
		{"a//b", false, false},
		{"a/", false, false},
		{"a\x00", false, false},
		{"\xff", false, false},
	} {
		if err := checkVM(tc.name); (err == nil) != tc.vm || err != nil && !errors.Is(err, target.ErrBadName) {
			t.Errorf("checkVM(%q) = %v, want valid %v", tc.name, err, tc.vm)
		}
		if err := checkDisk(tc.name); (err == nil) != tc.disk || err != nil && !errors.Is(err, target.ErrBadName) {
			t.Errorf("checkDisk(%q) = %v, want valid %v", tc.name, err, tc.disk)
		}
	}
}

func TestConflict(t *testing.T) {
	for _, tc := range []struct {
		disks []string
		clash bool
	}{
		{[]string{"a", "b", "c/d"}, false},
		{[]string{"a", "ab/c"}, false},
		{[]string{"a", "a/b"}, true},
		{[]string{"x/y/z", "x/y"}, true},
		{[]string{"x/y/z", "x"}, true},
		{[]string{"x/y", "x/z"}, false},
	} {
		if _, _, got := conflict(tc.disks); got != tc.clash {
			t.Errorf("conflict(%q) = %v, want %v", tc.disks, got, tc.clash)
		}
	}
}
