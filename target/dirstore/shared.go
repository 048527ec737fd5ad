package dirstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// One process writes to a store directory and any number read it, on one
// host or on several sharing the directory (docs/dirstore-format.md,
// "Processes"). Three kinds of flock(2) make that safe:
//
//   - .drfs-lock, held exclusively by the one writing Store for as long as
//     it is open; it names its holder for the error a second writer gets.
//   - <vm>/lock, held exclusively by the writer while it changes the VM
//     (Stage's install, Commit, Expire, recovery after a crash) and shared
//     by a reading Store while it reads (Points, Open, each ReadAt).
//   - <vm>/pins/<gen>, held shared by a reading Store for as long as a
//     DiskReader of point gen is open: Expire keeps a point whose pin file
//     another process holds.
//
// <vm>/queue is a turnstile in front of <vm>/lock: the writer holds it
// while it waits for the lock, and a reader passes through it before
// taking the lock, so that a steady stream of reads cannot starve commits.

// maxShare bounds how long a reading process keeps a VM's lock shared while
// its reads overlap: then new reads wait for the current ones to end, which
// lets a waiting writer in.
const maxShare = 50 * time.Millisecond

// vmLock is the lock of one VM across processes.
type vmLock struct {
	lock, queue *os.File

	mu    sync.Mutex
	cond  sync.Cond
	n     int       // holders of the shared lock in this Store
	since time.Time // when this Store took it
	drain bool      // no new holder until n falls to 0
	epoch uint64    // counts the times this Store took it
}

// vmLockOf returns v's lock, opening (creating) its files on first use. It
// returns nil, nil if v has no directory: nothing to read or to keep apart.
func (s *Store) vmLockOf(v *vmState) (*vmLock, error) {
	v.xlMu.Lock()
	defer v.xlMu.Unlock()
	if v.xl != nil {
		return v.xl, nil
	}
	l := &vmLock{}
	l.cond.L = &l.mu
	for _, f := range []struct {
		dst  **os.File
		name string
	}{{&l.lock, lockPath(v.name)}, {&l.queue, queuePath(v.name)}} {
		var err error
		*f.dst, err = s.root.OpenFile(f.name, os.O_RDWR|os.O_CREATE, filePerm)
		if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
			*f.dst, err = s.root.Open(f.name) // a read-only share: flock works on it too
		}
		if err != nil {
			if l.lock != nil {
				l.lock.Close()
			}
			if errors.Is(err, fs.ErrNotExist) {
				return nil, nil
			}
			return nil, fmt.Errorf("dirstore: VM %s: lock: %w", v.name, err)
		}
	}
	v.xl = l
	return l, nil
}

// exclusive takes the lock for the writer, through the turnstile, and
// bumps its version: a reader that finds the version it last saw knows
// that the VM has not changed since.
func (l *vmLock) exclusive() error {
	if err := flock(l.queue, lockExclusive, false); err != nil {
		return err
	}
	err := flock(l.lock, lockExclusive, false)
	if uerr := flock(l.queue, lockRelease, false); err == nil {
		err = uerr
	}
	if err != nil {
		return err
	}
	v, err := l.version()
	if err == nil {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v+1)
		_, err = l.lock.WriteAt(b[:], 0)
	}
	if err != nil {
		l.unlockExclusive()
	}
	return err
}

// version reads the lock's version: the count of times a writer took it
// (0 for a new lock file).
func (l *vmLock) version() (uint64, error) {
	var b [8]byte
	n, err := l.lock.ReadAt(b[:], 0)
	if n == len(b) {
		return binary.LittleEndian.Uint64(b[:]), nil
	}
	if err == io.EOF {
		return 0, nil
	}
	return 0, err
}

func (l *vmLock) unlockExclusive() { flock(l.lock, lockRelease, false) }

// shared takes the lock for a reader and returns its epoch: the count of
// times this Store took it, so that a reader knows whether the writer may
// have changed the VM since it last looked. Calls must not nest.
func (l *vmLock) shared() (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.drain || (l.n > 0 && time.Since(l.since) > maxShare) {
		l.drain = true
		l.cond.Wait()
	}
	if l.n == 0 {
		if err := flock(l.queue, lockShared, false); err != nil {
			return 0, err
		}
		flock(l.queue, lockRelease, false)
		if err := flock(l.lock, lockShared, false); err != nil {
			return 0, err
		}
		l.since = time.Now()
		l.epoch++
	}
	l.n++
	return l.epoch, nil
}

func (l *vmLock) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n--; l.n == 0 {
		flock(l.lock, lockRelease, false)
		l.drain = false
		l.cond.Broadcast()
	}
}

// pin holds point gen of vm for a reader in another process than the
// writer's: the pin file, locked shared until it is closed. A store whose
// directory cannot be written to gets no pin (nil): its readers fail
// rather than read a point that expired under them (diskReader.lock). The
// caller holds the VM's lock shared, so Expire is not running.
func (s *Store) pin(vm string, gen uint64) *os.File {
	if s.mkdirAll(pinsDir(vm)) != nil {
		return nil
	}
	f, err := s.root.OpenFile(pinPath(vm, gen), os.O_RDWR|os.O_CREATE, filePerm)
	if err != nil {
		return nil
	}
	if flock(f, lockShared, true) != nil {
		f.Close()
		return nil
	}
	return f
}

// pinnedElsewhere reports whether another process holds point gen of vm
// open. Expire calls it with the VM's lock held exclusively; a pin file
// it finds free it removes.
func (s *Store) pinnedElsewhere(vm string, gen uint64) bool {
	f, err := s.root.OpenFile(pinPath(vm, gen), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if errors.Is(flock(f, lockExclusive, true), errWouldBlock) {
		return true
	}
	s.root.Remove(pinPath(vm, gen))
	return false
}

// removeStalePins removes the pin files of generations that are no point
// of v (left by readers that ended, or by points that expired).
func (s *Store) removeStalePins(v *vmState) {
	for _, g := range s.genDirs(pinsDir(v.name)) {
		if v.find(g) == nil {
			s.root.Remove(pinPath(v.name, g))
		}
	}
}

// holder describes this process for the lock file: who has the store open
// for writing.
func holder() string {
	host, _ := os.Hostname()
	cmd := filepath.Base(os.Args[0])
	if len(os.Args) > 1 {
		cmd += " " + os.Args[1]
	}
	return fmt.Sprintf("pid %d (%s) on %s", os.Getpid(), cmd, host)
}

// lockedError is the error of a second writer: who holds the directory.
type lockedError struct{ who string }

func (e lockedError) Error() string {
	return fmt.Sprintf("already open for writing by %s: one process writes to a directory target at a time (readers need no lock)", e.who)
}

func (e lockedError) Is(target error) bool { return target == errWouldBlock }

// heldBy reads who holds lockf.
func heldBy(lockf *os.File) error {
	b := make([]byte, 512)
	n, _ := lockf.ReadAt(b, 0)
	who := strings.TrimSpace(string(b[:n]))
	if who == "" {
		who = "another process"
	}
	return lockedError{who}
}

func lockPath(vm string) string            { return vm + "/lock" }
func queuePath(vm string) string           { return vm + "/queue" }
func pinsDir(vm string) string             { return vm + "/pins" }
func pinPath(vm string, gen uint64) string { return pinsDir(vm) + "/" + strconv.FormatUint(gen, 10) }
