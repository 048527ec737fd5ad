// Package logging is the log handler of drfs's long-running commands
// (drfs agent, drfs mount, drfs target serve): a slog.Handler that writes
// one line per record, the level, the message, then the attributes as
// slog's TextHandler writes them (key=value, a value quoted only when it
// needs to be). On a terminal or into a file each line starts with the
// time (RFC 3339, milliseconds):
//
//	2025-06-01T12:00:00.000+02:00 INFO vm1: recovery point 5 on target: ...
//	2025-06-01T12:00:01.250+02:00 WARN remote: connection refused addr=10.0.0.9:51234 err="..."
//
// When standard error is connected to the systemd journal (JOURNAL_STREAM
// names it: StderrIsJournal), the journal stamps each entry itself: a line
// has no time, and starts with the priority prefix of sd-daemon(3), which
// journald strips and keeps as the entry's priority (journalctl -p):
//
//	<6>INFO vm1: recovery point 5 on target: ...
//	<4>WARN remote: connection refused addr=10.0.0.9:51234 err="..."
//
// The prefixes are <3> for error, <4> for warning, <6> for info and <7>
// for debug. A message of several lines is written as that many lines,
// each with the time or the prefix and the level, the attributes after the
// last: the journal keeps the priority of each.
package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
)

// Options configure a Handler.
type Options struct {
	// Level is the lowest level written; nil means slog.LevelInfo.
	Level slog.Leveler
	// Journal writes the journal's shape: the sd-daemon priority prefix at
	// the start of each line, and no time.
	Journal bool
	// Command, if set, writes the shape of a one-shot command's messages
	// instead: "COMMAND: message", "COMMAND: warning: message" for a
	// warning, with no time and no level.
	Command string
}

// Handler writes records as lines (see the package documentation). It is
// safe for concurrent use; the handlers that WithAttrs and WithGroup
// return share its output and its lock.
type Handler struct {
	sh *shared
	// attrs writes the attributes (and those of WithAttrs, under the
	// groups of WithGroup) into sh.buf, as slog's TextHandler does.
	attrs slog.Handler
}

// shared is the state common to a Handler and those derived from it.
type shared struct {
	mu      sync.Mutex
	out     io.Writer
	buf     bytes.Buffer // the attributes of the record being written
	line    []byte       // the lines of the record being written
	level   slog.Leveler
	journal bool
	command string
}

// NewHandler returns a Handler that writes to w.
func NewHandler(w io.Writer, opts *Options) *Handler {
	sh := &shared{out: w, level: slog.LevelInfo}
	if opts != nil {
		if opts.Level != nil {
			sh.level = opts.Level
		}
		sh.journal = opts.Journal
		sh.command = opts.Command
	}
	// Handle filters nothing: the level is Enabled's.
	all := &slog.HandlerOptions{Level: slog.Level(math.MinInt)}
	return &Handler{sh: sh, attrs: slog.NewTextHandler(&sh.buf, all)}
}

// Stderr returns the Handler of a long-running command: to standard error,
// in the journal's shape when standard error is connected to the journal.
func Stderr(level slog.Leveler) *Handler {
	return NewHandler(os.Stderr, &Options{Level: level, Journal: StderrIsJournal()})
}

// StderrIsJournal reports whether standard error is connected to the
// systemd journal: JOURNAL_STREAM, which systemd sets for a service whose
// output goes to the journal, holds the device and inode numbers of
// standard error. (A child process that inherits the variable while its
// standard error goes elsewhere does not match.)
func StderrIsJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

// ParseLevel reads a level: debug, info, warn (or warning) or error, in
// any case.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q is none of debug, info, warn, error", s)
}

// Priority returns the sd-daemon prefix of level: "<3>" for error and
// above, "<4>" for warning, "<6>" for info, "<7>" for debug (and below).
func Priority(level slog.Level) string {
	switch {
	case level >= slog.LevelError:
		return "<3>"
	case level >= slog.LevelWarn:
		return "<4>"
	case level >= slog.LevelInfo:
		return "<6>"
	}
	return "<7>"
}

// timeFormat is RFC 3339 with milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// Enabled reports whether level is at or above the handler's level.
func (h *Handler) Enabled(_ context.Context, level slog.Level) bool {
	return level >= h.sh.level.Level()
}

// Handle writes r as one line (or, for a message of several lines, as many
// lines) with a single Write.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	sh := h.sh
	sh.mu.Lock()
	defer sh.mu.Unlock()

	// The TextHandler writes no time for a zero one, then
	// `level=LEVEL msg="" ` and the attributes: the lead is cut off.
	level := r.Level.String()
	bare := r
	bare.Time, bare.Message = time.Time{}, ""
	sh.buf.Reset()
	if err := h.attrs.Handle(ctx, bare); err != nil {
		return err
	}
	attrs := bytes.TrimSuffix(sh.buf.Bytes(), []byte("\n"))
	if lead := `level=` + level + ` msg=""`; bytes.HasPrefix(attrs, []byte(lead)) {
		attrs = bytes.TrimPrefix(attrs[len(lead):], []byte(" "))
	}

	var prefix string
	switch {
	case sh.command != "" && r.Level >= slog.LevelWarn && r.Level < slog.LevelError:
		prefix = sh.command + ": warning:"
	case sh.command != "":
		prefix = sh.command + ":"
	case sh.journal:
		prefix = Priority(r.Level) + level
	case r.Time.IsZero():
		prefix = level
	default:
		prefix = r.Time.Format(timeFormat) + " " + level
	}
	msg := strings.TrimRight(r.Message, "\r\n")
	b := sh.line[:0]
	for {
		line, rest, more := strings.Cut(msg, "\n")
		b = append(b, prefix...)
		if line = strings.TrimSuffix(line, "\r"); line != "" {
			b = append(b, ' ')
			b = append(b, line...)
		}
		if !more {
			break
		}
		b = append(b, '\n')
		msg = rest
	}
	if len(attrs) > 0 {
		b = append(b, ' ')
		b = append(b, attrs...)
	}
	b = append(b, '\n')
	if cap(b) <= 64<<10 {
		sh.line = b // kept for the next record
	}
	_, err := sh.out.Write(b)
	return err
}

// WithAttrs returns a Handler that writes attrs after the message of each
// record, before the record's own.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return &Handler{sh: h.sh, attrs: h.attrs.WithAttrs(attrs)}
}

// WithGroup returns a Handler that qualifies the keys of the attributes
// that follow by name (name.key=value).
func (h *Handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &Handler{sh: h.sh, attrs: h.attrs.WithGroup(name)}
}
