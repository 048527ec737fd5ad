package bench

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RPOConfig configures RunRPO.
type RPOConfig struct {
	// Binary is the drfs executable: the agent and the target server run
	// as its child processes, as they would on two hosts.
	Binary string
	// Dir is the scratch directory (source, state and target inside it).
	Dir string
	// DiskSize is the size of the protected VM's disk, sparse; Region is
	// the part of it the writer writes.
	DiskSize, Region int64
	// Rates are the writer's rates, in MB/s of 4 KiB random O_DIRECT
	// writes, one phase each, in order.
	Rates []int
	// Duration is the length of each phase; Interval the VM's replication
	// interval.
	Duration, Interval time.Duration
	// Compress is the agent's --compress ("" for its default, auto).
	Compress string
	// MaxGeneration is the agent's --max-generation ("" for its default).
	MaxGeneration string
	// Progress receives a line per step; nil discards them.
	Progress io.Writer
}

// RPOCase is one phase: a writer at a rate, the RPO seen meanwhile.
type RPOCase struct {
	RateMBps     int           `json:"rate_mbps"`
	AchievedMBps float64       `json:"achieved_mbps"`
	Samples      int           `json:"samples"`
	P50          time.Duration `json:"rpo_p50"`
	P99          time.Duration `json:"rpo_p99"`
	Max          time.Duration `json:"rpo_max"`
	Bar          time.Duration `json:"bar"` // p99 must stay within: the interval + 10 s
	// AgentCPU is the agent's CPU time over the phase's wall time (1 = one
	// core busy); ServerCPU the same for the target server.
	AgentCPU  float64 `json:"agent_cpu_cores"`
	ServerCPU float64 `json:"server_cpu_cores"`
	// AgentRSS is the agent's resident memory at the end of the phase.
	AgentRSS int64 `json:"agent_rss"`
}

// RPOReport is the result of RunRPO.
type RPOReport struct {
	DiskSize      int64         `json:"disk_size"`
	Interval      time.Duration `json:"interval"`
	Duration      time.Duration `json:"duration"`
	Compress      string        `json:"compress"`       // the agent's --compress
	MaxGeneration string        `json:"max_generation"` // the agent's --max-generation
	Cases         []RPOCase     `json:"cases"`
	AgentPeakRSS  int64         `json:"agent_peak_rss"`
	ServerPeakRSS int64         `json:"server_peak_rss"`
}

// RunRPO protects a VM with a sparse disk through a drfs agent that ships
// to drfs target serve over loopback mutual TLS, then runs a writer at each
// rate in turn and samples the VM's RPO (the age of its newest recovery
// point, as the agent reports it) every second.
func RunRPO(ctx context.Context, cfg RPOConfig) (_ *RPOReport, err error) {
	if cfg.Interval <= 0 || cfg.Duration <= 0 || len(cfg.Rates) == 0 || cfg.Region <= 0 || cfg.Region > cfg.DiskSize {
		return nil, errors.New("bench rpo: give an interval, a duration, rates and a region within the disk")
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	work, err := os.MkdirTemp(cfg.Dir, "drfs-bench-rpo-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	dirs := map[string]string{}
	for _, n := range []string{"src/vm1", "mnt", "state", "target", "pki"} {
		dirs[n] = filepath.Join(work, n)
		if err := os.MkdirAll(dirs[n], 0o700); err != nil {
			return nil, err
		}
	}
	disk := filepath.Join(dirs["src/vm1"], "disk.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		return nil, err
	}
	if err := os.Truncate(disk, cfg.DiskSize); err != nil {
		return nil, err
	}
	pki, err := newShipPKI(dirs["pki"])
	if err != nil {
		return nil, err
	}
	clientCert, clientKey, err := pki.writeClientFiles(dirs["pki"])
	if err != nil {
		return nil, err
	}
	srv, err := startShipServer(ctx, []string{cfg.Binary, "target", "serve"}, pki, dirs["target"])
	if err != nil {
		return nil, err
	}
	defer srv.stop()

	socket := filepath.Join(work, "agent.sock")
	agent := exec.Command(cfg.Binary, "agent", "--source", filepath.Join(work, "src"), "--mountpoint", dirs["mnt"],
		"--state", dirs["state"], "--target", "https://"+srv.addr, "--tls-cert", clientCert, "--tls-key", clientKey,
		"--tls-ca", pki.caFile, "--socket", socket, "--resync-window", "never")
	if cfg.Compress != "" {
		agent.Args = append(agent.Args, "--compress", cfg.Compress)
	}
	if cfg.MaxGeneration != "" {
		agent.Args = append(agent.Args, "--max-generation", cfg.MaxGeneration)
	}
	agentLog := &lineTail{}
	agent.Stderr = lineWriter{agentLog}
	if err := agent.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	defer func() {
		agent.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(2 * time.Minute):
			agent.Process.Kill()
			<-exited
		}
		exec.Command("umount", "-l", dirs["mnt"]).Run()
	}()
	if err := waitFor(ctx, 30*time.Second, func() bool { _, err := os.Stat(socket); return err == nil }); err != nil {
		return nil, fmt.Errorf("the agent did not start: %v: %s", err, agentLog)
	}
	fmt.Fprintf(cfg.Progress, "rpo: protecting a %s sparse disk, interval %v\n", sizeString(cfg.DiskSize), cfg.Interval)
	if out, err := exec.CommandContext(ctx, cfg.Binary, "protect", "vm1", "--interval", cfg.Interval.String(),
		"--wait", "--socket", socket).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("drfs protect: %v: %s\n%s", err, out, agentLog)
	}

	rep := &RPOReport{DiskSize: cfg.DiskSize, Interval: cfg.Interval, Duration: cfg.Duration, Compress: cmp.Or(cfg.Compress, "auto"),
		MaxGeneration: cmp.Or(cfg.MaxGeneration, "default")}
	client := unixClient(socket)
	for _, rate := range cfg.Rates {
		fmt.Fprintf(cfg.Progress, "rpo: %d MB/s of 4 KiB random writes for %v\n", rate, cfg.Duration)
		c, err := rpoPhase(ctx, cfg, rate, filepath.Join(dirs["mnt"], "vm1", "disk.img"), client, agent.Process.Pid, srv)
		if err != nil {
			return rep, fmt.Errorf("%v\n%s", err, agentLog)
		}
		rep.Cases = append(rep.Cases, c)
	}
	rep.AgentPeakRSS, _ = pidStatus(agent.Process.Pid, "VmHWM")
	rep.ServerPeakRSS = srv.peakRSS()
	return rep, nil
}

// rpoPhase runs the writer at rate for the phase and samples the RPO.
func rpoPhase(ctx context.Context, cfg RPOConfig, rate int, disk string, client *http.Client, agentPid int, srv *shipServer) (RPOCase, error) {
	c := RPOCase{RateMBps: rate, Bar: cfg.Interval + 10*time.Second}
	agentCPU0, _ := pidCPU(agentPid)
	serverCPU0, _ := pidCPU(srv.cmd.Process.Pid)
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var written atomic.Int64
	var werr error
	var wg sync.WaitGroup
	wg.Add(1)
	start := time.Now()
	go func() {
		defer wg.Done()
		werr = paceWrites(ctx, disk, cfg.Region, int64(rate)*1e6, &written)
	}()
	var rpos []time.Duration
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-t.C:
			rpo, err := agentRPO(client, "vm1")
			if err != nil {
				cancel()
				wg.Wait()
				return c, err
			}
			if rpo >= 0 {
				rpos = append(rpos, rpo)
			}
		}
	}
	wg.Wait()
	wall := time.Since(start)
	if werr != nil {
		return c, werr
	}
	c.AchievedMBps = float64(written.Load()) / 1e6 / wall.Seconds()
	slices.Sort(rpos)
	c.Samples = len(rpos)
	if n := len(rpos); n > 0 {
		c.P50, c.P99, c.Max = rpos[n*50/100], rpos[min(n-1, n*99/100)], rpos[n-1]
	}
	agentCPU1, _ := pidCPU(agentPid)
	serverCPU1, _ := pidCPU(srv.cmd.Process.Pid)
	c.AgentCPU = (agentCPU1 - agentCPU0).Seconds() / wall.Seconds()
	c.ServerCPU = (serverCPU1 - serverCPU0).Seconds() / wall.Seconds()
	c.AgentRSS, _ = pidStatus(agentPid, "VmRSS")
	return c, nil
}

// rpoWriters is how many writers share the rate: enough to keep a
// FUSE mount's queue busy at 100 MB/s of 4 KiB writes.
const rpoWriters = 8

// paceWrites writes 4 KiB blocks at random in the first region bytes of
// the file at path, bytesPerSec in all, until ctx ends.
func paceWrites(ctx context.Context, path string, region, bytesPerSec int64, written *atomic.Int64) error {
	const bs = 4096
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, rpoWriters)
	for w := range rpoWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			buf, err := unix.Mmap(-1, 0, bs, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
			if err != nil {
				errs <- err
				return
			}
			defer unix.Munmap(buf)
			rng := rand.New(rand.NewPCG(uint64(w), uint64(start.UnixNano())))
			for ctx.Err() == nil {
				// Ahead of the rate: wait for it to catch up.
				if due := float64(bytesPerSec) * time.Since(start).Seconds(); float64(written.Load()) >= due {
					time.Sleep(time.Millisecond)
					continue
				}
				for i := 0; i < bs; i += 8 {
					buf[i] = byte(rng.Uint32())
				}
				if _, err := f.WriteAt(buf, rng.Int64N(region/bs)*bs); err != nil {
					errs <- err
					return
				}
				written.Add(bs)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// agentRPO asks the agent for vm's RPO; negative before its first point.
func agentRPO(client *http.Client, vm string) (time.Duration, error) {
	resp, err := client.Get("http://agent/v1/vms?vm=" + vm)
	if err != nil {
		return 0, fmt.Errorf("asking the agent: %w", err)
	}
	defer resp.Body.Close()
	var views []struct {
		RPO float64 `json:"rpo_seconds"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&views); err != nil || len(views) != 1 {
		return 0, fmt.Errorf("the agent's answer about %s: %v", vm, err)
	}
	if views[0].RPO < 0 {
		return -1, nil
	}
	return time.Duration(views[0].RPO * float64(time.Second)), nil
}

func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
}

// pidCPU returns the user and system CPU time of a process so far.
func pidCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

func waitFor(ctx context.Context, limit time.Duration, ok func() bool) error {
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// lineWriter feeds a child's output to a lineTail.
type lineWriter struct{ t *lineTail }

func (w lineWriter) Write(p []byte) (int, error) {
	for line := range strings.Lines(string(p)) {
		w.t.add(strings.TrimRight(line, "\n"))
	}
	return len(p), nil
}

// writeClientFiles writes the client certificate and key as PEM files, for
// a child process that connects with them.
func (p *shipPKI) writeClientFiles(dir string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")
	var certPEM []byte
	for _, der := range p.client.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(p.client.PrivateKey)
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
}

// String is the report as a table.
func (r *RPOReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "RPO of a protected VM (%s sparse disk, interval %v, %v per rate), agent and drfs target serve over loopback mutual TLS, --compress %s, --max-generation %s\n",
		sizeString(r.DiskSize), r.Interval, r.Duration, r.Compress, r.MaxGeneration)
	fmt.Fprintf(&b, "%-8s %-9s %-8s %-8s %-8s %-6s %-9s %-10s %-10s %s\n", "rate", "achieved", "p50", "p99", "max", "bar", "p99<=bar", "agent CPU", "server CPU", "agent RSS")
	for _, c := range r.Cases {
		fmt.Fprintf(&b, "%-8s %-9s %-8s %-8s %-8s %-6s %-9v %-10s %-10s %s\n",
			fmt.Sprintf("%dMB/s", c.RateMBps), fmt.Sprintf("%.1fMB/s", c.AchievedMBps),
			c.P50.Round(100*time.Millisecond), c.P99.Round(100*time.Millisecond), c.Max.Round(100*time.Millisecond),
			c.Bar.Round(time.Second), c.P99 <= c.Bar, fmt.Sprintf("%.2f", c.AgentCPU), fmt.Sprintf("%.2f", c.ServerCPU), mib(c.AgentRSS))
	}
	fmt.Fprintf(&b, "peak RSS: agent %s, server %s\n", mib(r.AgentPeakRSS), mib(r.ServerPeakRSS))
	return b.String()
}
