package destination

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsExportedFromStart: every metric the docs, the alerts and the
// dashboard name is in /metrics before anything happened, so
// tributary_streams_refused_total is 0 rather than absent until the first
// refusal (issue 18).
func TestMetricsExportedFromStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		got[mf.GetName()] = len(mf.GetMetric())
	}
	for _, name := range []string{
		"tributary_streams", "tributary_updates_sent_total", "tributary_stream_first_message_seconds",
		"tributary_update_propagation_seconds", "tributary_streams_refused_total", "tributary_streams_slow_closed_total",
	} {
		if got[name] == 0 {
			t.Errorf("%s is not exported before its first event", name)
		}
	}
	if got["tributary_streams_refused_total"] != 2 {
		t.Errorf("tributary_streams_refused_total has %d series, want one per method (Get, GetProfile)", got["tributary_streams_refused_total"])
	}
}
