package dirstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
)

const (
	filePerm = 0o600 // replicas are whole disks: readable by the owner only
	dirPerm  = 0o700
)

// mkdirAll creates dir and its missing parents inside the root and makes the
// new entries durable (fsync of each parent that got one).
func (s *Store) mkdirAll(dir string) error {
	var created []string
	p := ""
	for elem := range strings.SplitSeq(dir, "/") {
		p = path.Join(p, elem)
		err := s.root.Mkdir(p, dirPerm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		created = append(created, path.Dir(p))
	}
	for _, d := range created {
		if err := s.syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// syncDir makes the entries of dir durable.
func (s *Store) syncDir(dir string) error {
	f, err := s.root.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeAtomic replaces name with data: temp file, fsync, rename, fsync of
// the directory. op names the write for fault injection.
func (s *Store) writeAtomic(op, name string, data []byte) error {
	if err := s.fault(op); err != nil {
		return err
	}
	tmp := name + ".tmp"
	f, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filePerm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.root.Rename(tmp, name)
	}
	if err != nil {
		s.root.Remove(tmp)
		return err
	}
	return s.syncDir(path.Dir(name))
}

// writeSynced creates name with data and fsyncs it; the caller renames it
// into place. op names the write for fault injection.
func (s *Store) writeSynced(op, name string, data []byte) error {
	if err := s.fault(op); err != nil {
		return err
	}
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readFile returns the contents of name, or nil and no error if it does not
// exist.
func (s *Store) readFile(name string) ([]byte, error) {
	b, err := s.root.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// removeAll removes name and, if that removed anything, makes it durable.
func (s *Store) removeAll(name string) error {
	if _, err := s.root.Lstat(name); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := s.root.RemoveAll(name); err != nil {
		return err
	}
	return s.syncDir(path.Dir(name))
}

// removeEmptyParents removes the empty directories from path.Dir(name) up to
// (not including) stop.
func (s *Store) removeEmptyParents(name, stop string) {
	for d := path.Dir(name); d != stop && strings.HasPrefix(d, stop+"/"); d = path.Dir(d) {
		if s.root.Remove(d) != nil { // not empty, or gone
			return
		}
	}
}

// walkFiles calls fn with the path (relative to dir) of every regular file
// under dir, in lexical order. A missing dir has no files. Symbolic links
// and other special files are errors: the store never makes them.
func (s *Store) walkFiles(dir string, fn func(rel string) error) error {
	if _, err := s.root.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	return fs.WalkDir(s.root.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel := p[len(dir)+1:]
		switch {
		case d.IsDir():
			return nil
		case d.Type().IsRegular():
			return fn(rel)
		}
		return &fs.PathError{Op: "walk", Path: p, Err: errors.New("not a regular file")}
	})
}

// randomName returns a name for a temporary file.
func randomName(suffix string) string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:]) + suffix
}

// writeZeros writes n zero bytes at off.
func writeZeros(f *os.File, off, n int64) error {
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// copyBuffered copies n bytes at from in src to off in dst through a
// buffer.
func copyBuffered(src *os.File, from int64, dst *os.File, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		b := buf[:min(n, int64(len(buf)))]
		if err := readFull(src, b, from); err != nil {
			return err
		}
		if _, err := dst.WriteAt(b, off); err != nil {
			return err
		}
		from += int64(len(b))
		off += int64(len(b))
		n -= int64(len(b))
	}
	return nil
}

// readFull reads len(p) bytes at off; bytes past the end of f read as zeros.
func readFull(f *os.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if err == io.EOF {
		clear(p[n:])
		return nil
	}
	return err
}

// extent is a byte range [off, off+len).
type extent struct{ off, len int64 }

// isNameClash reports an error of a path whose element is a file where a
// directory is needed, or the reverse: disk names "a" and "a/b".
func isNameClash(err error) bool {
	return errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR)
}
