package destination

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the destination API's Prometheus metrics. A nil *Metrics
// records nothing.
type Metrics struct {
	streams     *prometheus.GaugeVec
	updates     *prometheus.CounterVec
	firstMsg    *prometheus.HistogramVec
	propagation prometheus.Histogram
	refused     *prometheus.CounterVec
	slowClosed  prometheus.Counter

	// sent is updates by type, resolved once: a send is on the hot path.
	sent map[string]prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tributary_streams",
			Help: "Open destination API streams.",
		}, []string{"method"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_updates_sent_total",
			Help: "Messages sent on destination API streams, by type (add, remove, no_endpoints, profile).",
		}, []string{"type"}),
		firstMsg: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tributary_stream_first_message_seconds",
			Help:    "Time from a stream's request to its first message (includes the startup sync wait).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 3},
		}, []string{"method"}),
	}
	m.propagation = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tributary_update_propagation_seconds",
		Help:    "Time from a source handing a change over to its send on a Get stream, per stream that sent something.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tributary_streams_refused_total",
		Help: "New streams refused with ResourceExhausted by the admission limits.",
	}, []string{"method"})
	m.slowClosed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tributary_streams_slow_closed_total",
		Help: "Streams closed with Unavailable because the client took no update within the send timeout.",
	})
	reg.MustRegister(m.streams, m.updates, m.firstMsg, m.propagation, m.refused, m.slowClosed)
	// Every series a dashboard or an alert reads exists from the start, at 0:
	// a CounterVec exports nothing until its first increment, and a rate()
	// over a series that appears with the first refusal misses that refusal.
	for _, method := range []string{"Get", "GetProfile"} {
		m.streams.WithLabelValues(method)
		m.refused.WithLabelValues(method)
		m.firstMsg.WithLabelValues(method)
	}
	m.sent = map[string]prometheus.Counter{}
	for _, t := range []string{"add", "remove", "no_endpoints", "profile"} {
		m.sent[t] = m.updates.WithLabelValues(t)
	}
	return m
}

func (m *Metrics) streamOpened(method string) {
	if m != nil {
		m.streams.WithLabelValues(method).Inc()
	}
}

func (m *Metrics) streamClosed(method string) {
	if m != nil {
		m.streams.WithLabelValues(method).Dec()
	}
}

func (m *Metrics) sentKind(kind string) {
	if m != nil {
		m.sent[kind].Inc()
	}
}

func (m *Metrics) sentProfile() {
	if m != nil {
		m.sent["profile"].Inc()
	}
}

func (m *Metrics) firstMessage(method string, d time.Duration) {
	if m != nil {
		m.firstMsg.WithLabelValues(method).Observe(d.Seconds())
	}
}

func (m *Metrics) propagated(d time.Duration) {
	if m != nil {
		m.propagation.Observe(d.Seconds())
	}
}

func (m *Metrics) streamRefused(method string) {
	if m != nil {
		m.refused.WithLabelValues(method).Inc()
	}
}

func (m *Metrics) slowClientClosed() {
	if m != nil {
		m.slowClosed.Inc()
	}
}
