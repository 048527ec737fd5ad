package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// FioEngine runs each workload as one fio job: libaio, direct=1, queue
// depth as the workload says, time based, and for writes end_fsync=1 (the
// final fsync counts in the job's time). fio runs in its own process, so
// the benchmark's process holds only the mounts.
type FioEngine struct {
	// Path of the fio binary; "" finds "fio" on PATH.
	Path string
	// IOEngine is fio's ioengine, "" for libaio (io_uring also works
	// where the kernel allows it).
	IOEngine string
}

// LookFio returns the fio engine when fio is installed.
func LookFio() (FioEngine, bool) {
	path, err := exec.LookPath("fio")
	if err != nil {
		return FioEngine{}, false
	}
	return FioEngine{Path: path}, true
}

func (e FioEngine) ioengine() string {
	if e.IOEngine == "" {
		return "libaio"
	}
	return e.IOEngine
}

// Name implements Engine.
func (e FioEngine) Name() string {
	return "fio (" + e.ioengine() + ", direct=1, end_fsync=1 on writes)"
}

// Run implements Engine. fio counts time, not requests: lim.Ops is not
// supported.
func (e FioEngine) Run(ctx context.Context, path string, size int64, w Workload, lim Limit) (Measure, error) {
	if lim.Ops > 0 || lim.Runtime <= 0 {
		return Measure{}, errors.New("fio engine: give a runtime, not a request count")
	}
	bin := e.Path
	if bin == "" {
		bin = "fio"
	}
	cmd := exec.CommandContext(ctx, bin, e.args(path, size, w, lim.Runtime)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return Measure{}, ctx.Err()
		}
		return Measure{}, fmt.Errorf("fio %s on %s: %v: %s", w.Name, path, err, strings.TrimSpace(stderr.String()))
	}
	m, err := parseFio(stdout.Bytes(), w.Write)
	if err != nil {
		return Measure{}, fmt.Errorf("fio %s on %s: %w (stderr: %s)", w.Name, path, err, strings.TrimSpace(stderr.String()))
	}
	return m, nil
}

func (e FioEngine) args(path string, size int64, w Workload, runtime time.Duration) []string {
	rw := "read"
	switch {
	case w.Write && w.Random:
		rw = "randwrite"
	case w.Write:
		rw = "write"
	case w.Random:
		rw = "randread"
	}
	args := []string{
		"--name=" + w.Name,
		"--filename=" + path,
		"--rw=" + rw,
		"--bs=" + strconv.Itoa(w.BlockSize),
		"--iodepth=" + strconv.Itoa(max(w.QueueDepth, 1)),
		"--ioengine=" + e.ioengine(),
		"--direct=1",
		"--size=" + strconv.FormatInt(size, 10),
		"--time_based",
		"--runtime=" + strconv.FormatInt(max(runtime.Milliseconds(), 1), 10) + "ms",
		// The file is laid out already: never create, extend or fallocate it.
		"--allow_file_create=0",
		"--fallocate=none",
		"--output-format=json",
	}
	if w.Write {
		// A write job is done when what it wrote is durable: the time
		// of the final fsync counts, which is what a target that buffers
		// has to pay for.
		args = append(args, "--end_fsync=1")
	}
	if w.Random {
		// Uniform offsets without fio's bookkeeping of blocks already
		// visited, and a different sequence in every run.
		args = append(args, "--norandommap", "--randrepeat=0")
	}
	return args
}

// fioOutput is the part of fio's JSON output (format of fio 3.x) that the
// benchmark reads.
type fioOutput struct {
	Jobs []struct {
		Name  string  `json:"jobname"`
		Error int     `json:"error"`
		Read  fioStat `json:"read"`
		Write fioStat `json:"write"`
	} `json:"jobs"`
}

type fioStat struct {
	IOBytes   int64 `json:"io_bytes"`
	TotalIOs  int64 `json:"total_ios"`
	RuntimeMS int64 `json:"runtime"`
	Lat       struct {
		Mean float64 `json:"mean"`
	} `json:"lat_ns"`
}

// parseFio reads the figures of the single job in fio's JSON output. fio
// may print warnings before the JSON document; they are skipped.
func parseFio(out []byte, write bool) (Measure, error) {
	i := bytes.IndexByte(out, '{')
	if i < 0 {
		return Measure{}, errors.New("no JSON in fio's output")
	}
	var o fioOutput
	if err := json.Unmarshal(out[i:], &o); err != nil {
		return Measure{}, fmt.Errorf("reading fio's JSON output: %w", err)
	}
	if len(o.Jobs) != 1 {
		return Measure{}, fmt.Errorf("fio reported %d jobs, want 1", len(o.Jobs))
	}
	job := o.Jobs[0]
	if job.Error != 0 {
		return Measure{}, fmt.Errorf("fio job %s failed with error %d", job.Name, job.Error)
	}
	st := job.Read
	if write {
		st = job.Write
	}
	if st.TotalIOs == 0 || st.RuntimeMS == 0 {
		return Measure{}, fmt.Errorf("fio job %s completed no request", job.Name)
	}
	return Measure{
		Ops:         st.TotalIOs,
		Bytes:       st.IOBytes,
		Elapsed:     time.Duration(st.RuntimeMS) * time.Millisecond,
		MeanLatency: time.Duration(st.Lat.Mean),
	}, nil
}

// Version returns what "fio --version" prints, such as "fio-3.33".
func (e FioEngine) Version() string {
	bin := e.Path
	if bin == "" {
		bin = "fio"
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
