package agent

import (
	"runtime"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/drfs-project/drfs/orchestrator"
)

// metricsRegistry returns the registry the agent's metrics endpoint
// serves: the VMs' metrics, the build's, and the process's and Go
// runtime's (memory, CPU, open files, goroutines).
func (a *agent) metricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.metricsCollector(), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{Namespace: "drfs"}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "drfs_build_info",
		Help:        "1, labelled with the version of drfs (and its commit) and of Go that built it.",
		ConstLabels: prometheus.Labels{"version": strings.TrimPrefix(a.version, "drfs "), "goversion": runtime.Version()},
	}, func() float64 { return 1 }))
	return reg
}

// agentMetrics exports the agent's per-VM state to Prometheus, read from
// the agent at each scrape (nothing is counted twice).
type agentMetrics struct {
	a                                    *agent
	rpo, logBytes, sent, pending, health *prometheus.Desc
	state, resync, failures, lastPoint   *prometheus.Desc
	stateFull                            *prometheus.Desc
}

func (a *agent) metricsCollector() prometheus.Collector {
	vm := []string{"vm"}
	return &agentMetrics{
		a:        a,
		rpo:      prometheus.NewDesc("drfs_rpo_seconds", "Age of the newest crash-consistent recovery point of the VM on its target (-1 before the first); fuzzy points do not count.", vm, nil),
		logBytes: prometheus.NewDesc("drfs_log_bytes", "Bytes of block data the change log holds for the VM.", vm, nil),
		sent:     prometheus.NewDesc("drfs_shipped_bytes_total", "Bytes sent to the target for the VM since the agent started (after compression).", vm, nil),
		pending:  prometheus.NewDesc("drfs_generations_pending", "Frozen generations of the VM waiting to be shipped.", vm, nil),
		health:   prometheus.NewDesc("drfs_health", "Health of the VM's protection: 0 Normal, 1 Warning, 2 Critical.", vm, nil),
		state:    prometheus.NewDesc("drfs_protection_state", "1 for the VM's protection state, 0 for each other state.", []string{"vm", "state"}, nil),
		lastPoint: prometheus.NewDesc("drfs_last_consistent_point_timestamp_seconds",
			"When the newest crash-consistent recovery point of the VM was cut (Unix time); absent before the first.", vm, nil),
		resync:   prometheus.NewDesc("drfs_resync_progress_ratio", "Progress of the VM's running resynchronization or initial copy, 0 to 1.", vm, nil),
		failures: prometheus.NewDesc("drfs_replication_failures", "Replication attempts of the VM that failed in a row.", vm, nil),
		stateFull: prometheus.NewDesc("drfs_state_dir_full",
			"1 while the agent's state directory is full (changed disks are flagged for resync instead of logged), 0 otherwise.", nil, nil),
	}
}

func (m *agentMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.rpo, m.logBytes, m.sent, m.pending, m.health, m.state, m.resync, m.failures, m.lastPoint, m.stateFull} {
		ch <- d
	}
}

func (m *agentMetrics) Collect(ch chan<- prometheus.Metric) {
	full := 0.0
	if m.a.log.Space().Full {
		full = 1
	}
	ch <- prometheus.MustNewConstMetric(m.stateFull, prometheus.GaugeValue, full)
	for _, v := range m.a.views("") {
		if v.State == orchestrator.Unprotected {
			continue
		}
		gauge := func(d *prometheus.Desc, x float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, v.VM)
		}
		gauge(m.rpo, v.RPO)
		gauge(m.logBytes, float64(v.LogBytes))
		ch <- prometheus.MustNewConstMetric(m.sent, prometheus.CounterValue, float64(v.BytesSent), v.VM)
		gauge(m.pending, float64(v.Pending))
		level := map[orchestrator.Level]float64{orchestrator.Normal: 0, orchestrator.Warning: 1, orchestrator.Critical: 2}
		gauge(m.health, level[v.Health.Level])
		gauge(m.failures, float64(v.Failures))
		for _, s := range orchestrator.States {
			// Every series is there, so that an alert on one sees 0 rather
			// than no data.
			on := 0.0
			if s == v.State {
				on = 1
			}
			ch <- prometheus.MustNewConstMetric(m.state, prometheus.GaugeValue, on, v.VM, string(s))
		}
		if !v.NewestPoint.IsZero() {
			gauge(m.lastPoint, float64(v.NewestPoint.UnixNano())/1e9)
		}
		progress := 0.0
		if v.Job != nil && (v.Job.Kind == orchestrator.JobResync || v.Job.Kind == orchestrator.JobInitialReplication) {
			progress = float64(v.Job.Progress) / 100
		}
		gauge(m.resync, progress)
	}
}
