package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/zero"
	"github.com/drfs-project/drfs/tracker"
)

// shipGen is one frozen generation of the ship benchmark, and the files
// around it:
//
//	DIR/src/bench/disk.img  the disk image (the backing file the log reads partial blocks from)
//	DIR/state               the change log's state directory
//	DIR/payload             exactly the generation's bytes, contiguous, in the order written: what cp copies
type shipGen struct {
	workload    string
	description string
	dir         string
	state       string
	backing     string
	payload     string
	diskSize    int64
	bytes       int64
	spans       []span // the writes, in the order they were written and stored in payload
	zeroBlocks  int64  // all-zero 4 KiB blocks among the bytes
	fill        time.Duration

	log *tracker.Log
	gen uint64
}

// span is one write of the generation: n bytes at offset off of the disk.
type span struct{ off, n int64 }

func (g *shipGen) close() error {
	if g.log == nil {
		return nil
	}
	return g.log.Close()
}

// shipDiskFactor is how much larger than the generation the disk of the
// random-4k and extents-1m workloads is: writes land at distinct random
// offsets over all of it.
const shipDiskFactor = 4

// makeGeneration writes the workload's data into the disk image, the
// payload file and a new change log, rotates the log so the data is one
// frozen generation, and drops every file from the page cache.
func makeGeneration(ctx context.Context, cfg ShipConfig, workload, dir string) (_ *shipGen, err error) {
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, benchVM), 0o755); err != nil {
		return nil, err
	}
	g := &shipGen{
		workload: workload,
		dir:      dir,
		state:    filepath.Join(dir, "state"),
		backing:  filepath.Join(src, benchVM, benchDisk),
		payload:  filepath.Join(dir, "payload"),
	}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	// The ext4 image must exist before the log learns of the disk.
	if workload == ShipExt4 {
		if err := makeExt4Image(ctx, g, cfg.Ext4From, cfg.Size); err != nil {
			return nil, err
		}
	} else {
		ext := int64(4 << 10)
		if workload == ShipExtents1M {
			ext = 1 << 20
		}
		g.diskSize = shipDiskFactor * cfg.Size
		g.description = fmt.Sprintf("%s in %d writes of %s at random over a %s disk",
			sizeString(cfg.Size), cfg.Size/ext, sizeString(ext), sizeString(g.diskSize))
		if err := layOutSparse(g.backing, g.diskSize); err != nil {
			return nil, err
		}
	}
	if g.log, err = tracker.Open(tracker.Options{Dir: g.state, Source: src}); err != nil {
		return nil, fmt.Errorf("opening the change log: %w", err)
	}
	disk, err := g.log.OpenDisk(benchVM+"/"+benchDisk, g.diskSize)
	if err != nil {
		return nil, fmt.Errorf("opening the disk in the change log: %w", err)
	}
	defer disk.Release()

	backing, err := os.OpenFile(g.backing, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer backing.Close()
	payload, err := os.Create(g.payload)
	if err != nil {
		return nil, err
	}
	defer payload.Close()
	pw := bufio.NewWriterSize(payload, 1<<20)

	start := time.Now()
	switch workload {
	case ShipExt4:
		err = feedImage(ctx, g, disk, backing, pw)
	case ShipRandom4K:
		err = feedScattered(ctx, g, disk, backing, pw, 4<<10, cfg.Size)
	case ShipExtents1M:
		err = feedScattered(ctx, g, disk, backing, pw, 1<<20, cfg.Size)
	}
	if err != nil {
		return nil, err
	}
	if g.gen, err = g.log.Rotate(benchVM); err != nil {
		return nil, fmt.Errorf("freezing the generation: %w", err)
	}
	g.fill = time.Since(start)
	if resync, why := disk.Resync(); resync {
		return nil, fmt.Errorf("the change log lost track of the disk: %s", why)
	}
	if err := pw.Flush(); err != nil {
		return nil, err
	}
	for _, f := range []*os.File{payload, backing} {
		if err := f.Sync(); err != nil {
			return nil, err
		}
	}
	for _, path := range []string{g.payload, g.backing} {
		if err := evict(path); err != nil {
			return nil, err
		}
	}
	return g, evictTree(g.state)
}

// layOutSparse creates a sparse file of size bytes.
func layOutSparse(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Close()
}

// feedScattered writes size bytes of incompressible data in writes of ext
// bytes at distinct random ext-aligned offsets of the disk, in random
// order: each to the disk image, to the payload file and to the log, as the
// mount does with a VM's writes.
func feedScattered(ctx context.Context, g *shipGen, disk *tracker.Disk, backing *os.File, payload io.Writer, ext, size int64) error {
	slots := g.diskSize / ext
	n := size / ext
	taken := make([]uint64, (slots+63)/64)
	rng := rand.New(rand.NewPCG(uint64(ext), uint64(size)))
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], uint64(ext))
	data := rand.NewChaCha8(key)
	buf := make([]byte, ext)
	g.spans = make([]span, 0, n)
	for range n {
		if len(g.spans)%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		var slot int64
		for {
			slot = rng.Int64N(slots)
			if taken[slot/64]&(1<<(slot%64)) == 0 {
				taken[slot/64] |= 1 << (slot % 64)
				break
			}
		}
		off := slot * ext
		data.Read(buf)
		if err := recordWrite(g, disk, backing, payload, off, buf); err != nil {
			return err
		}
	}
	return nil
}

// recordWrite records one write of the generation.
func recordWrite(g *shipGen, disk *tracker.Disk, backing *os.File, payload io.Writer, off int64, data []byte) error {
	if _, err := backing.WriteAt(data, off); err != nil {
		return err
	}
	if _, err := payload.Write(data); err != nil {
		return err
	}
	disk.Written(off, data, backing)
	g.spans = append(g.spans, span{off, int64(len(data))})
	g.bytes += int64(len(data))
	return nil
}

// makeExt4Image makes g.backing an ext4 filesystem holding the tree at
// from: size bytes, or more when the tree needs it.
func makeExt4Image(ctx context.Context, g *shipGen, from string, size int64) error {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("the ext4 workload needs mkfs.ext4 (e2fsprogs 1.43 or later, for -d): install it, or leave ext4 out of the workloads")
	}
	used, files, err := treeUsage(from)
	if err != nil {
		return fmt.Errorf("the ext4 workload's tree %s: %w", from, err)
	}
	// Room for the tree, inode tables, the journal and some slack.
	g.diskSize = max(size, (used*5/4+64<<20+1<<20-1)&^(1<<20-1))
	if err := layOutSparse(g.backing, g.diskSize); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-t", "ext4", "-b", "4096", "-d", from, g.backing)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 -d %s: %v: %s", from, err, strings.TrimSpace(string(out)))
	}
	g.description = fmt.Sprintf("the data blocks of a %s ext4 image made by mkfs.ext4 -d from %s (%d files, %s)",
		sizeString(g.diskSize), from, files, sizeString(used))
	return nil
}

// treeUsage returns the bytes allocated to the files under dir and their
// number.
func treeUsage(dir string) (used int64, files int, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		files++
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			used += st.Blocks * 512
		}
		return nil
	})
	return used, files, err
}

// feedImage writes every data extent of the image (as SEEK_DATA finds
// them) into the log in writes of up to 1 MiB, and into the payload file.
// The image is the disk: its own bytes are not written again.
func feedImage(ctx context.Context, g *shipGen, disk *tracker.Disk, image *os.File, payload io.Writer) error {
	const chunk = 1 << 20
	const bs = 4096
	buf := make([]byte, chunk)
	fd := int(image.Fd())
	for off := int64(0); off < g.diskSize; {
		if err := ctx.Err(); err != nil {
			return err
		}
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return fmt.Errorf("SEEK_DATA in the ext4 image: %w", err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("SEEK_HOLE in the ext4 image: %w", err)
		}
		start &^= bs - 1
		end = min((end+bs-1)&^(bs-1), g.diskSize)
		for at := start; at < end; at += chunk {
			p := buf[:min(chunk, end-at)]
			if _, err := image.ReadAt(p, at); err != nil {
				return err
			}
			for b := 0; b < len(p); b += bs {
				if zero.Is(p[b : b+bs]) {
					g.zeroBlocks++
				}
			}
			if _, err := payload.Write(p); err != nil {
				return err
			}
			disk.Written(at, p, image)
			g.spans = append(g.spans, span{at, int64(len(p))})
			g.bytes += int64(len(p))
		}
		off = end
	}
	if g.bytes == 0 {
		return errors.New("the ext4 image has no data")
	}
	return nil
}
