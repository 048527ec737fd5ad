package tracker

import (
	"bytes"
	"encoding/binary"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The in-flight table is a small file of the state directory, mapped
// shared into memory, that tells the next Open what a process that died
// (kill -9, an OOM kill) was doing. Its pages belong to the page cache, so
// what the process stored in them survives the process, although nothing
// syncs them: they are lost only with the host, and the table names the
// boot it was written in, so that a host crash is never taken for a
// process crash.
//
// It holds:
//
//   - a slot for every change of a disk's file that fs began and the log
//     has not yet recorded (Disk.Begin, Disk.End): after a process crash
//     only those ranges can differ from the log, and Open records them
//     again from the file;
//   - for every disk, the newest ctime of its file that the mount can
//     explain (its last change through the mount, or the file as Open or
//     the last check found it): a file whose ctime is newer after a crash
//     was changed behind the mount's back, while drfs was down;
//   - a heartbeat, the time stored every beatPeriod: the process died
//     before the last beat plus beatPeriod. A change in flight at the
//     crash may have moved its file's ctime up to then, not later.
//
// A process crash then costs reading the ranges that were in flight, not
// a resynchronization of every disk. docs/log-format.md gives the layout.
const (
	tableName    = "inflight"
	tableMagic   = "drfsinfl"
	tableVersion = 1
	// tableSlots bounds the changes in flight at once; Begin waits for a
	// free slot beyond that.
	tableSlots = 1024
	// tableDisks is how many disk ids have a ctime entry; a disk with a
	// larger id is resynchronized after a process crash.
	tableDisks = 1 << 16

	tableHeaderSize = 64
	beatOff         = 16
	bootOff         = 24
	slotSize        = 32
	vouchOff        = 36864 // tableHeaderSize + tableSlots×slotSize, rounded up to 4 KiB
	tableSize       = vouchOff + tableDisks*8
)

// inFlight is the mapped table of an open log. Its methods are safe for
// concurrent use.
//
// The mapping is never unmapped: a change fs reports after Close must not
// fault. A closed log's Begin returns 0 instead.
type inFlight struct {
	mem  []byte
	free chan uint32 // indexes of free slots
}

// intent is a change that was in flight when the process died.
type intent struct {
	disk    uint32
	off, n  int64 // n < 0: the size of the file (a truncate or resize)
	started int64 // unix nanoseconds
}

// crashState is what the table left by the previous process says.
type crashState struct {
	// sameBoot: the table was written in this boot of the host, so the
	// page cache, and with it every write the process made, survived.
	sameBoot bool
	intents  []intent
	vouched  []int64 // by disk id; 0: unknown
	beat     int64   // the last heartbeat, unix nanoseconds
}

// onOS reports whether fs is the operating system's file system, itself or
// wrapped (a wrapper says so with an Unwrap method).
func onOS(fs vfs.FS) bool {
	for {
		if fs == vfs.Default {
			return true
		}
		u, ok := fs.(interface{ Unwrap() vfs.FS })
		if !ok {
			return false
		}
		fs = u.Unwrap()
	}
}

func newInFlight(mem []byte) *inFlight {
	t := &inFlight{mem: mem, free: make(chan uint32, tableSlots)}
	for i := range uint32(tableSlots) {
		t.free <- i
	}
	return t
}

// readCrashState decodes a table as the previous process left it.
func readCrashState(b []byte, boot string) crashState {
	var cs crashState
	if len(b) < tableSize || string(b[:8]) != tableMagic ||
		binary.NativeEndian.Uint32(b[8:]) != tableVersion {
		return cs
	}
	cs.sameBoot = boot != "" && string(bytes.TrimRight(b[bootOff:tableHeaderSize], "\x00")) == boot
	cs.beat = int64(binary.NativeEndian.Uint64(b[beatOff:]))
	for i := range tableSlots {
		s := b[tableHeaderSize+i*slotSize:][:slotSize]
		started := int64(binary.NativeEndian.Uint64(s))
		if started == 0 {
			continue
		}
		cs.intents = append(cs.intents, intent{
			disk:    binary.NativeEndian.Uint32(s[8:]),
			off:     int64(binary.NativeEndian.Uint64(s[16:])),
			n:       int64(binary.NativeEndian.Uint64(s[24:])),
			started: started,
		})
	}
	cs.vouched = make([]int64, tableDisks)
	for i := range cs.vouched {
		cs.vouched[i] = int64(binary.NativeEndian.Uint64(b[vouchOff+i*8:]))
	}
	return cs
}

// reset makes the table this process's: its boot, no change in flight,
// no ctime vouched for. Call it once the previous process's table has been
// acted on.
func (t *inFlight) reset(boot string) {
	clear(t.mem)
	copy(t.mem[:8], tableMagic)
	binary.NativeEndian.PutUint32(t.mem[8:], tableVersion)
	copy(t.mem[bootOff:tableHeaderSize], boot)
	t.beat()
}

// beatPeriod is how often the heartbeat is stored.
const beatPeriod = 100 * time.Millisecond

// beat stores the heartbeat.
func (t *inFlight) beat() { t.word(beatOff).Store(time.Now().UnixNano()) }

func (t *inFlight) word(off int) *atomic.Int64 {
	return (*atomic.Int64)(unsafe.Pointer(&t.mem[off]))
}

// begin records a change of [off, off+n) of disk in a free slot and
// returns the slot's token (index + 1).
func (t *inFlight) begin(disk uint32, off, n int64) uint32 {
	i := <-t.free
	s := tableHeaderSize + int(i)*slotSize
	binary.NativeEndian.PutUint32(t.mem[s+8:], disk)
	binary.NativeEndian.PutUint64(t.mem[s+16:], uint64(off))
	binary.NativeEndian.PutUint64(t.mem[s+24:], uint64(n))
	// The slot counts once its start is stored, after its fields.
	t.word(s).Store(time.Now().UnixNano())
	return i + 1
}

// end frees the slot of a token from begin.
func (t *inFlight) end(token uint32) {
	i := token - 1
	t.word(tableHeaderSize + int(i)*slotSize).Store(0)
	t.free <- i
}

// vouch records that the disk's file may have a ctime up to ns.
func (t *inFlight) vouch(disk uint32, ns int64) {
	if disk < tableDisks {
		t.word(vouchOff + int(disk)*8).Store(ns)
	}
}
