package load

import (
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tributary-mesh/tributary/sources/bench"
)

func xdsTestFleet() (*Fleet, *watcher) {
	f, w := testFleet()
	f.xds = &xdsState{views: map[string]*claView{}}
	return f, w
}

// xep is an EDS endpoint 10.0.0.n:10000; labelled puts the bench labels
// under filter_metadata "tributary" → "labels", as the comparison server
// does (decodeCLA looks at any namespace and depth).
func xep(n int, weight uint32, seq uint64, ts int64, labelled bool) *endpointv3.LbEndpoint {
	e := &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.0.0." + strconv.Itoa(n), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 10000},
			}}},
		}},
		HealthStatus:        corev3.HealthStatus_HEALTHY,
		LoadBalancingWeight: wrapperspb.UInt32(weight),
	}
	if labelled {
		md, _ := structpb.NewStruct(map[string]any{"labels": map[string]any{
			bench.LabelSeq: strconv.FormatUint(seq, 10), bench.LabelTS: strconv.FormatInt(ts, 10),
		}})
		e.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"tributary": md}}
	}
	return e
}

func claResponse(t *testing.T, version, name string, eps ...*endpointv3.LbEndpoint) *discoverygrpc.DiscoveryResponse {
	t.Helper()
	a, err := anypb.New(&endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}})
	if err != nil {
		t.Fatal(err)
	}
	return &discoverygrpc.DiscoveryResponse{TypeUrl: claType, VersionInfo: version, Nonce: "n" + version, Resources: []*anypb.Any{a}}
}

func TestApplyXDSReplaysAndRecordsLatency(t *testing.T) {
	f, w := xdsTestFleet()
	h := f.rec.begin(1000)
	first, err := f.applyXDS(w, claResponse(t, "1", "svc-0.bench:8080", xep(1, 10000, 0, 500, true), xep(2, 10000, 4, 1500, true)), 2000)
	if err != nil || !first {
		t.Fatalf("first response: first=%v err=%v", first, err)
	}
	if h.Count() != 0 {
		t.Error("a first response is not a propagated change, yet a latency was recorded")
	}
	// SotW: the whole CLA again, with 1 replaced by 3 (seq 7) and 2's
	// weight changed (seq 8); then the same state again (no delivery).
	f.applyXDS(w, claResponse(t, "2", "svc-0.bench:8080", xep(3, 10000, 7, 3000, true), xep(2, 77, 8, 4000, true)), 4100)
	f.applyXDS(w, claResponse(t, "3", "svc-0.bench:8080", xep(3, 10000, 7, 3000, true), xep(2, 77, 8, 4000, true)), 4200)
	if h.Count() != 2 || h.Min() != 100 || h.Max() != 1100 {
		t.Errorf("latencies: count %d min %d max %d, want 1100ns and 100ns", h.Count(), h.Min(), h.Max())
	}
	if f.contract.Load() != 0 {
		t.Errorf("contract violations %d: %v", f.contract.Load(), f.Examples())
	}
	if lost, ex, err := f.Verify(truthOf(te(2, 77, 8), te(3, 10000, 7))); err != nil || lost != 0 {
		t.Errorf("Verify: %d lost %v %v", lost, ex, err)
	}
	if lost, _, _ := f.Verify(truthOf(te(2, 77, 9), te(3, 10000, 7))); lost != 1 {
		t.Error("a stale bench_seq was not found by Verify")
	}
}

func TestApplyXDSWithoutLabelsChecksAddressesAndWeights(t *testing.T) {
	f, w := xdsTestFleet()
	f.applyXDS(w, claResponse(t, "1", "svc-0.bench:8080", xep(1, 10000, 0, 0, false)), 1)
	f.applyXDS(w, claResponse(t, "2", "svc-0.bench:8080", xep(2, 5, 0, 0, false)), 2)
	if !f.xds.unlabelled.Load() || f.deliveries.Load() != 0 {
		t.Errorf("unlabelled %v, deliveries %d", f.xds.unlabelled.Load(), f.deliveries.Load())
	}
	if ex := f.Examples(); len(ex) != 1 || !strings.Contains(ex[0], "no bench_seq") {
		t.Errorf("examples %q; want one saying the labels are missing", ex)
	}
	if lost, ex, _ := f.Verify(truthOf(te(2, 5, 99))); lost != 0 {
		t.Errorf("by address and weight the stream holds the truth, yet %d lost: %v", lost, ex)
	}
	if lost, _, _ := f.Verify(truthOf(te(2, 6, 99))); lost != 1 {
		t.Error("a stale weight was not found")
	}
}

func TestApplyXDSContractViolations(t *testing.T) {
	for name, r := range map[string]*discoverygrpc.DiscoveryResponse{
		"other cluster": claResponse(t, "1", "other:80", xep(1, 1, 0, 0, true)),
		"no version":    claResponse(t, "", "svc-0.bench:8080", xep(1, 1, 0, 0, true)),
		"unhealthy": func() *discoverygrpc.DiscoveryResponse {
			e := xep(1, 1, 0, 0, true)
			e.HealthStatus = corev3.HealthStatus_UNHEALTHY
			return claResponse(t, "1", "svc-0.bench:8080", e)
		}(),
		"wrong type": {TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", VersionInfo: "1", Nonce: "1"},
	} {
		t.Run(name, func(t *testing.T) {
			f, w := xdsTestFleet()
			if _, err := f.applyXDS(w, r, 1); err != nil {
				t.Fatal(err)
			}
			if f.contract.Load() == 0 {
				t.Errorf("no violation counted; examples %q", f.Examples())
			}
		})
	}
}

func TestFindLabelAtAnyNamespaceAndDepth(t *testing.T) {
	flat, _ := structpb.NewStruct(map[string]any{"bench_seq": "5"})
	nested, _ := structpb.NewStruct(map[string]any{"identity": "x", "labels": map[string]any{"bench_seq": "6"}})
	for want, md := range map[string]*corev3.Metadata{
		"5": {FilterMetadata: map[string]*structpb.Struct{"envoy.lb": flat}},
		"6": {FilterMetadata: map[string]*structpb.Struct{"tributary": nested}},
		"":  nil,
	} {
		if got := findLabel(md, bench.LabelSeq); got != want {
			t.Errorf("findLabel = %q, want %q", got, want)
		}
	}
}

func TestMergeMediansAndWorst(t *testing.T) {
	runs := make([]*Result, 3)
	for i, v := range []float64{3, 1, 2} {
		runs[i] = newResult("steady")
		runs[i].Set("p99_ms", v)
		runs[i].Set("lost_final_states", int(v)-1)
		runs[i].Set("server_version", "dev")
	}
	res := newResult("steady")
	merge(res, runs, gcpPrefix)
	if v, _ := res.Get("gcp_p99_ms"); v != 2.0 {
		t.Errorf("median p99 = %v, want 2", v)
	}
	if v, _ := res.Get("gcp_lost_final_states"); v != 2.0 {
		t.Errorf("lost final states = %v, want the worst round's, 2", v)
	}
	two := newResult("steady")
	merge(two, runs[:2], "")
	if v, _ := two.Get("p99_ms"); v != 2.0 {
		t.Errorf("median of 3 and 1 = %v, want 2", v)
	}
	if v, _ := res.Get("gcp_server_version"); v != "dev" {
		t.Errorf("server_version = %v", v)
	}
}

func TestCheckXDSOptions(t *testing.T) {
	o, _ := DefaultOptions("steady", true)
	o.API = APIXDS
	if err := o.check(); err != nil {
		t.Errorf("steady --api xds: %v", err)
	}
	o.API = "grpc"
	if err := o.check(); err == nil {
		t.Error("--api grpc accepted")
	}
	o, _ = DefaultOptions("ramp", true)
	o.API = APIXDS
	if err := o.check(); err == nil {
		t.Error("ramp --api xds accepted")
	}
}

func deltaResponse(t *testing.T, nonce, name string, removed bool, eps ...*endpointv3.LbEndpoint) *discoverygrpc.DeltaDiscoveryResponse {
	t.Helper()
	r := &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: claType, Nonce: nonce}
	if removed {
		r.RemovedResources = []string{name}
		return r
	}
	a, err := anypb.New(&endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Resources = []*discoverygrpc.Resource{{Name: name, Version: nonce, Resource: a}}
	return r
}

func TestApplyDeltaReplaysRemovalsAndLatency(t *testing.T) {
	f, w := xdsTestFleet()
	h := f.rec.begin(1000)
	if first, err := f.applyDelta(w, deltaResponse(t, "1", "svc-0.bench:8080", false, xep(1, 10000, 0, 500, true)), 2000); !first || err != nil {
		t.Fatalf("first=%v err=%v", first, err)
	}
	f.applyDelta(w, deltaResponse(t, "2", "svc-0.bench:8080", false, xep(2, 10000, 3, 2500, true)), 3000)
	if h.Count() != 1 || h.Max() != 500 {
		t.Errorf("latencies: count %d max %d", h.Count(), h.Max())
	}
	if lost, ex, _ := f.Verify(truthOf(te(2, 10000, 3))); lost != 0 {
		t.Errorf("lost %d: %v", lost, ex)
	}
	f.applyDelta(w, deltaResponse(t, "3", "svc-0.bench:8080", true), 4000)
	if lost, ex, _ := f.Verify(truthOf(te(2, 10000, 3))); lost != 1 || !strings.Contains(ex[0], "does not exist") {
		t.Errorf("after a removal: lost %d %v", lost, ex)
	}
	if f.contract.Load() != 0 {
		t.Errorf("violations: %v", f.Examples())
	}
	f.applyDelta(w, deltaResponse(t, "", "other:80", false, xep(1, 1, 0, 0, true)), 5000)
	if f.contract.Load() != 2 {
		t.Errorf("a resource not subscribed to, without a nonce: %d violations, want 2", f.contract.Load())
	}
}
