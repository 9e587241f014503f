package tlsauth

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the guard's Prometheus series; a nil *metrics records nothing.
type metrics struct {
	handshakeFailures *prometheus.CounterVec
	denied            *prometheus.CounterVec
	reloads           *prometheus.CounterVec
	expiry            prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		handshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_tls_handshake_failures_total",
			Help: "TLS handshakes refused, by listener (api, admin) and reason (not_tls, expired, untrusted, unknown_trust_domain, no_spiffe_id, aborted, other).",
		}, []string{"listener", "reason"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_tls_requests_denied_total",
			Help: "Calls refused by authorization, by API and code (unauthenticated: no client certificate; permission_denied: not on the API's access list).",
		}, []string{"api", "code"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_tls_reloads_total",
			Help: "Certificate and bundle changes taken in (result ok) or refused, keeping the previous ones (result error).",
		}, []string{"result"}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tributary_tls_certificate_expiry_timestamp_seconds",
			Help: "When the server certificate in use expires (Unix time).",
		}),
	}
	reg.MustRegister(m.handshakeFailures, m.denied, m.reloads, m.expiry)
	return m
}

func (m *metrics) handshakeFailed(listener, reason string) {
	if m != nil {
		m.handshakeFailures.WithLabelValues(listener, reason).Inc()
	}
}

func (m *metrics) deniedCall(api, code string) {
	if m != nil {
		m.denied.WithLabelValues(api, code).Inc()
	}
}

func (m *metrics) reloaded(ok bool) {
	if m == nil {
		return
	}
	if ok {
		m.reloads.WithLabelValues("ok").Inc()
	} else {
		m.reloads.WithLabelValues("error").Inc()
	}
}

func (m *metrics) setExpiry(t time.Time) {
	if m != nil {
		m.expiry.Set(float64(t.Unix()))
	}
}
