package xds

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/goleak"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/configdoc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 5 * time.Second

type harness struct {
	t      *testing.T
	addr   string // the ADS server's
	store  *cache.Store
	srv    *Server
	client discoverypb.AggregatedDiscoveryServiceClient
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	if opts.Store == nil {
		opts.Store = cache.New()
	}
	srv := New(opts)
	g := grpc.NewServer(ServerOptions()...)
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(srv.Listener(ln)) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Drain()
		g.Stop()
		srv.Wait()
	})
	return &harness{t: t, addr: ln.Addr().String(), store: opts.Store, srv: srv, client: discoverypb.NewAggregatedDiscoveryServiceClient(conn)}
}

func (h *harness) apply(provider string, groups ...discovery.Group) {
	h.t.Helper()
	if _, err := h.store.Apply(provider, groups); err != nil {
		h.t.Fatal(err)
	}
}

func group(key, host string, port uint16, eps ...discovery.Endpoint) discovery.Group {
	return discovery.Group{Key: key, Services: []discovery.Service{{Authority: discovery.Authority{Host: host, Port: port}, Endpoints: eps}}}
}

func ep(addr string) discovery.Endpoint {
	return discovery.Endpoint{Addr: netip.MustParseAddrPort(addr)}
}

// sotw is a SotW client stream whose responses are read on a goroutine.
type sotw struct {
	t     *testing.T
	st    grpc.BidiStreamingClient[discoverypb.DiscoveryRequest, discoverypb.DiscoveryResponse]
	resps chan *discoverypb.DiscoveryResponse
	errc  chan error
}

func (h *harness) sotw(node *corepb.Node) *sotw {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := h.client.StreamAggregatedResources(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	s := &sotw{t: h.t, st: st, resps: make(chan *discoverypb.DiscoveryResponse, 1000), errc: make(chan error, 1)}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				s.errc <- err
				return
			}
			s.resps <- r
		}
	}()
	h.t.Cleanup(func() {
		cancel()
		<-s.errc
	})
	_ = node
	return s
}

func (s *sotw) request(r *discoverypb.DiscoveryRequest) {
	s.t.Helper()
	if err := s.st.Send(r); err != nil {
		s.t.Fatal(err)
	}
}

func (s *sotw) next() *discoverypb.DiscoveryResponse {
	s.t.Helper()
	select {
	case r := <-s.resps:
		return r
	case err := <-s.errc:
		s.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitFor):
		s.t.Fatal("no response")
	}
	return nil
}

// quiet checks that no response arrives for a while (what must not be
// sent: a test of absence, bounded by the wait).
func (s *sotw) quiet(d time.Duration) {
	s.t.Helper()
	select {
	case r := <-s.resps:
		s.t.Fatalf("unexpected response: %v", r)
	case <-time.After(d):
	}
}

func (s *sotw) ack(r *discoverypb.DiscoveryResponse, names ...string) {
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: names})
}

func cla(t *testing.T, r *discoverypb.DiscoveryResponse) map[string]*endpointpb.ClusterLoadAssignment {
	t.Helper()
	out := map[string]*endpointpb.ClusterLoadAssignment{}
	for _, a := range r.Resources {
		c := &endpointpb.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(c); err != nil {
			t.Fatal(err)
		}
		out[c.ClusterName] = c
	}
	return out
}

func addrs(c *endpointpb.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range c.Endpoints {
		for _, e := range l.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", sa.Address, sa.GetPortValue()))
		}
	}
	slices.Sort(out)
	return out
}

// TestSotWAllTypes: the resource contract for a gRPC client dialling
// xds:///web.demo:8080 — listener, route, cluster, endpoints, all named by
// the authority — and an endpoint change pushed to the subscriber.
func TestSotWAllTypes(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.1:8080"), ep("10.0.0.2:8080")))
	s := h.sotw(nil)
	const name = "web.demo:8080"
	node := &corepb.Node{Id: "client-1"}

	s.request(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: TypeListener, ResourceNames: []string{name}})
	r := s.next()
	if r.TypeUrl != TypeListener || len(r.Resources) != 1 {
		t.Fatalf("LDS: %v", r)
	}
	l := &listenerpb.Listener{}
	if err := r.Resources[0].UnmarshalTo(l); err != nil || l.Name != name {
		t.Fatalf("listener %v %v", l, err)
	}
	hcm := &hcmpb.HttpConnectionManager{}
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if hcm.GetRds().GetRouteConfigName() != name || hcm.GetRds().GetConfigSource().GetAds() == nil {
		t.Fatalf("hcm rds: %v", hcm.GetRds())
	}
	if len(hcm.HttpFilters) != 1 || hcm.HttpFilters[0].GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" {
		t.Fatalf("filters: %v", hcm.HttpFilters)
	}
	s.ack(r, name)

	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeRoute, ResourceNames: []string{name}})
	r = s.next()
	rc := &routepb.RouteConfiguration{}
	if r.TypeUrl != TypeRoute || len(r.Resources) != 1 || r.Resources[0].UnmarshalTo(rc) != nil || rc.Name != name {
		t.Fatalf("RDS: %v", r)
	}
	if got := rc.VirtualHosts[0].Routes[0].GetRoute().GetCluster(); got != name {
		t.Fatalf("route to %q", got)
	}
	s.ack(r, name)

	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeCluster, ResourceNames: []string{name}})
	r = s.next()
	c := &clusterpb.Cluster{}
	if r.TypeUrl != TypeCluster || len(r.Resources) != 1 || r.Resources[0].UnmarshalTo(c) != nil {
		t.Fatalf("CDS: %v", r)
	}
	if c.Name != name || c.GetType() != clusterpb.Cluster_EDS || c.GetEdsClusterConfig().GetServiceName() != name ||
		c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.LbPolicy != clusterpb.Cluster_ROUND_ROBIN {
		t.Fatalf("cluster %v", c)
	}
	s.ack(r, name)

	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNames: []string{name}})
	r = s.next()
	if got := addrs(cla(t, r)[name]); !slices.Equal(got, []string{"10.0.0.1:8080", "10.0.0.2:8080"}) {
		t.Fatalf("EDS: %v", got)
	}
	s.ack(r, name)

	// A change reaches the subscriber as an EDS push, and nothing else.
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.1:8080"), ep("10.0.0.3:8080")))
	r = s.next()
	if r.TypeUrl != TypeEndpoint {
		t.Fatalf("push of %s", r.TypeUrl)
	}
	if got := addrs(cla(t, r)[name]); !slices.Equal(got, []string{"10.0.0.1:8080", "10.0.0.3:8080"}) {
		t.Fatalf("EDS push: %v", got)
	}
	s.ack(r, name)

	// The service is removed: the cluster and listener leave (full-state
	// types), the endpoints are emptied.
	h.apply("file", discovery.Group{Key: "web"})
	got := map[string]*discoverypb.DiscoveryResponse{}
	for len(got) < 2 {
		r = s.next()
		got[r.TypeUrl] = r
	}
	if r := got[TypeListener]; r == nil || len(r.Resources) != 0 {
		t.Fatalf("LDS after removal: %v", r)
	}
	if r := got[TypeCluster]; r == nil || len(r.Resources) != 0 {
		t.Fatalf("CDS after removal: %v", r)
	}
	r = s.next()
	if r.TypeUrl != TypeEndpoint || len(addrs(cla(t, r)[name])) != 0 {
		t.Fatalf("EDS after removal: %v", r)
	}
}

// TestSotWUnknownAndNACK: a name that does not exist is left out (SotW);
// a NACK is counted and keeps the stream; a stale nonce is ignored.
func TestSotWUnknownAndNACK(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.1:8080")))
	s := h.sotw(nil)
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeCluster, ResourceNames: []string{"web.demo:8080", "nope.demo:80", "Bad Name"}})
	r := s.next()
	for len(r.Resources) == 0 { // the first answer may come before the views are built
		r = s.next()
	}
	if len(r.Resources) != 1 {
		t.Fatalf("CDS: %d resources, want web.demo:8080 only", len(r.Resources))
	}
	// NACK: the client keeps its last state; nothing is resent.
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeCluster, ResponseNonce: r.Nonce, VersionInfo: "",
		ResourceNames: []string{"web.demo:8080", "nope.demo:80", "Bad Name"}, ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "bad"}})
	// A stale nonce with a new name: ignored.
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeCluster, ResponseNonce: "999999", ResourceNames: []string{"other.demo:80"}})
	s.quiet(200 * time.Millisecond)
	// The service appears: the full state, with both names.
	h.apply("file", group("nope", "nope.demo", 80, ep("10.0.0.9:80")))
	r = s.next()
	if len(r.Resources) != 2 {
		t.Fatalf("CDS after nope.demo appeared: %d resources", len(r.Resources))
	}
}

// TestUnknownTypeURL: a request of a type not served ends the stream with
// InvalidArgument.
func TestUnknownTypeURL(t *testing.T) {
	h := newHarness(t, Options{})
	s := h.sotw(nil)
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"})
	select {
	case err := <-s.errc:
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("err %v, want InvalidArgument", err)
		}
		s.errc <- err
	case r := <-s.resps:
		t.Fatalf("response %v", r)
	case <-time.After(waitFor):
		t.Fatal("stream not ended")
	}
}

// TestSotWWire: the response written around pre-marshalled resources is
// byte for byte what proto.Marshal makes of the same DiscoveryResponse.
func TestSotWWire(t *testing.T) {
	v := &view{name: "web.demo:8080", exists: true, endpoints: []*discovery.Endpoint{{Addr: mustAddr("10.0.0.1:80"), Zone: "z"}}}
	s := New(Options{})
	for _, tc := range []struct {
		version, nonce string
		kinds          []kind
	}{
		{"1", "1", []kind{kindEndpoint}},
		{"17", "42", []kind{kindListener, kindRoute, kindCluster, kindEndpoint}},
		{"3", "9", nil},
		{"", "", []kind{kindCluster, kindEndpoint}},
	} {
		var wires [][]byte
		msg := &discoverypb.DiscoveryResponse{VersionInfo: tc.version, TypeUrl: TypeCluster, Nonce: tc.nonce}
		for _, k := range tc.kinds {
			a, w := v.resource(k, s)
			wires = append(wires, w)
			msg.Resources = append(msg.Resources, a)
		}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		got := sotwWire(tc.version, wires, TypeCluster, tc.nonce)
		if !bytes.Equal(got.Materialize(), want) {
			t.Errorf("%v: wire form differs from proto.Marshal", tc.kinds)
		}
		// The resources are sent as they are, not copied.
		for _, w := range wires {
			if !slices.ContainsFunc(got, func(b mem.Buffer) bool { return len(b.ReadOnlyData()) > 0 && &b.ReadOnlyData()[0] == &w[0] }) {
				t.Errorf("%v: a resource was copied", tc.kinds)
			}
		}
	}
}

// TestConfigDocKeys: docs/configuration.md's xds table and Config list
// the same keys.
func TestConfigDocKeys(t *testing.T) {
	doc, err := configdoc.Tables(configdoc.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := configdoc.Compare("xds", doc["xds"], configdoc.StructKeys(reflect.TypeFor[Config]())); err != nil {
		t.Error(err)
	}
}
