package migrate

import (
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names, also queried by deploy/grafana/godwit-migrations.json (a test
// checks that every panel's query names one of these).
const (
	metricDuration       = "godwit_migration_duration_seconds"
	metricDowntime       = "godwit_migration_downtime_seconds"
	metricRounds         = "godwit_migration_rounds"
	metricRoundBytes     = "godwit_migration_round_bytes"
	metricDirtyRate      = "godwit_migration_dirty_rate_bytes_per_second"
	metricPostcopyFaults = "godwit_migration_postcopy_faults"
	metricFaultLatency   = "godwit_migration_postcopy_fault_latency_seconds"
	metricFailures       = "godwit_migration_failures_total"
	metricMigrations     = "godwit_migrations_total"
	metricOverruns       = "godwit_migration_overruns_total"
	metricInFlight       = "godwit_migrations_in_flight"
	metricBytes          = "godwit_migration_bytes_total"
	metricInDoubt        = "godwit_migrations_in_doubt"
)

// phaseUnknown labels a failure whose Result named no phase.
const phaseUnknown Phase = "unknown"

// Buckets. Downtime is the figure users watch: fine steps around the 50 ms
// goal and QEMU's 300 ms default budget, up to a stop-and-copy of many GiB.
// Duration spans a small process on loopback (tens of ms) to a large one
// over a slow link (many minutes).
var (
	downtimeBuckets = []float64{.001, .002, .005, .01, .02, .03, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2, 5, 10, 30, 60}
	durationBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200}
	roundsBuckets   = []float64{0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50}
	// 4 KiB (one page) to 64 GiB, ×4 a step.
	bytesBuckets = prometheus.ExponentialBuckets(4096, 4, 13)
	// 64 KiB/s to 64 GiB/s, ×4 a step.
	rateBuckets = prometheus.ExponentialBuckets(64<<10, 4, 11)
	// A fault served on the same vCPU takes ~8 µs, across vCPUs ~49 µs,
	// from a remote page server a round trip more.
	faultBuckets  = []float64{5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, .01, .025, .05, .1, .25, 1}
	faultsBuckets = prometheus.ExponentialBuckets(1, 4, 12) // 1 to 4M faults
	allModes      = []Mode{ModePrecopy, ModePostcopy, ModeHybrid}
	allPhases     = []Phase{PhaseConnect, PhaseCheck, PhasePrecopy, PhaseFreeze, PhaseRestore, PhasePostcopy, PhaseCommit, PhaseSwitchover, phaseUnknown}
)

// Metrics are the Prometheus collectors of migrations, on the agent (and on
// anything else that runs migrations and serves /metrics). A nil *Metrics is
// valid and records nothing.
//
// Histograms of a migration (duration, downtime, rounds, faults per
// migration) describe the migrations that completed; the per-round
// histograms, bytes and failure counters count every migration, failed or
// not, for what it moved.
type Metrics struct {
	duration   *prometheus.HistogramVec // mode
	downtime   *prometheus.HistogramVec // mode
	rounds     *prometheus.HistogramVec // mode
	roundBytes prometheus.Histogram
	dirtyRate  prometheus.Histogram
	faults     prometheus.Histogram
	faultLat   prometheus.Histogram
	failures   *prometheus.CounterVec // phase
	total      *prometheus.CounterVec // mode, result
	overruns   prometheus.Counter
	inFlight   prometheus.Gauge
	inDoubt    prometheus.Gauge
	bytes      *prometheus.CounterVec // stage
}

// NewMetrics creates the collectors and registers them on reg (if not nil).
// Every labelled series is created at zero, so that a dashboard's rate() has
// a sample from before the first migration and failures read 0, not "no data".
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	h := func(name, help string, b []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: b})
	}
	hv := func(name, help string, b []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: b}, labels)
	}
	m := &Metrics{
		duration: hv(metricDuration, "Wall time of completed migrations, from connect to the destination's confirmation (post-copy: to the last page in).",
			durationBuckets, "mode"),
		downtime: hv(metricDowntime, "Time completed migrations kept the program stopped, from the source freeze to the destination's resume, as godwit measures it.",
			downtimeBuckets, "mode"),
		rounds: hv(metricRounds, "Memory rounds per completed migration, the frozen last one included.",
			roundsBuckets, "mode"),
		roundBytes: h(metricRoundBytes, "Bytes on the wire per memory round.", bytesBuckets),
		dirtyRate:  h(metricDirtyRate, "Bytes per second the program wrote during each memory round.", rateBuckets),
		faults:     h(metricPostcopyFaults, "Post-copy faults served per completed migration that had a post-copy phase.", faultsBuckets),
		faultLat: h(metricFaultLatency, "Time from a post-copy fault to its page being in place.",
			faultBuckets),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricFailures,
			Help: "Failed migrations, by the phase they failed in."}, []string{"phase"}),
		total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricMigrations,
			Help: "Finished migrations, by mode and result (ok or failed)."}, []string{"mode", "result"}),
		overruns: prometheus.NewCounter(prometheus.CounterOpts{Name: metricOverruns,
			Help: "Completed migrations whose pre-copy did not converge and whose last delta overran the downtime budget."}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: metricInFlight,
			Help: "Migrations running now."}),
		inDoubt: prometheus.NewGauge(prometheus.GaugeOpts{Name: metricInDoubt,
			Help: "Migrations whose copy the agent holds stopped after losing its source between ready and go, until `godwit migrate resolve` settles them."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricBytes,
			Help: "Memory bytes moved: on the wire in rounds, page bytes in post-copy."}, []string{"stage"}),
	}
	for _, mode := range allModes {
		m.duration.WithLabelValues(string(mode))
		m.downtime.WithLabelValues(string(mode))
		m.rounds.WithLabelValues(string(mode))
		m.total.WithLabelValues(string(mode), "ok")
		m.total.WithLabelValues(string(mode), "failed")
	}
	for _, p := range allPhases {
		m.failures.WithLabelValues(string(p))
	}
	m.bytes.WithLabelValues(stageRounds)
	m.bytes.WithLabelValues(stagePostcopy)
	if reg != nil {
		for _, c := range m.collectors() {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Values of the stage label of godwit_migration_bytes_total.
const (
	stageRounds   = "rounds"
	stagePostcopy = "postcopy"
)

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.duration, m.downtime, m.rounds, m.roundBytes, m.dirtyRate,
		m.faults, m.faultLat, m.failures, m.total, m.overruns, m.inFlight, m.inDoubt, m.bytes}
}

// Started counts a migration in flight until the returned function is called
// with its result, which it then observes. The function acts once; later calls
// do nothing, so it may be both deferred and called. Note that
// `defer done(res)` evaluates res at once: defer a closure instead.
func (m *Metrics) Started() func(Result) {
	if m == nil {
		return func(Result) {}
	}
	m.inFlight.Inc()
	var once sync.Once
	return func(r Result) {
		once.Do(func() {
			m.inFlight.Dec()
			m.Observe(r)
		})
	}
}

// InDoubt adds delta to the migrations held in doubt.
func (m *Metrics) InDoubt(delta int) {
	if m != nil {
		m.inDoubt.Add(float64(delta))
	}
}

// Observe records one finished migration, completed or failed.
func (m *Metrics) Observe(r Result) {
	if m == nil {
		return
	}
	mode := r.Mode
	if mode == "" {
		mode = ModePrecopy
	}
	for _, rd := range r.Rounds {
		m.roundBytes.Observe(float64(rd.Bytes))
		m.bytes.WithLabelValues(stageRounds).Add(float64(rd.Bytes))
		// 0 is "not measured": the first round sends every page, so
		// the program's writes show only from the second on.
		if rd.DirtyRate > 0 {
			m.dirtyRate.Observe(rd.DirtyRate)
		}
	}
	if r.Postcopy != nil {
		m.bytes.WithLabelValues(stagePostcopy).Add(float64(r.Postcopy.Pages) * float64(os.Getpagesize()))
	}
	if failed(r) {
		p := r.FailedPhase
		if p == "" {
			p = phaseUnknown
		}
		m.failures.WithLabelValues(string(p)).Inc()
		m.total.WithLabelValues(string(mode), "failed").Inc()
		return
	}
	m.total.WithLabelValues(string(mode), "ok").Inc()
	m.duration.WithLabelValues(string(mode)).Observe(r.Total.Seconds())
	m.downtime.WithLabelValues(string(mode)).Observe(r.Downtime.Seconds())
	m.rounds.WithLabelValues(string(mode)).Observe(float64(len(r.Rounds)))
	if r.Postcopy != nil {
		m.faults.Observe(float64(r.Postcopy.Faults))
	}
	if r.Overrun {
		m.overruns.Inc()
	}
}

// ObserveFault records the service time of one post-copy fault, as the
// destination serves it (the migration's summary in Result.Postcopy is not
// counted again by Observe).
func (m *Metrics) ObserveFault(d time.Duration) {
	if m == nil {
		return
	}
	m.faultLat.Observe(d.Seconds())
}

// failed reports whether the migration failed.
func failed(r Result) bool { return r.FailedPhase != "" || r.Error != "" }
