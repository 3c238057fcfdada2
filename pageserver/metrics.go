package pageserver

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the page server's Prometheus counters. A nil *Metrics is
// valid and counts nothing.
type Metrics struct {
	bytes    *prometheus.CounterVec // direction: in (ADD data), out (GET data)
	pages    *prometheus.CounterVec
	conns    *prometheus.CounterVec // transport
	active   prometheus.Gauge
	errors   *prometheus.CounterVec // reason
	requests *prometheus.CounterVec // command
}

// Error reasons used in godwit_page_server_errors_total.
const (
	reasonHeader    = "bad_header"     // truncated or unreadable header
	reasonCommand   = "bad_command"    // unknown or unexpected command
	reasonDst       = "bad_dst"        // dst_id with an unknown type or id
	reasonRange     = "bad_range"      // vaddr/nr_pages/flags nonsense
	reasonTruncated = "truncated"      // page data shorter than announced
	reasonIO        = "io"             // image file error
	reasonConflict  = "conflict"       // dst_id open on another connection
	reasonParent    = "parent_missing" // HOLE not covered by the parent
	reasonLimit     = "conn_limit"     // too many connections
	reasonTLS       = "tls"            // handshake refused
	reasonGetMiss   = "get_miss"       // GET of pages the images don't hold
	reasonUnflushed = "unflushed"      // session ended without CLOSE
	reasonIdle      = "timeout"        // idle or too slow peer dropped
	reasonQuota     = "quota"          // --max-bytes or --max-files reached
	reasonExists    = "exists"         // OPEN of an image already there
)

// NewMetrics creates the counters and registers them on reg (if not nil).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	ns := "godwit"
	sub := "page_server"
	m := &Metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "bytes_total", Help: "Page data bytes received (in) and served to lazy-pages (out)."},
			[]string{"direction"}),
		pages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "pages_total", Help: "Pages received (in), recorded in the parent (hole) and served (out)."},
			[]string{"direction"}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_total", Help: "Connections accepted."}, []string{"transport"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_active", Help: "Connections being served."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "errors_total", Help: "Requests or connections refused, by reason."}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "requests_total", Help: "Requests received, by command."}, []string{"command"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.bytes, m.pages, m.conns, m.active, m.errors, m.requests} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// MetricsHandler serves the metrics of g (a *prometheus.Registry) in the
// Prometheus text format, for --metrics-address.
func MetricsHandler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}

func (m *Metrics) addBytes(dir string, n int64) {
	if m != nil && n > 0 {
		m.bytes.WithLabelValues(dir).Add(float64(n))
	}
}

func (m *Metrics) addPages(dir string, n uint64) {
	if m != nil && n > 0 {
		m.pages.WithLabelValues(dir).Add(float64(n))
	}
}

func (m *Metrics) conn(transport string) {
	if m != nil {
		m.conns.WithLabelValues(transport).Inc()
		m.active.Inc()
	}
}

func (m *Metrics) connDone() {
	if m != nil {
		m.active.Dec()
	}
}

func (m *Metrics) error(reason string) {
	if m != nil {
		m.errors.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) request(cmd string) {
	if m != nil {
		m.requests.WithLabelValues(cmd).Inc()
	}
}
