package health

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-mesh/tributary/discovery"
)

// metrics are the checker's Prometheus metrics. Counters are kept as
// checks run; the gauges are read from the sinks at scrape time.
type metrics struct {
	c           *Checker
	checks      *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	transitions *prometheus.CounterVec
	delay       prometheus.Histogram

	byHealth, heldDown, targets *prometheus.Desc
}

func newMetrics(c *Checker) *metrics {
	return &metrics{
		c: c,
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_health_checks_total",
			Help: "Active health checks run, by source, check type and result (pass or fail).",
		}, []string{"source", "type", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tributary_health_check_duration_seconds",
			Help:    "How long active health checks took, by source and check type.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"source", "type"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_health_transitions_total",
			Help: "Changes of a checked address's verdict, by source and new state (passing or critical).",
		}, []string{"source", "to"}),
		delay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tributary_health_check_delay_seconds",
			Help:    "How late checks started after they were due; it grows when max_concurrent_checks is too small for the load.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30},
		}),
		byHealth: prometheus.NewDesc("tributary_endpoints_by_health",
			"Endpoints of health-checked sources, by source and health as handed to the registry.", []string{"source", "health"}, nil),
		heldDown: prometheus.NewDesc("tributary_health_held_down",
			"Checked addresses held down for flapping, by source.", []string{"source"}, nil),
		targets: prometheus.NewDesc("tributary_health_targets",
			"Addresses under active health checks, by source.", []string{"source"}, nil),
	}
}

func (m *metrics) register(r prometheus.Registerer) {
	r.MustRegister(m.checks, m.duration, m.transitions, m.delay, m)
}

func (m *metrics) observe(source, typ string, ok bool, took time.Duration) {
	result := "fail"
	if ok {
		result = "pass"
	}
	m.checks.WithLabelValues(source, typ, result).Inc()
	m.duration.WithLabelValues(source, typ).Observe(took.Seconds())
}

func (m *metrics) transition(source string, to discovery.Health) {
	m.transitions.WithLabelValues(source, to.String()).Inc()
}

// Describe and Collect make metrics the collector of the gauges.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.byHealth
	ch <- m.heldDown
	ch <- m.targets
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.c.mu.Lock()
	sinks := m.c.sinks
	m.c.mu.Unlock()
	now := m.c.now()
	for _, s := range sinks {
		var counts [4]int
		held := 0
		s.mu.Lock()
		for _, gs := range s.groups {
			for _, svc := range gs.sent.Services {
				for _, e := range svc.Endpoints {
					if int(e.Health) < len(counts) {
						counts[e.Health]++
					}
				}
			}
		}
		for _, t := range s.targets {
			if t.st.heldDown(now) {
				held++
			}
		}
		targets := len(s.targets)
		s.mu.Unlock()
		for h, n := range counts {
			ch <- prometheus.MustNewConstMetric(m.byHealth, prometheus.GaugeValue, float64(n), s.name, discovery.Health(h).String())
		}
		ch <- prometheus.MustNewConstMetric(m.heldDown, prometheus.GaugeValue, float64(held), s.name)
		ch <- prometheus.MustNewConstMetric(m.targets, prometheus.GaugeValue, float64(targets), s.name)
	}
}
