package frame

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// benchBlocks is the stream size per benchmark op: 256 blocks of 4 KiB.
const benchBlocks = 256

func benchData(kind string) [][]byte {
	rng := rand.New(rand.NewPCG(7, 8))
	blocks := make([][]byte, benchBlocks)
	for i := range blocks {
		if kind == "random" {
			blocks[i] = random(rng, 4096)
		} else {
			blocks[i] = compressible(rng, 4096)
		}
	}
	return blocks
}

func encodeBlocks(b *testing.B, w io.Writer, blocks [][]byte) {
	fw, err := NewWriter(w, testHeader(4096, benchBlocks*4096))
	if err != nil {
		b.Fatal(err)
	}
	for i, blk := range blocks {
		if err := fw.Data(uint64(i), blk); err != nil {
			b.Fatal(err)
		}
	}
	if err := fw.Close(); err != nil {
		b.Fatal(err)
	}
}

// The reported MB/s are of uncompressed block data; ratio is wire bytes per
// data byte.
func BenchmarkEncode(b *testing.B) {
	for _, kind := range []string{"random", "compressible"} {
		b.Run(kind+"-4KiB", func(b *testing.B) {
			blocks := benchData(kind)
			var out bytes.Buffer
			encodeBlocks(b, &out, blocks)
			b.SetBytes(benchBlocks * 4096)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				encodeBlocks(b, io.Discard, blocks)
			}
			b.ReportMetric(float64(out.Len())/(benchBlocks*4096), "ratio")
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, kind := range []string{"random", "compressible"} {
		b.Run(kind+"-4KiB", func(b *testing.B) {
			var out bytes.Buffer
			encodeBlocks(b, &out, benchData(kind))
			stream := out.Bytes()
			b.SetBytes(benchBlocks * 4096)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				fr, err := NewReader(bytes.NewReader(stream), Limits{})
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := fr.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
