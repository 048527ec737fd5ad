package shipper

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestModel makes random writes, zeroed ranges, resizes, removals and
// re-creations of disks, rotations, restarts of both sides and ships, and
// checks after each ship that every recovery point in the store equals the
// model of the disks at that rotation, and that the log holds nothing the
// store has.
func TestModel(t *testing.T) {
	for _, c := range []struct {
		bs    int
		steps int
		grain int64 // largest disk, in blocks
	}{
		{512, 800, 96},
		{4096, 800, 64},
		{2 << 20, 80, 3}, // log blocks larger than the largest frame block
	} {
		t.Run(fmt.Sprintf("bs%d", c.bs), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(testSeed(t), uint64(c.bs)))
			runModel(t, rng, c.bs, c.steps, c.grain)
		})
	}
}

type modelVM struct {
	name    string
	disks   []*disk
	points  map[uint64]snapshot
	checked map[uint64]bool // points compared with the store already
}

func runModel(t *testing.T, rng *rand.Rand, bs, steps int, grain int64) {
	e := newEnv(t, bs)
	ctx := context.Background()
	B := int64(bs)
	vms := []*modelVM{
		{name: "alpha"},
		{name: "beta.raw"},
	}
	for _, rel := range []string{"alpha/root.img", "alpha/data/d1.qcow2"} {
		vms[0].disks = append(vms[0].disks, e.openDisk(rel))
	}
	vms[1].disks = append(vms[1].disks, e.openDisk("beta.raw"))
	for _, v := range vms {
		v.points = map[uint64]snapshot{}
		v.checked = map[uint64]bool{}
		for _, dk := range v.disks {
			// Every disk has records in the generation it appears in.
			dk.write(0, randomData(rng, B))
		}
	}

	var total Stats
	ship := func(v *modelVM) {
		sh := New(e.source(), e.store, Options{Source: "host-a"})
		st, err := sh.Ship(ctx, v.name)
		if err != nil {
			t.Fatalf("Ship(%s): %v", v.name, err)
		}
		total.Add(st)
		checkPoints(t, e.store, v.name, v.points, v.checked)
		if f := e.log.Frozen(v.name); len(f) > 0 {
			t.Fatalf("%s: generations %v still in the log after Ship", v.name, f)
		}
	}
	rotate := func(v *modelVM) {
		gen, err := e.log.Rotate(v.name)
		if err != nil {
			t.Fatalf("Rotate(%s): %v", v.name, err)
		}
		snap := snapshot{}
		for _, dk := range v.disks {
			snap[dk.name] = slices.Clone(dk.img.b)
		}
		v.points[gen] = snap
	}
	pick := func(limit int64, aligned bool) (off, n int64) {
		off = rng.Int64N(max(limit, 1))
		n = 1 + rng.Int64N(min(3*B, 512<<10))
		if rng.IntN(10) == 0 {
			n = 1 + rng.Int64N(64<<10)
		}
		if aligned {
			off = off / B * B
			n = (n + B - 1) / B * B
		}
		return off, n
	}

	for step := 0; step < steps; step++ {
		v := vms[rng.IntN(len(vms))]
		dk := v.disks[rng.IntN(len(v.disks))]
		size := int64(len(dk.img.b))
		aligned := rng.IntN(2) == 0
		switch r := rng.IntN(90); {
		case r < 55:
			off, n := pick(min(size+2*B, grain*B), aligned)
			dk.write(off, randomData(rng, n))
		case r < 65:
			off, n := pick(size+B, aligned)
			dk.zero(off, n)
		case r < 75:
			ns := rng.Int64N(grain*B + 1)
			if aligned {
				ns = ns / B * B
			}
			dk.resize(ns)
		case r < 81:
			rotate(v)
		case r < 86:
			ship(v)
		case r < 88:
			// The file is removed and a new one of the same name created:
			// its replica must not keep anything of the old one.
			e.log.Removed(dk.rel)
			nd := e.openDisk(dk.rel)
			nd.write(rng.Int64N(grain*B/2), randomData(rng, 1+rng.Int64N(2*B)))
			*dk = *nd
		default:
			e.restart()
			for _, v := range vms {
				for _, dk := range v.disks {
					e.reopen(dk)
				}
			}
		}
	}
	for _, v := range vms {
		rotate(v)
		ship(v)
		// Later generations must not have disturbed the older points.
		checkPoints(t, e.store, v.name, v.points, nil)
	}
	if total.Generations == 0 || total.RawBytes == 0 || total.WireBytes == 0 {
		t.Fatalf("nothing shipped: %+v", total)
	}
	t.Logf("shipped %d generations, %d streams, %d data blocks, %d zero blocks, %d raw bytes, %d on the wire (ratio %.2f)",
		total.Generations, total.Streams, total.DataBlocks, total.ZeroBlocks, total.RawBytes, total.WireBytes, total.Ratio())
}
