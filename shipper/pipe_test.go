package shipper

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// TestPipe: bytes written in pieces of any size through a small buffer come
// out whole and in order, then the writer's error.
func TestPipe(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for _, werr := range []error{nil, errors.New("encoder failed")} {
		p := newPipe(4099)
		go func() {
			rest := data
			for len(rest) > 0 {
				n := min(len(rest), 1+rand.IntN(10000))
				if _, err := p.Write(rest[:n]); err != nil {
					t.Error(err)
					return
				}
				rest = rest[n:]
			}
			p.closeWrite(werr)
		}()
		var got bytes.Buffer
		buf := make([]byte, 7000)
		var err error
		for {
			var n int
			n, err = p.Read(buf[:1+rand.IntN(len(buf))])
			got.Write(buf[:n])
			if err != nil {
				break
			}
		}
		if want := werr; want == nil && err != io.EOF || want != nil && err != want {
			t.Errorf("read ended with %v, want %v", err, want)
		}
		if !bytes.Equal(got.Bytes(), data) {
			t.Errorf("read %d bytes, not the %d written", got.Len(), len(data))
		}
	}
}

// TestPipeReaderCloses: a writer waiting for room, and every later Write,
// gets the reader's error.
func TestPipeReaderCloses(t *testing.T) {
	p := newPipe(16)
	done := make(chan error)
	go func() {
		_, err := p.Write(make([]byte, 100))
		done <- err
	}()
	buf := make([]byte, 8)
	if _, err := p.Read(buf); err != nil {
		t.Fatal(err)
	}
	p.closeRead(errStageReturned)
	if err := <-done; !errors.Is(err, errStageReturned) {
		t.Errorf("blocked Write: %v", err)
	}
	if _, err := p.Write([]byte{1}); !errors.Is(err, errStageReturned) {
		t.Errorf("Write after closeRead: %v", err)
	}
}
