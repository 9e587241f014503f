//go:build integration

package xds

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// The type URLs of xDS v3 (the names of the resource messages).
const (
	typeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	typeRoute    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	typeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeCLA      = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// adsStream is a raw StreamAggregatedResources stream, with go-control-plane's
// generated client types: the requests are written by hand, so each test
// says exactly what a client sends.
type adsStream struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoverygrpc.DiscoveryRequest, discoverygrpc.DiscoveryResponse]
	resps  chan *discoverygrpc.DiscoveryResponse
	errc   chan error
	node   *corev3.Node
	sent   bool // the node goes on the first request only
}

func testNode(id, zone string) *corev3.Node {
	return &corev3.Node{Id: id, Cluster: "xds-test", Locality: &corev3.Locality{Zone: zone}}
}

// openADS opens an ADS stream to addr; it ends with the test.
func openADS(t *testing.T, addr string, node *corev3.Node) *adsStream {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx, grpc.MaxCallRecvMsgSize(64<<20))
	if err != nil {
		cancel()
		cc.Close()
		t.Fatal(err)
	}
	s := &adsStream{t: t, stream: stream, node: node}
	s.resps, s.errc = pump(t, 1000, stream.Recv, func() { cancel(); cc.Close() })
	return s
}

// pump receives a stream's messages on a goroutine until it ends: into
// resps (buffered n), then its error into errc. When the test ends, stop
// (which must end the stream: cancel its context) runs and the goroutine
// is waited for.
func pump[R any](t *testing.T, n int, recv func() (R, error), stop func()) (resps chan R, errc chan error) {
	resps, errc = make(chan R, n), make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			r, err := recv()
			if err != nil {
				errc <- err
				return
			}
			resps <- r
		}
	}()
	t.Cleanup(func() { stop(); <-done })
	return resps, errc
}

// request sends a DiscoveryRequest; nack, when not empty, is its error.
func (s *adsStream) request(typeURL, version, nonce string, names []string, nack string) {
	s.t.Helper()
	req := &discoverygrpc.DiscoveryRequest{TypeUrl: typeURL, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
	if !s.sent {
		req.Node = s.node
		s.sent = true
	}
	if nack != "" {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack}
	}
	if err := s.stream.Send(req); err != nil {
		s.t.Fatalf("send %s: %v", typeURL, err)
	}
}

// ack acknowledges r for the same names.
func (s *adsStream) ack(r *discoverygrpc.DiscoveryResponse, names []string) {
	s.t.Helper()
	s.request(r.GetTypeUrl(), r.GetVersionInfo(), r.GetNonce(), names, "")
}

// next returns the next response, failing the test if none comes within
// wait or the stream ends.
func (s *adsStream) next(wait time.Duration) *discoverygrpc.DiscoveryResponse {
	s.t.Helper()
	return nextFrom(s.t, "ADS", s.resps, s.errc, wait)
}

// nextFrom returns the next of a pumped stream's messages, failing the test
// if none comes within wait or the stream ends (its error stays in errc).
func nextFrom[R any](t *testing.T, what string, resps chan R, errc chan error, wait time.Duration) R {
	t.Helper()
	var none R
	select {
	case r := <-resps:
		return r
	case err := <-errc:
		errc <- err
		t.Fatalf("%s stream ended: %v", what, err)
	case <-time.After(wait):
		t.Fatalf("no %s response within %v", what, wait)
	}
	return none
}

// nextOf returns the next response of typeURL, failing on another type.
func (s *adsStream) nextOf(typeURL string) *discoverygrpc.DiscoveryResponse {
	s.t.Helper()
	r := s.next(harness.WaitFor)
	if r.GetTypeUrl() != typeURL {
		s.t.Fatalf("got a response of %s, want %s", r.GetTypeUrl(), typeURL)
	}
	return r
}

// quiet asserts that no response arrives within d and the stream stays up.
func (s *adsStream) quiet(d time.Duration) {
	s.t.Helper()
	select {
	case r := <-s.resps:
		s.t.Fatalf("unexpected response: %s version %q, %d resources", r.GetTypeUrl(), r.GetVersionInfo(), len(r.GetResources()))
	case err := <-s.errc:
		s.errc <- err
		s.t.Fatalf("ADS stream ended: %v", err)
	case <-time.After(d):
	}
}

// clas decodes a response's ClusterLoadAssignments by cluster name.
func clas(t *testing.T, r *discoverygrpc.DiscoveryResponse) map[string]*endpointv3.ClusterLoadAssignment {
	t.Helper()
	out := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, a := range r.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatalf("resource of %s: %v", r.GetTypeUrl(), err)
		}
		if err := cla.Validate(); err != nil {
			t.Errorf("ClusterLoadAssignment %s does not validate: %v", cla.GetClusterName(), err)
		}
		out[cla.GetClusterName()] = &cla
	}
	return out
}

// clusters decodes a response's Clusters by name.
func clusters(t *testing.T, r *discoverygrpc.DiscoveryResponse) map[string]*clusterv3.Cluster {
	t.Helper()
	out := map[string]*clusterv3.Cluster{}
	for _, a := range r.GetResources() {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatalf("resource of %s: %v", r.GetTypeUrl(), err)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("Cluster %s does not validate: %v", c.GetName(), err)
		}
		out[c.GetName()] = &c
	}
	return out
}

// addrs lists a CLA's endpoint addresses, sorted, with the locality zone
// and priority: "zone/priority/ip:port".
func addrs(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s/%d/%s", l.GetLocality().GetZone(), l.GetPriority(),
				netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue()))))
		}
	}
	slices.Sort(out)
	return out
}

func sameAddrs(cla *endpointv3.ClusterLoadAssignment, want ...string) bool {
	slices.Sort(want)
	return slices.Equal(addrs(cla), want)
}

// manyServices is n services svc-i.many:80 with one endpoint each.
func manyServices(n int, base byte) map[string][]endpointSpec {
	svcs := make(map[string][]endpointSpec, n)
	for i := range n {
		svcs["svc-"+strconv.Itoa(i)+".many:80"] = []endpointSpec{{addr: fmt.Sprintf("10.%d.%d.%d:80", base, i/256, i%256), zone: "zone-a"}}
	}
	return svcs
}

// TestADSNackKeepsStreamAndLastGoodState: a NACK is not answered by the
// rejected version again (no loop), the stream stays up, the server keeps
// what the client last accepted, and the next change is delivered.
func TestADSNackKeepsStreamAndLastGoodState(t *testing.T) {
	t.Parallel()
	tr := startTributary(t, map[string][]endpointSpec{webAuthority: {{addr: "10.1.0.1:8080", zone: "zone-a"}}}, "")
	s := openADS(t, tr.XDS, testNode("nack", "zone-a"))
	names := []string{webAuthority}
	s.request(typeCLA, "", "", names, "")
	r1 := s.nextOf(typeCLA)
	if got := clas(t, r1)[webAuthority]; got == nil || !sameAddrs(got, "zone-a/0/10.1.0.1:8080") {
		t.Fatalf("first CLA: %v", addrs(got))
	}
	s.ack(r1, names)

	tr.write(t, map[string][]endpointSpec{webAuthority: {{addr: "10.1.0.2:8080", zone: "zone-a"}}})
	r2 := s.nextOf(typeCLA)
	if r2.GetVersionInfo() == r1.GetVersionInfo() || r2.GetNonce() == r1.GetNonce() {
		t.Errorf("a changed CLA came with the same version %q or nonce %q", r2.GetVersionInfo(), r2.GetNonce())
	}
	// Reject it: the version stays the last accepted one.
	s.request(typeCLA, r1.GetVersionInfo(), r2.GetNonce(), names, "rejected by the test")
	s.quiet(time.Second)

	tr.write(t, map[string][]endpointSpec{webAuthority: {{addr: "10.1.0.3:8080", zone: "zone-a"}}})
	r3 := s.nextOf(typeCLA)
	if got := clas(t, r3)[webAuthority]; got == nil || !sameAddrs(got, "zone-a/0/10.1.0.3:8080") {
		t.Fatalf("CLA after the NACK: %v", addrs(got))
	}
	if r3.GetVersionInfo() == r2.GetVersionInfo() || r3.GetVersionInfo() == r1.GetVersionInfo() {
		t.Errorf("the CLA after the NACK reuses version %q", r3.GetVersionInfo())
	}
	s.ack(r3, names)
	s.quiet(300 * time.Millisecond)
}

// TestADSUnknownResources: names that do not exist are not invented, do
// not end the stream, and are sent once they appear; the known ones are
// served meanwhile.
func TestADSUnknownResources(t *testing.T) {
	t.Parallel()
	tr := startTributary(t, map[string][]endpointSpec{webAuthority: {{addr: "10.1.0.1:8080", zone: "zone-a"}}}, "")
	const unknown = "later.demo:9000"

	// CDS is state of the world: the response lists what exists.
	cds := openADS(t, tr.XDS, testNode("unknown-cds", "zone-a"))
	cdsNames := []string{webAuthority, unknown}
	cds.request(typeCluster, "", "", cdsNames, "")
	r := cds.nextOf(typeCluster)
	got := clusters(t, r)
	if got[webAuthority] == nil || got[unknown] != nil || len(got) != 1 {
		t.Fatalf("CDS for %v: got clusters %v", cdsNames, slices.Sorted(maps.Keys(got)))
	}
	cds.ack(r, cdsNames)

	// EDS for the unknown name alone.
	eds := openADS(t, tr.XDS, testNode("unknown-eds", "zone-a"))
	eds.request(typeCLA, "", "", []string{unknown}, "")
	select {
	case r := <-eds.resps:
		if a := clas(t, r)[unknown]; a != nil && len(a.GetEndpoints()) > 0 {
			t.Fatalf("EDS for an unknown name answered endpoints: %v", addrs(a))
		}
		eds.ack(r, []string{unknown})
	case err := <-eds.errc:
		t.Fatalf("EDS stream for an unknown name ended: %v", err)
	case <-time.After(time.Second):
	}

	tr.write(t, map[string][]endpointSpec{
		webAuthority: {{addr: "10.1.0.1:8080", zone: "zone-a"}},
		unknown:      {{addr: "10.2.0.1:9000", zone: "zone-a"}},
	})
	r = cds.nextOf(typeCluster)
	got = clusters(t, r)
	if got[webAuthority] == nil || got[unknown] == nil {
		t.Fatalf("CDS after %s appeared: got clusters %v", unknown, slices.Sorted(maps.Keys(got)))
	}
	for {
		r := eds.nextOf(typeCLA)
		if a := clas(t, r)[unknown]; a != nil && sameAddrs(a, "zone-a/0/10.2.0.1:9000") {
			break
		} else if a != nil && len(a.GetEndpoints()) > 0 {
			t.Fatalf("EDS for %s after it appeared: %v", unknown, addrs(a))
		}
		eds.ack(r, []string{unknown})
	}
}

// TestADSVersionFromAnotherServerLife: versions roll back when Tributary
// restarts (a new process counts from its own start), so a client that
// reconnects may present a version the new server also uses, for other
// content. Its first request on the new stream must still be answered with
// the current state; so must a version this server never issued.
func TestADSVersionFromAnotherServerLife(t *testing.T) {
	t.Parallel()
	tr := startTributary(t, map[string][]endpointSpec{webAuthority: {{addr: "10.1.0.1:8080", zone: "zone-a"}}}, "")
	old := openADS(t, tr.XDS, testNode("rollback-old", "zone-a"))
	old.request(typeCLA, "", "", []string{webAuthority}, "")
	r1 := old.nextOf(typeCLA)
	old.ack(r1, []string{webAuthority})

	// Restart on changed content: the same history of writes, so the new
	// process may well reach the same version string.
	if code, _ := tr.Sigterm(); code != 0 {
		t.Fatalf("tributary exited with %d", code)
	}
	tr.write(t, map[string][]endpointSpec{webAuthority: {{addr: "10.1.0.2:8080", zone: "zone-a"}}})
	tr.restart(t)

	for _, v := range []string{r1.GetVersionInfo(), "999999"} {
		s := openADS(t, tr.XDS, testNode("rollback-"+v, "zone-a"))
		s.request(typeCLA, v, r1.GetNonce(), []string{webAuthority}, "")
		r := s.nextOf(typeCLA)
		if got := clas(t, r)[webAuthority]; got == nil || !sameAddrs(got, "zone-a/0/10.1.0.2:8080") {
			t.Errorf("a stream presenting version %q got %v; want the current state", v, addrs(got))
		}
		if v == r1.GetVersionInfo() {
			t.Logf("before the restart the CLA was version %q; after it, %q", v, r.GetVersionInfo())
		}
		s.ack(r, []string{webAuthority})
	}
}

// TestADSThousandClustersOnOneStream: one stream subscribes to the
// clusters of 1,000 services by name (as a gRPC client with 1,000 targets
// does), then to their endpoints, gets each exactly once, ACKs, and a
// change to one service reaches it; a wildcard CDS stream gets all 1,000.
func TestADSThousandClustersOnOneStream(t *testing.T) {
	t.Parallel()
	const n = 1000
	svcs := manyServices(n, 20)
	tr := startTributary(t, svcs, "")
	s := openADS(t, tr.XDS, testNode("thousand", "zone-a"))

	var clusterNames []string
	for name := range svcs {
		clusterNames = append(clusterNames, name)
	}
	s.request(typeCluster, "", "", clusterNames, "")
	r := s.nextOf(typeCluster)
	cs := clusters(t, r)
	if len(cs) != n {
		t.Fatalf("CDS for %d names: %d clusters", n, len(cs))
	}
	var names []string
	for name, c := range cs {
		if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
			t.Fatalf("cluster %s: type %v, eds config %v; want EDS over ADS", name, c.GetType(), c.GetEdsClusterConfig())
		}
		names = append(names, cmp.Or(c.GetEdsClusterConfig().GetServiceName(), name))
	}
	s.ack(r, clusterNames)

	s.request(typeCLA, "", "", names, "")
	seen := map[string]bool{}
	for len(seen) < n {
		r := s.nextOf(typeCLA)
		for name, a := range clas(t, r) {
			if seen[name] {
				t.Fatalf("CLA %s sent twice before any change", name)
			}
			seen[name] = true
			want := svcs[name]
			if len(want) != 1 || !sameAddrs(a, "zone-a/0/"+want[0].addr) {
				t.Fatalf("CLA %s: %v, want %v", name, addrs(a), want)
			}
		}
		s.ack(r, names)
	}

	// A wildcard CDS subscription (Envoy's) on another stream: all 1,000.
	wild := openADS(t, tr.XDS, testNode("thousand-wildcard", "zone-a"))
	wild.request(typeCluster, "", "", nil, "")
	wr := wild.nextOf(typeCluster)
	if got := len(clusters(t, wr)); got != n {
		t.Fatalf("CDS wildcard: %d clusters, want %d", got, n)
	}
	wild.ack(wr, nil)

	svcs["svc-7.many:80"] = []endpointSpec{{addr: "10.99.0.7:80", zone: "zone-a"}}
	tr.write(t, svcs)
	for {
		r := s.nextOf(typeCLA)
		got := clas(t, r)
		s.ack(r, names)
		if a := got["svc-7.many:80"]; a != nil {
			if !sameAddrs(a, "zone-a/0/10.99.0.7:80") {
				t.Fatalf("svc-7 after the change: %v", addrs(a))
			}
			break
		}
	}
}

// TestADSEndpointContent: what a CLA says of each endpoint comes from the
// services file as docs/xds.md maps it — weight, health status (critical
// endpoints present, UNHEALTHY, only while the panic threshold keeps every
// endpoint), identity and labels in filter_metadata "tributary", and a
// locality weight for gRPC.
func TestADSEndpointContent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "services"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "services", "demo.yaml")
	write := func(health2, health3 string) {
		harness.WriteAtomic(t, file, fmt.Sprintf(`services:
  - name: web.demo
    port: 8080
    endpoints:
      - address: 10.1.0.1:8080
        zone: zone-a
        weight: 300
        health: passing
        identity: spiffe://example.org/ns/demo/sa/web
        server_name: web.demo.example.org
        labels: {version: v2}
      - address: 10.1.0.2:8080
        zone: zone-a
        health: %s
      - address: 10.1.0.3:8080
        zone: zone-a
        health: %s
`, health2, health3))
	}
	write("unknown", "critical")
	p := harness.FreePorts(t, 3)
	harness.StartAt(t, dir, p[0], p[1], sourcesConfig(p[2], ""))
	waitListening(t, p[2])
	s := openADS(t, p[2], testNode("content", "zone-a"))
	names := []string{webAuthority}
	s.request(typeCLA, "", "", names, "")
	r := s.nextOf(typeCLA)
	cla := clas(t, r)[webAuthority]

	byAddr := func(cla *endpointv3.ClusterLoadAssignment) map[string]*endpointv3.LbEndpoint {
		out := map[string]*endpointv3.LbEndpoint{}
		for _, l := range cla.GetEndpoints() {
			if l.GetLoadBalancingWeight().GetValue() == 0 {
				t.Errorf("locality %q has no weight: gRPC ignores it", l.GetLocality().GetZone())
			}
			for _, e := range l.GetLbEndpoints() {
				out[e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()] = e
			}
		}
		return out
	}
	// One critical of three: 2 of 3 serving is above the 50% threshold, so
	// it is left out.
	eps := byAddr(cla)
	if len(eps) != 2 || eps["10.1.0.3"] != nil {
		t.Fatalf("with 10.1.0.3 critical: %v; want 10.1.0.1 and 10.1.0.2", addrs(cla))
	}
	e1, e2 := eps["10.1.0.1"], eps["10.1.0.2"]
	if e1.GetLoadBalancingWeight().GetValue() != 300 || e2.GetLoadBalancingWeight().GetValue() != 10000 {
		t.Errorf("weights %d and %d; want 300 and the default 10000", e1.GetLoadBalancingWeight().GetValue(), e2.GetLoadBalancingWeight().GetValue())
	}
	if e1.GetHealthStatus() != corev3.HealthStatus_HEALTHY || e2.GetHealthStatus() != corev3.HealthStatus_UNKNOWN {
		t.Errorf("health %v and %v; want HEALTHY (passing) and UNKNOWN", e1.GetHealthStatus(), e2.GetHealthStatus())
	}
	md := e1.GetMetadata().GetFilterMetadata()["tributary"].GetFields()
	if md["identity"].GetStringValue() != "spiffe://example.org/ns/demo/sa/web" || md["server_name"].GetStringValue() != "web.demo.example.org" ||
		md["labels"].GetStructValue().GetFields()["version"].GetStringValue() != "v2" {
		t.Errorf("10.1.0.1's metadata: %v", e1.GetMetadata())
	}
	if id := e2.GetMetadata().GetFilterMetadata()["tributary"].GetFields()["identity"]; id != nil {
		t.Errorf("10.1.0.2 has no identity, yet its metadata says %v", id)
	}
	s.ack(r, names)

	// Two critical of three: 1 of 3 serving is below the threshold, so all
	// are served, the critical ones marked UNHEALTHY.
	write("critical", "critical")
	for {
		r = s.nextOf(typeCLA)
		s.ack(r, names)
		eps = byAddr(clas(t, r)[webAuthority])
		if len(eps) == 3 {
			break
		}
	}
	for addr, want := range map[string]corev3.HealthStatus{"10.1.0.1": corev3.HealthStatus_HEALTHY, "10.1.0.2": corev3.HealthStatus_UNHEALTHY, "10.1.0.3": corev3.HealthStatus_UNHEALTHY} {
		if got := eps[addr].GetHealthStatus(); got != want {
			t.Errorf("in panic, %s is %v; want %v", addr, got, want)
		}
	}
}

// deltaStream is a raw DeltaAggregatedResources stream.
type deltaStream struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[discoverygrpc.DeltaDiscoveryRequest, discoverygrpc.DeltaDiscoveryResponse]
	resps  chan *discoverygrpc.DeltaDiscoveryResponse
	errc   chan error
}

func openDelta(t *testing.T, addr string) *deltaStream {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		cancel()
		cc.Close()
		t.Fatal(err)
	}
	s := &deltaStream{t: t, stream: stream}
	s.resps, s.errc = pump(t, 100, stream.Recv, func() { cancel(); cc.Close() })
	return s
}

func (s *deltaStream) send(req *discoverygrpc.DeltaDiscoveryRequest) {
	s.t.Helper()
	if err := s.stream.Send(req); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

func (s *deltaStream) next() *discoverygrpc.DeltaDiscoveryResponse {
	s.t.Helper()
	return nextFrom(s.t, "delta", s.resps, s.errc, harness.WaitFor)
}

// deltaCLAs decodes a delta response's CLAs by resource name.
func deltaCLAs(t *testing.T, r *discoverygrpc.DeltaDiscoveryResponse) map[string]*endpointv3.ClusterLoadAssignment {
	t.Helper()
	out := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, res := range r.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := res.GetResource().UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		if res.GetVersion() == "" || res.GetName() != cla.GetClusterName() {
			t.Errorf("delta resource %q (version %q) holds CLA %q", res.GetName(), res.GetVersion(), cla.GetClusterName())
		}
		out[res.GetName()] = &cla
	}
	return out
}

// TestADSDelta: incremental xDS as Envoy's DELTA_GRPC uses it — a
// subscription gets only the resources that exist, a resource that appears
// is sent, one that changes is sent alone, one that disappears is listed in
// removed_resources, an unsubscribed one is no longer sent, and a NACK
// neither loops nor ends the stream.
func TestADSDelta(t *testing.T) {
	t.Parallel()
	const later = "later.demo:9000"
	web := []endpointSpec{{addr: "10.1.0.1:8080", zone: "zone-a"}}
	tr := startTributary(t, map[string][]endpointSpec{webAuthority: web}, "")
	s := openDelta(t, tr.XDS)
	s.send(&discoverygrpc.DeltaDiscoveryRequest{Node: testNode("delta", "zone-a"), TypeUrl: typeCLA, ResourceNamesSubscribe: []string{webAuthority, later}})
	r := s.next()
	got := deltaCLAs(t, r)
	if got[webAuthority] == nil || got[later] != nil || !sameAddrs(got[webAuthority], "zone-a/0/10.1.0.1:8080") {
		t.Fatalf("first delta response: %v", slices.Sorted(maps.Keys(got)))
	}
	s.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeCLA, ResponseNonce: r.GetNonce()})

	// later appears: sent alone.
	tr.write(t, map[string][]endpointSpec{webAuthority: web, later: {{addr: "10.2.0.1:9000", zone: "zone-a"}}})
	r = s.next()
	got = deltaCLAs(t, r)
	if len(got) != 1 || got[later] == nil || !sameAddrs(got[later], "zone-a/0/10.2.0.1:9000") {
		t.Fatalf("after %s appeared: %v", later, slices.Sorted(maps.Keys(got)))
	}
	// NACK it: nothing is resent, the stream stays up.
	s.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeCLA, ResponseNonce: r.GetNonce(), ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "rejected by the test"}})
	select {
	case r := <-s.resps:
		t.Fatalf("a NACK was answered: %v removed %v", slices.Sorted(maps.Keys(deltaCLAs(t, r))), r.GetRemovedResources())
	case err := <-s.errc:
		t.Fatalf("the stream ended after a NACK: %v", err)
	case <-time.After(time.Second):
	}

	// web disappears: removed.
	tr.write(t, map[string][]endpointSpec{later: {{addr: "10.2.0.1:9000", zone: "zone-a"}}})
	r = s.next()
	if !slices.Contains(r.GetRemovedResources(), webAuthority) || len(r.GetResources()) != 0 {
		t.Fatalf("after %s left the file: resources %v, removed %v", webAuthority, slices.Sorted(maps.Keys(deltaCLAs(t, r))), r.GetRemovedResources())
	}
	s.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeCLA, ResponseNonce: r.GetNonce()})

	// Unsubscribe later; its next change is not sent, web's return is.
	s.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeCLA, ResourceNamesUnsubscribe: []string{later}})
	tr.write(t, map[string][]endpointSpec{webAuthority: web, later: {{addr: "10.2.0.2:9000", zone: "zone-a"}}})
	for {
		r = s.next()
		got = deltaCLAs(t, r)
		if got[later] != nil {
			t.Fatalf("%s changed after it was unsubscribed, and was sent", later)
		}
		s.send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typeCLA, ResponseNonce: r.GetNonce()})
		if got[webAuthority] != nil {
			break
		}
	}
}

// TestADSResourceChain: the names contract a gRPC client follows from
// xds:///web.demo:8080 — LDS web.demo:8080 is an API listener whose
// HttpConnectionManager takes RDS web.demo:8080 over ADS, with the router
// filter; that route configuration sends every request to cluster
// web.demo:8080; the cluster is EDS over ADS with service_name
// web.demo:8080.
func TestADSResourceChain(t *testing.T) {
	t.Parallel()
	tr := startTributary(t, map[string][]endpointSpec{webAuthority: {{addr: "10.1.0.1:8080", zone: "zone-a"}}}, "")
	s := openADS(t, tr.XDS, testNode("chain", "zone-a"))
	names := []string{webAuthority}

	s.request(typeListener, "", "", names, "")
	r := s.nextOf(typeListener)
	if len(r.GetResources()) != 1 {
		t.Fatalf("LDS %s: %d resources", webAuthority, len(r.GetResources()))
	}
	var l listenerv3.Listener
	if err := r.GetResources()[0].UnmarshalTo(&l); err != nil {
		t.Fatal(err)
	}
	var hcm hcmv3.HttpConnectionManager
	if l.GetName() != webAuthority || l.GetApiListener().GetApiListener().UnmarshalTo(&hcm) != nil {
		t.Fatalf("listener %q is not an API listener with an HttpConnectionManager: %v", l.GetName(), &l)
	}
	if hcm.GetRds().GetRouteConfigName() != webAuthority || hcm.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("the listener's HCM takes RDS %q from %v; want %s over ADS", hcm.GetRds().GetRouteConfigName(), hcm.GetRds().GetConfigSource(), webAuthority)
	}
	if n := len(hcm.GetHttpFilters()); n == 0 || hcm.GetHttpFilters()[n-1].GetName() != "envoy.filters.http.router" {
		t.Errorf("the HCM's last filter should be the router: %v", hcm.GetHttpFilters())
	}
	s.ack(r, names)

	s.request(typeRoute, "", "", names, "")
	r = s.nextOf(typeRoute)
	if len(r.GetResources()) != 1 {
		t.Fatalf("RDS %s: %d resources", webAuthority, len(r.GetResources()))
	}
	var rc routev3.RouteConfiguration
	if err := r.GetResources()[0].UnmarshalTo(&rc); err != nil {
		t.Fatal(err)
	}
	if err := rc.Validate(); err != nil {
		t.Errorf("route configuration does not validate: %v", err)
	}
	var clustersRouted []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			clustersRouted = append(clustersRouted, rt.GetRoute().GetCluster())
		}
	}
	if rc.GetName() != webAuthority || len(clustersRouted) == 0 || slices.ContainsFunc(clustersRouted, func(c string) bool { return c != webAuthority }) {
		t.Errorf("route configuration %q routes to %v; want only %s", rc.GetName(), clustersRouted, webAuthority)
	}
	s.ack(r, names)

	s.request(typeCluster, "", "", names, "")
	r = s.nextOf(typeCluster)
	c := clusters(t, r)[webAuthority]
	if c == nil || c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.GetEdsClusterConfig().GetServiceName() != webAuthority {
		t.Fatalf("cluster %s: %v; want EDS over ADS with service_name %s", webAuthority, c, webAuthority)
	}
	s.ack(r, names)
}
