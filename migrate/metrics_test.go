package migrate

import (
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func newTestMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// histogram returns the sample count and sum of the histogram name whose
// labels include want.
func histogram(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) (uint64, float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if labelValue(m, k) != v {
					continue next
				}
			}
			return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
		}
	}
	t.Fatalf("no histogram %s%v", name, want)
	return 0, 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestMetricsObserveCompleted(t *testing.T) {
	m, reg := newTestMetrics(t)
	done := m.Started()
	if g := testutil.ToFloat64(m.inFlight); g != 1 {
		t.Fatalf("in flight %v, want 1", g)
	}
	r := Result{
		Mode:     ModeHybrid,
		Total:    1500 * time.Millisecond,
		Downtime: 40 * time.Millisecond,
		Rounds: []Round{
			{N: 0, Bytes: 64 << 20, Duration: time.Second, DirtyRate: 8 << 20},
			{N: 1, Bytes: 8 << 20, Duration: 100 * time.Millisecond, DirtyRate: 4 << 20},
			{N: 2, Bytes: 1 << 20, Frozen: 30 * time.Millisecond}, // rate not measured
		},
		Postcopy: &Postcopy{Pages: 10, Faults: 7},
		Overrun:  true,
	}
	done(r)
	done(r) // a second call must not count twice
	if g := testutil.ToFloat64(m.inFlight); g != 0 {
		t.Fatalf("in flight %v after done, want 0", g)
	}
	if n, s := histogram(t, reg, metricDuration, map[string]string{"mode": "hybrid"}); n != 1 || s != 1.5 {
		t.Errorf("duration count %d sum %v, want 1, 1.5", n, s)
	}
	if n, s := histogram(t, reg, metricDowntime, map[string]string{"mode": "hybrid"}); n != 1 || s != 0.04 {
		t.Errorf("downtime count %d sum %v, want 1, 0.04", n, s)
	}
	if n, _ := histogram(t, reg, metricDowntime, map[string]string{"mode": "precopy"}); n != 0 {
		t.Errorf("precopy downtime count %d, want 0", n)
	}
	if n, s := histogram(t, reg, metricRounds, map[string]string{"mode": "hybrid"}); n != 1 || s != 3 {
		t.Errorf("rounds count %d sum %v, want 1, 3", n, s)
	}
	if n, s := histogram(t, reg, metricRoundBytes, nil); n != 3 || s != 73<<20 {
		t.Errorf("round bytes count %d sum %v, want 3, %d", n, s, 73<<20)
	}
	if n, s := histogram(t, reg, metricDirtyRate, nil); n != 2 || s != 12<<20 {
		t.Errorf("dirty rate count %d sum %v, want 2, %d", n, s, 12<<20)
	}
	if n, s := histogram(t, reg, metricPostcopyFaults, nil); n != 1 || s != 7 {
		t.Errorf("faults per migration count %d sum %v, want 1, 7", n, s)
	}
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("rounds")); v != 73<<20 {
		t.Errorf("round bytes total %v", v)
	}
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("postcopy")); v != float64(10*os.Getpagesize()) {
		t.Errorf("post-copy bytes total %v", v)
	}
	if v := testutil.ToFloat64(m.total.WithLabelValues("hybrid", "ok")); v != 1 {
		t.Errorf("migrations ok %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.overruns); v != 1 {
		t.Errorf("overruns %v, want 1", v)
	}
	if n := testutil.CollectAndCount(m.failures); n != len(allPhases) {
		t.Errorf("%d failure series, want one per phase (%d)", n, len(allPhases))
	}
	for _, p := range allPhases {
		if v := testutil.ToFloat64(m.failures.WithLabelValues(string(p))); v != 0 {
			t.Errorf("failures{phase=%s} = %v after a completed migration", p, v)
		}
	}
}

func TestMetricsObserveFailed(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.Observe(Result{Mode: ModePrecopy, FailedPhase: PhaseFreeze, Error: "boom",
		Rounds: []Round{{Bytes: 4096, Duration: time.Millisecond, DirtyRate: 1}}})
	m.Observe(Result{Error: "no phase"})
	if v := testutil.ToFloat64(m.failures.WithLabelValues("freeze")); v != 1 {
		t.Errorf("failures{phase=freeze} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.failures.WithLabelValues("unknown")); v != 1 {
		t.Errorf("failures{phase=unknown} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(m.total.WithLabelValues("precopy", "failed")); v != 2 {
		t.Errorf("migrations failed %v, want 2", v)
	}
	// What a failed migration moved is counted; it has no duration or downtime.
	if v := testutil.ToFloat64(m.bytes.WithLabelValues("rounds")); v != 4096 {
		t.Errorf("bytes %v, want 4096", v)
	}
	if n, _ := histogram(t, reg, metricDowntime, map[string]string{"mode": "precopy"}); n != 0 {
		t.Errorf("downtime observed for a failed migration")
	}
	if n, _ := histogram(t, reg, metricDuration, map[string]string{"mode": "precopy"}); n != 0 {
		t.Errorf("duration observed for a failed migration")
	}
}

func TestMetricsFaultLatency(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.ObserveFault(50 * time.Microsecond)
	m.ObserveFault(2 * time.Millisecond)
	n, s := histogram(t, reg, metricFaultLatency, nil)
	if n != 2 || s < 0.00204 || s > 0.00206 {
		t.Errorf("fault latency count %d sum %v, want 2, 0.00205", n, s)
	}
}

func TestMetricsNil(t *testing.T) {
	var m *Metrics
	done := m.Started()
	done(Result{})
	m.Observe(Result{Error: "x"})
	m.ObserveFault(time.Millisecond)
}

func TestMetricsRegistry(t *testing.T) {
	_, reg := newTestMetrics(t)
	// Every series exists before the first migration (a dashboard's rate()
	// needs a sample from before it).
	names := []string{metricDuration, metricDowntime, metricRounds, metricRoundBytes, metricDirtyRate,
		metricPostcopyFaults, metricFaultLatency, metricFailures, metricMigrations, metricOverruns,
		metricInFlight, metricBytes}
	n, err := testutil.GatherAndCount(reg, names...)
	if err != nil {
		t.Fatal(err)
	}
	want := 3*3 + 4 + len(allPhases) + 3*2 + 1 + 1 + 2
	if n != want {
		t.Errorf("%d series before any migration, want %d", n, want)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("registering twice on one registry did not fail")
	}
}
