package dns

import (
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the DNS interface's Prometheus metrics; nil records nothing.
type metrics struct {
	answers   map[int]prometheus.Counter // by rcode, resolved once
	other     prometheus.Counter
	truncated prometheus.Counter
}

// answerRcodes are the rcodes the server answers with, one label each.
var answerRcodes = []int{mdns.RcodeSuccess, mdns.RcodeNameError, mdns.RcodeRefused, mdns.RcodeServerFailure,
	mdns.RcodeFormatError, mdns.RcodeNotImplemented, mdns.RcodeBadVers}

func newMetrics(reg prometheus.Registerer, s *Server) *metrics {
	if reg == nil {
		return nil
	}
	answers := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tributary_dns_answers_total",
		Help: "DNS answers by rcode (NOERROR includes NODATA).",
	}, []string{"rcode"})
	m := &metrics{answers: map[int]prometheus.Counter{}, other: answers.WithLabelValues("other")}
	for _, rc := range answerRcodes {
		m.answers[rc] = answers.WithLabelValues(mdns.RcodeToString[rc])
	}
	m.truncated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tributary_dns_truncated_total",
		Help: "UDP answers sent truncated (TC): the client retries over TCP.",
	})
	names := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tributary_dns_names",
		Help: "Names the DNS interface answers for (empty non-terminals included), as of its last index rebuild.",
	}, func() float64 { return float64(s.idx.Load().names.Len()) })
	vips := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tributary_dns_virtual_ips",
		Help: "Hosts with a virtual IP (pins included).",
	}, func() float64 { return float64(s.idx.Load().vips.Len()) })
	collided := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tributary_dns_virtual_ip_collisions",
		Help: "Hosts without a virtual IP because another host hashes to the same one (pin one, or widen the range).",
	}, func() float64 { return float64(s.idx.Load().vips.Colliding()) })
	reg.MustRegister(answers, m.truncated, names, vips, collided)
	return m
}

func (m *metrics) answered(resp *mdns.Msg) {
	if m == nil {
		return
	}
	if c, ok := m.answers[resp.Rcode]; ok {
		c.Inc()
	} else {
		m.other.Inc()
	}
	if resp.Truncated {
		m.truncated.Inc()
	}
}
