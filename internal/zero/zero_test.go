package zero

import "testing"

func TestIs(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 4096, 64 << 10, 64<<10 + 3, 1 << 20} {
		b := make([]byte, n)
		if !Is(b) {
			t.Fatalf("%d zeros: not zero", n)
		}
		for _, at := range []int{0, n / 2, n - 1} {
			if n == 0 {
				break
			}
			b[at] = 1
			if Is(b) {
				t.Fatalf("%d bytes with byte %d set: zero", n, at)
			}
			b[at] = 0
		}
	}
}
