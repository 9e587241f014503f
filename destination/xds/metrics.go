package xds

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	streams     *prometheus.GaugeVec
	pushes      *prometheus.CounterVec
	resources   *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	staleNonces prometheus.Counter
	badRequests prometheus.Counter
	slowClosed  prometheus.Counter
	refused     prometheus.Counter

	// The series of pushes and resources by kind, looked up once.
	pushed, resourcesSent [numKinds]prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tributary_xds_streams", Help: "Open ADS streams, by protocol (sotw, delta).",
		}, []string{"protocol"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_xds_pushes_total", Help: "xDS responses sent, by type (lds, rds, cds, eds).",
		}, []string{"type"}),
		resources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_xds_resources_sent_total", Help: "Resources (and delta removals) carried by xDS responses, by type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_xds_nacks_total", Help: "xDS responses a client rejected (NACK), by type.",
		}, []string{"type"}),
		staleNonces: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tributary_xds_stale_nonces_total", Help: "xDS requests ignored because they answered an older response than the last sent.",
		}),
		badRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tributary_xds_bad_requests_total", Help: "xDS requests refused as malformed (unknown type URL), ending their stream.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tributary_xds_streams_refused_total", Help: "ADS streams refused with ResourceExhausted: over the maximum of open streams or the rate of new ones.",
		}),
		slowClosed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tributary_xds_slow_clients_closed_total", Help: "Connections of xDS clients closed because they took no response for the send timeout.",
		}),
	}
	// Every series exists from the start, so that /metrics lists them
	// (and rates start at zero rather than at the first event).
	for _, p := range []string{"sotw", "delta"} {
		m.streams.WithLabelValues(p)
	}
	for k, name := range kindNames {
		m.pushed[k] = m.pushes.WithLabelValues(name)
		m.resourcesSent[k] = m.resources.WithLabelValues(name)
		m.nacks.WithLabelValues(name)
	}
	if reg != nil {
		reg.MustRegister(m.streams, m.pushes, m.resources, m.nacks, m.staleNonces, m.badRequests, m.slowClosed, m.refused)
	}
	return m
}
