package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nftpol/nftpol/agent"
	"github.com/nftpol/nftpol/offenders"
)

// agentMetrics are the agent's Prometheus metrics: its state, read when
// scraped, and the counts and latencies it observes as they happen. Names
// that status --format prometheus (the textfile collector's) also has mean
// the same here.
type agentMetrics struct {
	reg          *prometheus.Registry
	heal         prometheus.Histogram
	episodes     *prometheus.CounterVec
	terminations *prometheus.CounterVec

	agent *agent.Agent
	off   *offenders.Watcher
}

func newAgentMetrics() *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		heal: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nftpol_heal_duration_seconds",
			Help:    "How long putting the table back after another process changed it took (monitor mode).",
			Buckets: []float64{.005, .01, .025, .05, .1, .2, .5, 1, 2.5},
		}),
		episodes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nftpol_episodes_total",
			Help: "Episodes of an account serving where the policy does not allow it, by protocol.",
		}, []string{"proto"}),
		terminations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nftpol_terminations_total",
			Help: "Processes the agent ended (or, with dry_run, would have ended), by outcome.",
		}, []string{"outcome", "dry_run"}),
	}
	m.reg.MustRegister(m.heal, m.episodes, m.terminations, m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// event counts what the offender watcher reports.
func (m *agentMetrics) event(e offenders.Event) {
	switch e.Kind {
	case offenders.EpisodeStarted:
		m.episodes.WithLabelValues(e.Key.Proto).Inc()
	case offenders.Terminated:
		m.terminations.WithLabelValues(string(e.Termination.Outcome), strconv.FormatBool(e.DryRun)).Inc()
	}
}

var (
	descInstalled  = prometheus.NewDesc("nftpol_table_installed", "1 when the agent enforces a policy (0 before the first apply, or after nftpol remove).", nil, nil)
	descInSync     = prometheus.NewDesc("nftpol_in_sync", "1 when the table holds the policy the files say, with no foreign change waiting to be healed.", nil, nil)
	descOwned      = prometheus.NewDesc("nftpol_table_owned", "1 when the agent owns the table (no other process can change it).", nil, nil)
	descLastApply  = prometheus.NewDesc("nftpol_last_apply_timestamp_seconds", "When the agent last changed the table for a policy (Unix time; 0: not since it started).", nil, nil)
	descApplies    = prometheus.NewDesc("nftpol_applies_total", "Applies that changed the table.", nil, nil)
	descFailures   = prometheus.NewDesc("nftpol_apply_failures_total", "Applies and heals the kernel refused (the table stayed as it was).", nil, nil)
	descHeals      = prometheus.NewDesc("nftpol_heals_total", "Foreign changes to the table put back.", nil, nil)
	descPolicyErr  = prometheus.NewDesc("nftpol_policy_error", "1 while the policy files are broken (the last good policy stays enforced).", nil, nil)
	descPolicyErrs = prometheus.NewDesc("nftpol_policy_errors_total", "Times the policy files turned out broken.", nil, nil)
	descOpen       = prometheus.NewDesc("nftpol_episodes_open", "Sockets being blocked now: an account serving where it may not.", nil, nil)
	descViolations = prometheus.NewDesc("nftpol_violation_packets", "Packets of blocked serving per uid, account, protocol and port, over the recording window (an entry expires an hour after its last packet), as in status --format prometheus.",
		[]string{"uid", "account", "proto", "port"}, nil)
)

// Describe and Collect make the agent's state a collector.
func (m *agentMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInstalled, descInSync, descOwned, descLastApply, descApplies, descFailures, descHeals, descPolicyErr, descPolicyErrs, descOpen, descViolations} {
		ch <- d
	}
}

func (m *agentMetrics) Collect(ch chan<- prometheus.Metric) {
	if m.agent == nil {
		return
	}
	s := m.agent.Stats()
	r := s.Report
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	gauge(descInstalled, b(s.Enforcing))
	gauge(descInSync, b(s.InSync))
	gauge(descOwned, b(s.Enforcing && r.Mode == string(agent.ModeOwner)))
	last := 0.0
	if r.LastApply != nil {
		last = float64(r.LastApply.Unix())
	}
	gauge(descLastApply, last)
	counter(descApplies, r.Applies)
	counter(descFailures, r.Failures)
	counter(descHeals, r.Heals)
	gauge(descPolicyErr, b(r.PolicyError != ""))
	counter(descPolicyErrs, r.PolicyErrors)
	gauge(descOpen, float64(len(r.Episodes)))
	if m.off != nil {
		for _, v := range m.off.Violations() {
			ch <- prometheus.MustNewConstMetric(descViolations, prometheus.GaugeValue, float64(v.Packets),
				strconv.FormatUint(uint64(v.UID), 10), v.Account, v.Proto, strconv.Itoa(int(v.Port)))
		}
	}
}

// serveMetrics serves /metrics on addr ("HOST:PORT", or "unix:PATH") until
// ctx ends.
func serveMetrics(addr string, m *agentMetrics, log *slog.Logger) (func(), error) {
	network, address := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", path
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
		}
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("serving metrics", "err", err.Error())
		}
	}()
	log.Info("serving metrics", "addr", ln.Addr().String())
	return func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(c)
		if network == "unix" {
			_ = os.Remove(address)
		}
	}, nil
}
