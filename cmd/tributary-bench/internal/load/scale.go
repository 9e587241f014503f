package load

import (
	"strings"
	"time"
)

// The scale workloads of the performance issue (#17) run the steady steps
// (initial sync, memory per idle stream, new streams, churn, final-state
// check) at sizes the steady defaults do not reach:
//
//   - manystreams: W=100,000 streams on C=1,000 connections over the
//     steady estate (1,000 services × 10), 200 changes/s;
//   - million: 1,000,000 endpoints (100,000 services × 10) with W=10,000
//     streams on C=100 connections and 5,000 changes/s; its ready_s is the
//     time from the server's start to /readyz (every endpoint stored).
//
// Both, and steady, measure the machine's wake-cost floor in the same run
// once the server has stopped (Options.Floor; see floorFigures).

// scaleDefaults applies a scale workload's sizes to o (quick: a few
// seconds, still larger than steady's quick in the dimension it tests).
func scaleDefaults(o *Options, quick bool) {
	switch o.Workload {
	case "manystreams":
		o.Streams, o.Conns = 100000, 1000
		if quick {
			o.Streams, o.Conns = 800, 16
		}
	case "million":
		o.Services, o.Endpoints, o.Streams, o.Conns = 100000, 10, 10000, 100
		o.Rate = 5000
		if quick {
			o.Services, o.Endpoints, o.Streams, o.Conns, o.Rate = 5000, 4, 200, 4, 500
		}
	}
}

// readyBound is how long a started server may take to become ready with n
// endpoints: 30 s, plus 10 s per 100,000 endpoints (a loaded two-core
// machine stores 1,000,000 in well under that).
func readyBound(endpoints int) time.Duration {
	return 30*time.Second + time.Duration(endpoints/100000)*10*time.Second
}

// floorFigures records the wake-cost floor measured in the same run (f is
// a wakecost result) under floor_ keys, and the server's CPU against it:
// per change against the isolated-change floor (cpu_per_change_vs_floor)
// and, when every service has streams, per delivery against the floor
// divided by the deliveries one change makes (streams per service):
// cpu_per_delivery_vs_floor, which the issue wants at most 2.
func floorFigures(res, f *Result, streams, services int) {
	for _, k := range []string{"write_to_sleeping_reader_us", "write_to_busy_reader_us", "idle_wake_us", "isolated_change_floor_us",
		"isolated_change_floor_us_min", "isolated_change_floor_us_max", "floor_rounds"} {
		if v, ok := f.Get(k); ok {
			res.Set("floor_"+strings.TrimPrefix(k, "floor_"), v)
		}
	}
	floor, ok := f.Get("isolated_change_floor_us")
	fv, isF := floor.(float64)
	if !ok || !isF || streams <= 0 || services <= 0 {
		return
	}
	if c, ok := res.Get("server_cpu_us_per_change"); ok {
		if cv, isF := c.(float64); isF && fv > 0 {
			res.Set("cpu_per_change_vs_floor", cv/fv)
		}
	}
	if streams < services {
		return // most changes reach no stream: per delivery means little
	}
	fanout := float64(streams) / float64(services)
	perDelivery := fv / fanout
	res.Set("floor_deliveries_per_change", fanout)
	res.Set("floor_us_per_delivery", perDelivery)
	if cpu, ok := res.Get("server_cpu_us_per_delivery"); ok {
		if c, isF := cpu.(float64); isF && perDelivery > 0 {
			res.Set("cpu_per_delivery_vs_floor", c/perDelivery)
		}
	}
}
