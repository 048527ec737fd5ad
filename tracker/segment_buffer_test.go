package tracker

import (
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestSegmentBuffer writes through every path of the segment's append
// buffer: a small record and its overwrite while still buffered, the same
// block overwritten after the buffer was written out, a large record
// written directly (which writes the buffer out first), a block of it
// overwritten, and small records after it. Each generation must replay to
// the image, whether it is frozen by Rotate or rescanned after a clean
// Close; and a Sync must make the buffered records durable.
func TestSegmentBuffer(t *testing.T) {
	const bs = 4096
	for _, how := range []string{"rotate", "reopen", "sync-crash"} {
		t.Run(how, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(testSeed(t), 11))
			fs := vfs.NewCrashableMem()
			l := openMem(t, fs, bs)
			const blocks = 1024 // 4 MiB disk
			img := &image{b: make([]byte, blocks*bs)}
			initial := img.bytes()
			d, err := l.OpenDisk("vm/disk.img", int64(len(img.b)))
			if err != nil {
				t.Fatal(err)
			}
			write := func(off int64, n int) {
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				img.writeAt(p, off)
				d.Written(off, p, img)
			}
			write(0, bs)  // buffered
			write(0, bs)  // overwritten in the buffer
			write(bs, bs) // the same, and left so
			write(bs, bs)
			for i := range 100 { // 100 records: past the buffer, which is written out
				write(int64(10+i)*bs, bs)
			}
			write(0, bs)                // overwritten in the file
			write(200*bs, 1<<20)        // a large record, written directly
			write(260*bs, bs)           // a block of it, overwritten in place
			write(900*bs+100, 2*bs)     // small, partial blocks read back, buffered
			write(5*bs, bs)             // buffered after the large record
			write(int64(blocks)*bs, bs) // grows the disk
			if how == "sync-crash" {
				if err := d.Sync(); err != nil {
					t.Fatal(err)
				}
				// What Sync made durable: every record written so far,
				// the buffered ones too (a crash then flags the disk for
				// resynchronization, so the check is on the file).
				v, err := l.lookupVM("vm")
				if err != nil {
					t.Fatal(err)
				}
				crashed := fs.CrashClone(vfs.CrashCloneCfg{})
				f, err := crashed.Open(segmentPath(crashed, "/state", v.id, statusOf(t, l, "vm").Active))
				if err != nil {
					t.Fatal(err)
				}
				records := 0
				res, err := scanSegment(f, bs, func(recHeader, int64) { records++ })
				f.Close()
				// Blocks 0 and 1 and the 100 (the overwrites are in
				// place), the large one, the partial one, block 5, the
				// growth.
				if err != nil || res.torn() || records != 106 {
					t.Fatalf("after Sync and a crash the segment holds %d records (torn %v, %v), want 106", records, res.torn(), err)
				}
			}
			if how == "reopen" {
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				l = openMem(t, fs.CrashClone(vfs.CrashCloneCfg{}), bs)
			}
			defer l.Close()
			rotateMatches(t, l, "vm", initial, img.b, bs)
		})
	}
}
