package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-mesh/tributary/cache"
)

// sourceCollector exports per-source state at scrape time, so the update
// path pays nothing for it.
type sourceCollector struct {
	status StatusFunc
	store  *cache.Store

	up, synced, stale, lastSuccess, errors, applies, endpoints, services, keys *prometheus.Desc
	expired, expiries, held, heldEndpoints, guardTrips, rejected               *prometheus.Desc
}

// NewSourceCollector returns a collector of per-source metrics (labels
// source and kind), read from the manager's status and the registry.
func NewSourceCollector(status StatusFunc, store *cache.Store) prometheus.Collector {
	l := []string{"source", "kind"}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, l, nil) }
	return &sourceCollector{
		status:        status,
		store:         store,
		up:            d("tributary_source_up", "1 when the source's last contact with its backend succeeded, 0 while it is stale."),
		synced:        d("tributary_source_synced", "1 once the source's first complete state is in the registry."),
		stale:         d("tributary_source_stale", "1 while the source serves its last good state because its backend fails."),
		lastSuccess:   d("tributary_source_last_success_timestamp_seconds", "Unix time of the source's last successful contact with its backend."),
		errors:        d("tributary_source_errors_total", "Backend or validation errors the source reported."),
		applies:       d("tributary_source_applies_total", "Registry transactions from this source that changed something."),
		endpoints:     d("tributary_source_endpoints", "Endpoints the source holds in the registry (all health states)."),
		services:      d("tributary_source_services", "Service assertions the source holds in the registry."),
		keys:          d("tributary_source_groups", "Groups (source keys) the source holds in the registry."),
		expired:       d("tributary_source_expired", "1 while the source's endpoints are withdrawn because it has been stale for longer than its stale_after."),
		expiries:      d("tributary_source_expiries_total", "Times the source's endpoints were withdrawn by stale_after."),
		held:          d("tributary_source_withdrawal_held", "1 while the deletion guard holds an update of the source that would withdraw most of its endpoints."),
		heldEndpoints: d("tributary_source_held_withdrawal_endpoints", "Endpoints the update the deletion guard holds would withdraw."),
		guardTrips:    d("tributary_source_deletion_guard_trips_total", "Updates of the source the deletion guard started holding."),
		rejected:      d("tributary_source_rejected_objects_total", "Backend objects the source left out because they could not become endpoints (bad address or port); their valid siblings still apply."),
	}
}

func (c *sourceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.synced, c.stale, c.lastSuccess, c.errors, c.applies, c.endpoints, c.services, c.keys,
		c.expired, c.expiries, c.held, c.heldEndpoints, c.guardTrips, c.rejected} {
		ch <- d
	}
}

func (c *sourceCollector) Collect(ch chan<- prometheus.Metric) {
	stats := c.store.Snapshot().Providers()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, s := range c.status() {
		l := []string{s.Name, s.Kind}
		st := stats[s.Name]
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, b(!s.Stale), l...)
		ch <- prometheus.MustNewConstMetric(c.synced, prometheus.GaugeValue, b(s.Synced), l...)
		ch <- prometheus.MustNewConstMetric(c.stale, prometheus.GaugeValue, b(s.Stale), l...)
		if !s.LastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.lastSuccess, prometheus.GaugeValue, float64(s.LastSuccess.UnixNano())/1e9, l...)
		}
		ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(s.Errors), l...)
		ch <- prometheus.MustNewConstMetric(c.applies, prometheus.CounterValue, float64(s.Applies), l...)
		ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(s.Rejected), l...)
		ch <- prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(st.Endpoints), l...)
		ch <- prometheus.MustNewConstMetric(c.services, prometheus.GaugeValue, float64(st.Services), l...)
		ch <- prometheus.MustNewConstMetric(c.keys, prometheus.GaugeValue, float64(st.Keys), l...)
		ch <- prometheus.MustNewConstMetric(c.expired, prometheus.GaugeValue, b(s.Expired), l...)
		ch <- prometheus.MustNewConstMetric(c.expiries, prometheus.CounterValue, float64(s.Expiries), l...)
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, b(s.HeldWithdrawal), l...)
		ch <- prometheus.MustNewConstMetric(c.heldEndpoints, prometheus.GaugeValue, float64(s.HeldEndpoints), l...)
		ch <- prometheus.MustNewConstMetric(c.guardTrips, prometheus.CounterValue, float64(s.GuardTrips), l...)
	}
}
