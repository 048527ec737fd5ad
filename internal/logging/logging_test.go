package logging

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var at = time.Date(2025, 6, 1, 12, 30, 45, 123456789, time.FixedZone("", 2*3600))

// record writes one record through h, at a fixed time.
func record(t *testing.T, h slog.Handler, level slog.Level, msg string, args ...any) {
	t.Helper()
	r := slog.NewRecord(at, level, msg, 0)
	r.Add(args...)
	if err := h.Handle(t.Context(), r); err != nil {
		t.Fatal(err)
	}
}

func TestTerminalShape(t *testing.T) {
	var b bytes.Buffer
	h := NewHandler(&b, nil)
	record(t, h, slog.LevelInfo, "vm1: recovery point 5 on target: 3 block(s)")
	record(t, h, slog.LevelWarn, "remote: connection refused", "addr", "10.0.0.9:5123", "err", errors.New("tls: bad certificate"))
	record(t, h, slog.LevelError, "vm1: replication STOPPED: no space", "n", 3, "ok", true, "empty", "", "eq", "a=b")
	want := `2025-06-01T12:30:45.123+02:00 INFO vm1: recovery point 5 on target: 3 block(s)
2025-06-01T12:30:45.123+02:00 WARN remote: connection refused addr=10.0.0.9:5123 err="tls: bad certificate"
2025-06-01T12:30:45.123+02:00 ERROR vm1: replication STOPPED: no space n=3 ok=true empty="" eq="a=b"
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestCommandShape(t *testing.T) {
	var b bytes.Buffer
	h := NewHandler(&b, &Options{Command: "drfs"})
	if h.Enabled(t.Context(), slog.LevelDebug) {
		t.Error("debug enabled at the default level")
	}
	record(t, h, slog.LevelInfo, "vm1 restored: 2 disk(s)")
	record(t, h, slog.LevelWarn, "point 3 is a fuzzy copy")
	record(t, h, slog.LevelError, "no such VM", "vm", "vm9")
	want := `drfs: vm1 restored: 2 disk(s)
drfs: warning: point 3 is a fuzzy copy
drfs: no such VM vm=vm9
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestJournalShape(t *testing.T) {
	var b bytes.Buffer
	h := NewHandler(&b, &Options{Level: slog.LevelDebug, Journal: true})
	record(t, h, slog.LevelDebug, "remote: call failed", "call", "GET /v1/vms")
	record(t, h, slog.LevelInfo, "vm1: Protected → Resynchronizing")
	record(t, h, slog.LevelWarn, "vm1/disk.img: resynchronization required: changed outside the mount")
	record(t, h, slog.LevelError, "agent: cannot save its state")
	want := `<7>DEBUG remote: call failed call="GET /v1/vms"
<6>INFO vm1: Protected → Resynchronizing
<4>WARN vm1/disk.img: resynchronization required: changed outside the mount
<3>ERROR agent: cannot save its state
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestPriority(t *testing.T) {
	for level, want := range map[slog.Level]string{
		slog.LevelDebug - 4: "<7>", slog.LevelDebug: "<7>", slog.LevelInfo: "<6>", slog.LevelInfo + 2: "<6>",
		slog.LevelWarn: "<4>", slog.LevelError: "<3>", slog.LevelError + 4: "<3>",
	} {
		if got := Priority(level); got != want {
			t.Errorf("Priority(%v) = %s, want %s", level, got, want)
		}
	}
}

func TestLevelFiltering(t *testing.T) {
	for _, c := range []struct {
		level string
		want  []string
	}{
		{"debug", []string{"DEBUG d", "INFO i", "WARN w", "ERROR e"}},
		{"info", []string{"INFO i", "WARN w", "ERROR e"}},
		{"WARN", []string{"WARN w", "ERROR e"}},
		{"warning", []string{"WARN w", "ERROR e"}},
		{"error", []string{"ERROR e"}},
	} {
		level, err := ParseLevel(c.level)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		l := slog.New(NewHandler(&b, &Options{Level: level, Journal: true}))
		l.Debug("d")
		l.Info("i")
		l.Warn("w")
		l.Error("e")
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
			got = append(got, line[3:]) // after the priority prefix
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("level %s: got %q, want %q", c.level, got, c.want)
		}
	}
	if _, err := ParseLevel("verbose"); err == nil {
		t.Error("ParseLevel(verbose) succeeded")
	}
	// Without Options: info.
	var b bytes.Buffer
	l := slog.New(NewHandler(&b, nil))
	l.Debug("d")
	if b.Len() != 0 || !l.Enabled(t.Context(), slog.LevelInfo) {
		t.Errorf("the default level is not info: %q", b.String())
	}
}

func TestAttrsGroupsAndLines(t *testing.T) {
	var b bytes.Buffer
	l := slog.New(NewHandler(&b, &Options{Journal: true})).With("vm", "db").WithGroup("ship")
	l.Info("first line\nsecond line\n", "bytes", 4096, slog.Group("to", "url", "https://dr:8443"))
	l.Warn("", "msg", "an attribute named msg", "level", "one named level")
	want := `<6>INFO first line
<6>INFO second line vm=db ship.bytes=4096 ship.to.url=https://dr:8443
<4>WARN vm=db ship.msg="an attribute named msg" ship.level="one named level"
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	// A record without a time gets none.
	b.Reset()
	h := NewHandler(&b, nil)
	if err := h.Handle(t.Context(), slog.NewRecord(time.Time{}, slog.LevelInfo, "no time", 0)); err != nil || b.String() != "INFO no time\n" {
		t.Errorf("a record without a time: %q, %v", b.String(), err)
	}
}

// TestDefaultAndLogPackage: as the default logger the handler also gets
// what the standard log package prints (go-fuse's messages), and the
// logger's time has milliseconds.
func TestDefaultAndLogPackage(t *testing.T) {
	var b bytes.Buffer
	prev, flags, out := slog.Default(), log.Flags(), log.Writer()
	defer func() { slog.SetDefault(prev); log.SetFlags(flags); log.SetOutput(out) }()
	slog.SetDefault(slog.New(NewHandler(&b, nil)))
	log.Printf("writer: Write failed: %v", errors.New("EIO"))
	slog.Warn("vm1: retried")
	rx := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) INFO writer: Write failed: EIO
\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) WARN vm1: retried
$`)
	if !rx.MatchString(b.String()) {
		t.Errorf("got\n%s", b.String())
	}
}

// devIno is f's "device:inode", as systemd sets JOURNAL_STREAM.
func devIno(t *testing.T, f *os.File) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// TestStderrJournal: Stderr chooses the journal's shape when
// JOURNAL_STREAM names the file that is standard error, and only then.
// Standard error is a temporary file for the test's time.
func TestStderrJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	other, err := os.Create(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	saved, err := unix.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup2(int(f.Fd()), 2); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			unix.Dup2(saved, 2)
			unix.Close(saved)
			restored = true
		}
	}
	defer restore()

	logTo := func(stream string) {
		t.Setenv("JOURNAL_STREAM", stream)
		if stream == "" {
			os.Unsetenv("JOURNAL_STREAM")
		}
		l := slog.New(Stderr(slog.LevelInfo))
		l.Warn("journal " + fmt.Sprint(StderrIsJournal()) + " for " + stream)
	}
	logTo(devIno(t, f))     // standard error is the journal
	logTo(devIno(t, other)) // inherited by a process whose stderr is elsewhere
	logTo("")
	logTo("garbage")
	restore()

	// f shares its offset with the descriptor 2 that wrote it.
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4:\n%s", len(lines), out)
	}
	if want := "<4>WARN journal true for " + devIno(t, f); lines[0] != want {
		t.Errorf("JOURNAL_STREAM of standard error: %q, want %q", lines[0], want)
	}
	ts := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) WARN journal false for `)
	for _, line := range lines[1:] {
		if !ts.MatchString(line) {
			t.Errorf("not the terminal's shape: %q", line)
		}
	}
}
