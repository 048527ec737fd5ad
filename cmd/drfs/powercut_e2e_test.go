package main

import (
	"flag"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	powerCutSeed   = flag.Uint64("powercut-seed", 0, "seed of TestPowerCut (0: from the clock)")
	powerCutCycles = flag.Int("powercut-cycles", 20, "power cuts of TestPowerCut")
)

// TestPowerCut: drfs mount runs inside a QEMU guest (TCG) whose disk image
// holds the source, the state directory and a dir:// target, under a
// writer of random O_DIRECT writes, half of them synced; QEMU is killed at
// a random moment, which is a power cut for the guest's kernel: its page
// cache is lost. At each boot drfs recovers, compares only the hot extents
// its activity log names, and the newest point equals the source. Every
// cycle must recover by hot extents (never a whole disk), and compare no
// more than they hold. scripts/powercut-guest.sh builds the guest and runs
// its side of each cycle. Replay with -powercut-seed; -powercut-cycles
// sets the number of cuts.
func TestPowerCut(t *testing.T) {
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.ext4", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			if _, err := exec.LookPath("/usr/sbin/" + tool); err != nil {
				t.Fatalf("the power-cut test needs %s: install qemu-system-x86, e2fsprogs and busybox-static (scripts/deps.sh)", tool)
			}
		}
	}
	s := *powerCutSeed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with: go test ./cmd/drfs -run '^TestPowerCut$' -powercut-seed %d)", s, s)
	rng := rand.New(rand.NewPCG(s, 41))

	dir := t.TempDir()
	static := filepath.Join(dir, "drfs")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building a static drfs for the guest needs go on PATH: %v", err)
	}
	build := exec.Command(goBin, "build", "-o", static, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building a static drfs for the guest: %v\n%s", err, out)
	}
	guest := filepath.Join(dir, "guest")
	if out, err := exec.Command("sh", "../../scripts/powercut-guest.sh", guest, static).CombinedOutput(); err != nil {
		t.Fatalf("scripts/powercut-guest.sh: %v\n%s", err, out)
	}

	hotRx := regexp.MustCompile(`names (\d+) hot extent\(s\) \(([^)]*)\)`)
	comparedRx := regexp.MustCompile(`resync against point \d+: (\d+) chunks compared, (\d+) differ: sending (\S+ \S+)`)
	var recovered, differed int
	for cycle := 1; cycle <= *powerCutCycles+1; cycle++ {
		final := cycle == *powerCutCycles+1
		mode := "cycle"
		if final {
			mode = "final"
		}
		console, g := bootGuest(t, guest, mode, final)
		if m := regexp.MustCompile(`DRFS-FAILED.*`).FindString(console); m != "" {
			t.Fatalf("cycle %d: %s\n%s", cycle, m, console)
		}
		if cycle > 1 {
			if !strings.Contains(console, "DRFS-VERIFY OK") {
				t.Fatalf("cycle %d: the newest point after the power cut differs from the source:\n%s", cycle, console)
			}
			for _, bad := range []string{"dirty shutdown", "resynchronization required"} {
				if strings.Contains(console, bad) {
					t.Fatalf("cycle %d: a disk was compared whole after the power cut (%s):\n%s", cycle, bad, console)
				}
			}
			// Compared: no more than the hot extents (chunks of 1 MiB,
			// extents of 1 MiB).
			hot := hotRx.FindStringSubmatch(console)
			for _, m := range comparedRx.FindAllStringSubmatch(console, -1) {
				if hot == nil {
					t.Fatalf("cycle %d: a resync without a recovery from the activity log:\n%s", cycle, console)
				}
				extents, _ := strconv.Atoi(hot[1])
				first := strings.Index(console, m[0])
				chunks, _ := strconv.Atoi(m[1])
				// The first level compares one chunk per MiB of the
				// hot extents; deeper levels only inside differing ones.
				if d, _ := strconv.Atoi(m[2]); d == 0 && chunks > extents {
					t.Fatalf("cycle %d: %d chunks compared for %d hot extent(s):\n%s", cycle, chunks, extents, console[first:])
				}
				if d, _ := strconv.Atoi(m[2]); d > 0 {
					differed++
				}
				recovered++
				t.Logf("cycle %d: %s hot extent(s) (%s); %s chunks compared, %s differ, %s sent", cycle, hot[1], hot[2], m[1], m[2], m[3])
			}
		}
		if final {
			break
		}
		// The writer runs: cut the power at a random moment.
		time.Sleep(time.Duration(500+rng.IntN(4000)) * time.Millisecond)
		g.kill()
	}
	t.Logf("%d power cuts, %d recoveries by hot extents, %d of which sent data the cut had lost from the log or the disk", *powerCutCycles, recovered, differed)
	if recovered == 0 {
		t.Error("no recovery compared hot extents")
	}
}

// runningGuest is a QEMU of TestPowerCut: done gets its exit.
type runningGuest struct {
	cmd  *exec.Cmd
	done chan error
}

// bootGuest boots the guest in mode. Unless final, it returns once the
// console says DRFS-WRITING (or DRFS-FAILED), with the guest running;
// final, once the guest powered off (nil then).
func bootGuest(t *testing.T, guest, mode string, final bool) (string, *runningGuest) {
	t.Helper()
	out := &syncBuffer{}
	cmd := exec.Command("qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "1024", "-smp", "1",
		"-nographic", "-monitor", "none", "-no-reboot",
		"-kernel", filepath.Join(guest, "vmlinuz"), "-initrd", filepath.Join(guest, "initrd.img"),
		"-append", "console=ttyS0 panic=-1 quiet drfs.mode="+mode,
		"-drive", "file="+filepath.Join(guest, "data.img")+",format=raw,if=virtio,cache=writeback")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := &runningGuest{cmd: cmd, done: make(chan error, 1)}
	go func() { g.done <- cmd.Wait() }()
	t.Cleanup(g.kill)
	deadline := time.After(5 * time.Minute)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-g.done:
			g.done <- err
			if !final {
				t.Fatalf("the guest stopped (%v) before writing:\n%s", err, out)
			}
			return out.String(), nil
		case <-deadline:
			t.Fatalf("the guest did not finish its %s boot in 5 minutes:\n%s", mode, out)
		case <-tick.C:
			if s := out.String(); !final && (strings.Contains(s, "DRFS-WRITING") || strings.Contains(s, "DRFS-FAILED")) {
				return s, g
			}
		}
	}
}

// kill cuts the power: SIGKILL to QEMU, and waits for it to exit.
func (g *runningGuest) kill() {
	g.cmd.Process.Kill()
	err := <-g.done
	g.done <- err
}
