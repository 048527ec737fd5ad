package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/zeebo/xxh3"
)

// FuzzReader decodes arbitrary bytes: an error or valid records, never a
// panic, never more allocation than the limits allow. The golden streams seed
// it, whole and cut. Each input is decoded as is and, so that mutations get
// past the checksums to the checks behind them, with its header checksum and
// its last eight bytes (the stream checksum) recomputed.
func FuzzReader(f *testing.F) {
	for _, stream := range goldenStreams(f) {
		f.Add(stream)
		f.Add(stream[:len(stream)/2])
	}
	f.Add([]byte{})
	f.Add([]byte(Magic + "\x01\x00"))
	f.Add([]byte(Magic + "\x02\x00"))

	f.Fuzz(func(t *testing.T, in []byte) {
		for _, in := range [][]byte{in, reseal(in)} {
			var (
				h    Header
				recs int
				err  error
			)
			n := allocated(func() { h, recs, err = checkDecode(in) })
			// Two block buffers, names, and the Reader itself.
			if bound := uint64(2*MaxBlockSize + 256<<10); n > bound {
				t.Fatalf("allocated %d bytes (bound %d) for %d bytes of input", n, bound, len(in))
			}
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTruncated) &&
				!errors.Is(err, ErrVersion) && !errors.Is(err, ErrLimit) {
				t.Fatalf("error of no known kind after %d records of %+v: %v", recs, h, err)
			}
		}
	})
}

// reseal returns a copy of in with correct header and stream checksums, as
// far as in has them.
func reseal(in []byte) []byte {
	b := bytes.Clone(in)
	at := headerFixed
	for range 3 { // VM name, disk name, extension
		if len(b) < at+2 {
			return b
		}
		at += 2 + int(binary.LittleEndian.Uint16(b[at:]))
	}
	if len(b) < at+8 {
		return b
	}
	binary.LittleEndian.PutUint64(b[at:], xxh3.Hash(b[:at]))
	if len(b) >= at+8+1+trailerLen {
		binary.LittleEndian.PutUint64(b[len(b)-8:], xxh3.Hash(b[:len(b)-8]))
	}
	return b
}

// checkDecode decodes in and checks every record against the contract,
// independently of the Reader's own checks.
func checkDecode(in []byte) (Header, int, error) {
	fr, err := NewReader(bytes.NewReader(in), Limits{})
	if err != nil {
		return Header{}, 0, err
	}
	h := fr.Header()
	if err := h.validate(MaxNameLen); err != nil {
		panic("invalid header accepted: " + err.Error())
	}
	next, recs := uint64(0), 0
	for {
		rec, err := fr.Next()
		if err == io.EOF {
			if fr.Stats().WireBytes > uint64(len(in)) {
				panic("read more than the input")
			}
			return h, recs, nil
		}
		if err != nil {
			return h, recs, err
		}
		recs++
		if rec.Block < next || rec.Count == 0 || rec.Block+rec.Count > h.Blocks() || rec.Block+rec.Count < rec.Block {
			panic("record out of order or out of the disk")
		}
		switch rec.Kind {
		case KindData:
			if rec.Count != 1 || len(rec.Data) != h.blockLen(rec.Block) || len(rec.Data) > h.BlockSize {
				panic("bad data record shape")
			}
			_ = xxh3.Hash(rec.Data) // Data must be readable in full
		case KindZero:
			if rec.Data != nil {
				panic("zero record with data")
			}
		default:
			panic("unknown record kind")
		}
		next = rec.Block + rec.Count
	}
}
