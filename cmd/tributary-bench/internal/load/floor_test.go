package load

import (
	"context"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/sources/bench"
)

// TestXDSFloor runs the xDS floor small: every stream synced, every change
// delivered and ACKed, and every figure reported and positive (this checks
// that it measures, never what it measures).
func TestXDSFloor(t *testing.T) {
	res := runSmallFloor(t, floorXDS)
	if d, _ := res.Get("xds_floor_deliveries"); d == uint64(0) {
		t.Errorf("no deliveries: %v", d)
	}
	res.Set("server_cpu_us_per_delivery", 100.0)
	res.Set(gcpPrefix+"mem_per_stream_kib", 20.0)
	xdsFloorFigures(res)
	for _, k := range []string{"server_cpu_us_per_delivery_vs_xds_floor", gcpPrefix + "mem_per_stream_kib_vs_xds_floor"} {
		if v, ok := res.Get(k); !ok || v.(float64) <= 0 {
			t.Errorf("%s = %v", k, v)
		}
	}
}

// TestFloorCLA: the floor's response carries the bench labels the fleet
// reads, so it is the size of the servers' own.
func TestFloorCLA(t *testing.T) {
	v := decodeCLA(floorCLA(floorName(3), 3, 4))
	if len(v.eps) != 4 || len(v.ts) != 4 || v.unlabelled || v.bad != "" || v.name != floorName(3) {
		t.Errorf("floor CLA decodes as %+v", v)
	}
}

// TestGetFloor runs the Get floor small: every stream synced and every
// change delivered, and its figures reported and positive.
func TestGetFloor(t *testing.T) { runSmallFloor(t, floorGet) }

// runSmallFloor measures api's floor with 40 streams on 4 connections over
// 10 services of 3 endpoints, 200 changes/s for 300 ms, and checks that its
// CPU and memory figures are there and positive.
func runSmallFloor(t *testing.T, api string) *Result {
	t.Helper()
	res := newResult("steady")
	if err := measureServerFloor(context.Background(), res, api, 40, 4, 10, 3, 200, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{api + "_floor_cpu_us_per_delivery", api + "_floor_mem_per_stream_kib"} {
		v, ok := res.Get(k)
		if f, isF := v.(float64); !ok || !isF || f <= 0 {
			t.Errorf("%s = %v", k, v)
		}
	}
	return res
}

// TestFloorUpdate: the Get floor's messages carry the bench labels the
// fleet reads on every endpoint.
func TestFloorUpdate(t *testing.T) {
	u := floorUpdate(3, 0, 4, 4)
	addrs := u.GetAdd().GetAddrs()
	if len(addrs) != 4 {
		t.Fatalf("%d endpoints, want 4", len(addrs))
	}
	for _, a := range addrs {
		if a.GetMetricLabels()[bench.LabelSeq] == "" || a.GetMetricLabels()[bench.LabelTS] == "" || a.GetAddr().GetPort() != 8080 {
			t.Errorf("endpoint %v", a)
		}
	}
}
