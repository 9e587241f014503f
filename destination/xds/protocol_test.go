package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// delta is a delta client stream whose responses are read on a goroutine.
type delta struct {
	t     *testing.T
	st    grpc.BidiStreamingClient[discoverypb.DeltaDiscoveryRequest, discoverypb.DeltaDiscoveryResponse]
	resps chan *discoverypb.DeltaDiscoveryResponse
	errc  chan error
}

func (h *harness) delta() *delta {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := h.client.DeltaAggregatedResources(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	d := &delta{t: h.t, st: st, resps: make(chan *discoverypb.DeltaDiscoveryResponse, 1000), errc: make(chan error, 1)}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				d.errc <- err
				return
			}
			d.resps <- r
		}
	}()
	h.t.Cleanup(func() {
		cancel()
		<-d.errc
	})
	return d
}

func (d *delta) request(r *discoverypb.DeltaDiscoveryRequest) {
	d.t.Helper()
	if err := d.st.Send(r); err != nil {
		d.t.Fatal(err)
	}
}

func (d *delta) next() *discoverypb.DeltaDiscoveryResponse {
	d.t.Helper()
	select {
	case r := <-d.resps:
		return r
	case err := <-d.errc:
		d.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitFor):
		d.t.Fatal("no response")
	}
	return nil
}

func (d *delta) ack(r *discoverypb.DeltaDiscoveryResponse) {
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
}

func resourceNames(rs []*discoverypb.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

// TestDeltaAllTypes: delta subscriptions of every type, an endpoint change
// as one resource, a name that does not exist and a service that goes
// away in removed_resources.
func TestDeltaAllTypes(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.1:8080")))
	d := h.delta()
	const name = "web.demo:8080"
	for _, typ := range []string{TypeListener, TypeRoute, TypeCluster, TypeEndpoint} {
		d.request(&discoverypb.DeltaDiscoveryRequest{Node: &corepb.Node{Id: "n"}, TypeUrl: typ, ResourceNamesSubscribe: []string{name}})
		r := d.next()
		if r.TypeUrl != typ || !slices.Equal(resourceNames(r.Resources), []string{name}) || r.Resources[0].Version == "" {
			t.Fatalf("%s: %v", typ, r)
		}
		d.ack(r)
	}
	// An unknown name is answered with its removal.
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeCluster, ResourceNamesSubscribe: []string{"nope.demo:80"}})
	r := d.next()
	if r.TypeUrl != TypeCluster || len(r.Resources) != 0 || !slices.Equal(r.RemovedResources, []string{"nope.demo:80"}) {
		t.Fatalf("unknown name: %v", r)
	}
	d.ack(r)
	// A change: only the endpoints, only that resource.
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.1:8080"), ep("10.0.0.2:8080")))
	r = d.next()
	if r.TypeUrl != TypeEndpoint || len(r.Resources) != 1 {
		t.Fatalf("change: %v", r)
	}
	c := &endpointpb.ClusterLoadAssignment{}
	if err := r.Resources[0].Resource.UnmarshalTo(c); err != nil || len(addrs(c)) != 2 {
		t.Fatalf("change: %v %v", c, err)
	}
	d.ack(r)
	// The service goes: every type's resource is removed.
	h.apply("file", discovery.Group{Key: "web"})
	removed := map[string]bool{}
	for len(removed) < 4 {
		r = d.next()
		if !slices.Equal(r.RemovedResources, []string{name}) || len(r.Resources) != 0 {
			t.Fatalf("removal: %v", r)
		}
		removed[r.TypeUrl] = true
		d.ack(r)
	}
}

// TestDeltaInitialVersions: a client that reconnects saying which versions
// it holds gets only what differs.
func TestDeltaInitialVersions(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("a", "a.demo", 80, ep("10.0.0.1:80")), group("b", "b.demo", 80, ep("10.0.0.2:80")))
	d := h.delta()
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNamesSubscribe: []string{"a.demo:80", "b.demo:80"}})
	var vers = map[string]string{}
	for len(vers) < 2 {
		r := d.next()
		for _, res := range r.Resources {
			vers[res.Name] = res.Version
		}
		d.ack(r)
	}
	// Reconnect holding a's current version and an old one of b.
	d2 := h.delta()
	d2.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNamesSubscribe: []string{"a.demo:80", "b.demo:80"},
		InitialResourceVersions: map[string]string{"a.demo:80": vers["a.demo:80"], "b.demo:80": "r0"}})
	r := d2.next()
	if got := resourceNames(r.Resources); !slices.Equal(got, []string{"b.demo:80"}) {
		t.Fatalf("after reconnect: %v, want b.demo:80 only", got)
	}
}

// TestSotWVersionRollback: a client that reconnects and sends the version
// and nonce of an earlier stream gets the current state.
func TestSotWVersionRollback(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.1:8080")))
	s := h.sotw(nil)
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNames: []string{"web.demo:8080"}})
	r := s.next()
	s.ack(r, "web.demo:8080")
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.2:8080")))
	r2 := s.next()
	s.ack(r2, "web.demo:8080")
	// A new stream that claims the first version and nonce.
	s2 := h.sotw(nil)
	s2.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: []string{"web.demo:8080"}})
	got := s2.next()
	if a := addrs(cla(t, got)["web.demo:8080"]); !slices.Equal(a, []string{"10.0.0.2:8080"}) {
		t.Fatalf("after rollback: %v", a)
	}
}

// TestThousandClusters: one SotW stream subscribing to 1,000 clusters and
// their endpoints, by name and then by wildcard, ends holding all of them.
func TestThousandClusters(t *testing.T) {
	h := newHarness(t, Options{})
	const n = 1000
	var groups []discovery.Group
	var names []string
	for i := range n {
		host := fmt.Sprintf("svc%d.demo", i)
		groups = append(groups, group(host, host, 80, ep(fmt.Sprintf("10.%d.%d.1:80", i/250, i%250))))
		names = append(names, host+":80")
	}
	h.apply("file", groups...)
	s := h.sotw(nil)
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeCluster, ResourceNames: names})
	r := s.next()
	if len(r.Resources) != n {
		t.Fatalf("CDS: %d clusters, want %d", len(r.Resources), n)
	}
	s.ack(r, names...)
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNames: names})
	got := map[string]bool{}
	for len(got) < n {
		r := s.next()
		for name, c := range cla(t, r) {
			if len(c.Endpoints) != 1 {
				t.Fatalf("%s: %v", name, c)
			}
			got[name] = true
		}
		s.ack(r, names...)
	}
	// A wildcard CDS stream gets the same clusters, and a new service.
	w := h.sotw(nil)
	w.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeCluster})
	r = w.next()
	if len(r.Resources) != n {
		t.Fatalf("wildcard CDS: %d clusters, want %d", len(r.Resources), n)
	}
	w.ack(r)
	h.apply("file", group("new", "new.demo", 90))
	for {
		r = w.next()
		if len(r.Resources) == n+1 {
			break
		}
	}
	w.ack(r)
	h.apply("file", discovery.Group{Key: "new"})
	for {
		r = w.next()
		if len(r.Resources) == n {
			break
		}
	}
}

// TestLocalityPriorityAndIdentity: endpoints grouped by zone, the client's
// zone (from its node, or from node_zones) at priority 0 and the others at
// 1; health, weight and identity metadata as documented.
func TestLocalityPriorityAndIdentity(t *testing.T) {
	set := &Settings{NodeZones: []NodeZone{{Node: "east-*", Zone: "east"}}}
	h := newHarness(t, Options{Settings: set})
	h.apply("file", group("web", "web.demo", 8080,
		discovery.Endpoint{Addr: mustAddr("10.0.0.1:8080"), Zone: "east", Health: discovery.HealthPassing, Weight: 3,
			Identity: discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://prod.test/ns/demo/sa/web", ServerName: "web.demo"}},
		discovery.Endpoint{Addr: mustAddr("10.0.0.2:8080"), Zone: "west"},
		discovery.Endpoint{Addr: mustAddr("10.0.0.3:8080"), Zone: "west", Health: discovery.HealthWarning},
	))
	for _, tc := range []struct {
		node       *corepb.Node
		wantZones  []string
		wantPrio   []uint32
		firstLocal bool
	}{
		{&corepb.Node{Id: "x", Locality: &corepb.Locality{Zone: "west"}}, []string{"west", "east"}, []uint32{0, 1}, true},
		{&corepb.Node{Id: "east-7"}, []string{"east", "west"}, []uint32{0, 1}, true},
		{&corepb.Node{Id: "nowhere"}, []string{"east", "west"}, []uint32{0, 0}, false},
	} {
		s := h.sotw(nil)
		s.request(&discoverypb.DiscoveryRequest{Node: tc.node, TypeUrl: TypeEndpoint, ResourceNames: []string{"web.demo:8080"}})
		c := cla(t, s.next())["web.demo:8080"]
		var zones []string
		var prio []uint32
		for _, l := range c.Endpoints {
			zones = append(zones, l.Locality.GetZone())
			prio = append(prio, l.Priority)
			var w uint32
			for _, e := range l.LbEndpoints {
				w += e.LoadBalancingWeight.GetValue()
			}
			if l.LoadBalancingWeight.GetValue() != w {
				t.Errorf("%s: locality weight %d, want the sum %d", l.Locality.GetZone(), l.LoadBalancingWeight.GetValue(), w)
			}
		}
		if !slices.Equal(zones, tc.wantZones) || !slices.Equal(prio, tc.wantPrio) {
			t.Errorf("node %s: zones %v priorities %v, want %v %v", tc.node.Id, zones, prio, tc.wantZones, tc.wantPrio)
		}
		for _, l := range c.Endpoints {
			for _, e := range l.LbEndpoints {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				switch sa.Address {
				case "10.0.0.1":
					id := e.GetMetadata().GetFilterMetadata()[IdentityMetadataKey].GetFields()["identity"].GetStringValue()
					if id != "spiffe://prod.test/ns/demo/sa/web" || e.HealthStatus != corepb.HealthStatus_HEALTHY || e.LoadBalancingWeight.GetValue() != 3 {
						t.Errorf("10.0.0.1: %v", e)
					}
				case "10.0.0.2":
					if e.HealthStatus != corepb.HealthStatus_UNKNOWN || e.GetMetadata() != nil || e.LoadBalancingWeight.GetValue() != discovery.DefaultWeight {
						t.Errorf("10.0.0.2: %v", e)
					}
				case "10.0.0.3":
					if e.HealthStatus != corepb.HealthStatus_HEALTHY {
						t.Errorf("10.0.0.3 (warning): %v", e)
					}
				}
			}
		}
	}
}

// TestUpstreamTLS: a cluster carries the configured UpstreamTlsContext.
func TestUpstreamTLS(t *testing.T) {
	set := &Settings{UpstreamTLS: &UpstreamTLSConfig{Mode: TLSModeCertificateProvider, TrustDomains: []string{"prod.test"}, Certificate: "spire", Validation: "spire"}}
	h := newHarness(t, Options{Settings: set})
	h.apply("file", group("web", "web.demo", 8080, ep("10.0.0.1:8080")))
	s := h.sotw(nil)
	s.request(&discoverypb.DiscoveryRequest{TypeUrl: TypeCluster, ResourceNames: []string{"web.demo:8080"}})
	r := s.next()
	c := &clusterpb.Cluster{}
	if err := r.Resources[0].UnmarshalTo(c); err != nil {
		t.Fatal(err)
	}
	ts := c.GetTransportSocket()
	if ts.GetName() != "envoy.transport_sockets.tls" || ts.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
		t.Fatalf("transport socket %v", ts)
	}
}

func mustAddr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestDeltaStaleNonceSubscribes: a delta request that ACKs an older
// response still subscribes (delta subscriptions are sent once), where a
// SotW one is ignored.
func TestDeltaStaleNonceSubscribes(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("a", "a.demo", 80, ep("10.0.0.1:80")), group("b", "b.demo", 80, ep("10.0.0.2:80")))
	d := h.delta()
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNamesSubscribe: []string{"a.demo:80"}})
	first := d.next()
	h.apply("file", group("a", "a.demo", 80, ep("10.0.0.3:80")))
	d.next() // the push: first's nonce is stale now
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeEndpoint, ResponseNonce: first.Nonce, ResourceNamesSubscribe: []string{"b.demo:80"}})
	r := d.next()
	if got := resourceNames(r.Resources); !slices.Equal(got, []string{"b.demo:80"}) {
		t.Fatalf("after a stale-nonce subscribe: %v", got)
	}
}

// TestDeltaWildcard: a delta CDS stream that names nothing follows every
// authority: one that appears is sent, one that goes is removed.
func TestDeltaWildcard(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("a", "a.demo", 80, ep("10.0.0.1:80")))
	d := h.delta()
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeCluster})
	r := d.next()
	if got := resourceNames(r.Resources); !slices.Equal(got, []string{"a.demo:80"}) {
		t.Fatalf("wildcard: %v", got)
	}
	d.ack(r)
	h.apply("file", group("b", "b.demo", 80, ep("10.0.0.2:80")))
	r = d.next()
	if got := resourceNames(r.Resources); !slices.Equal(got, []string{"b.demo:80"}) || len(r.RemovedResources) != 0 {
		t.Fatalf("after b appeared: %v", r)
	}
	d.ack(r)
	h.apply("file", discovery.Group{Key: "a"})
	r = d.next()
	if len(r.Resources) != 0 || !slices.Equal(r.RemovedResources, []string{"a.demo:80"}) {
		t.Fatalf("after a went: %v", r)
	}
	d.ack(r)
	// Unsubscribing from the wildcard and naming b keeps b, silently.
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeCluster, ResourceNamesSubscribe: []string{"b.demo:80"}, ResourceNamesUnsubscribe: []string{"*"}})
	select {
	case r := <-d.resps:
		t.Fatalf("unexpected response: %v", r)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestDeltaResubscribe: a name unsubscribed (by leaving the wildcard) and
// subscribed again is sent again: the client forgot it.
func TestDeltaResubscribe(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("file", group("a", "a.demo", 80, ep("10.0.0.1:80")))
	d := h.delta()
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeCluster, ResourceNamesSubscribe: []string{"*"}})
	d.ack(d.next())
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeCluster, ResourceNamesUnsubscribe: []string{"*"}})
	d.request(&discoverypb.DeltaDiscoveryRequest{TypeUrl: TypeCluster, ResourceNamesSubscribe: []string{"a.demo:80"}})
	r := d.next()
	if got := resourceNames(r.Resources); !slices.Equal(got, []string{"a.demo:80"}) {
		t.Fatalf("after resubscribing: %v", got)
	}
}

// TestAdmission: beyond the maximum of open streams, or the rate of new
// ones, a stream is refused with ResourceExhausted and a retry delay.
func TestAdmission(t *testing.T) {
	for _, opts := range []Options{
		{MaxStreams: 2, NewStreamsPerSecond: -1},
		{NewStreamsPerSecond: 0.001, NewStreamsBurst: 2},
	} {
		h := newHarness(t, opts)
		h.apply("file", group("a", "a.demo", 80, ep("10.0.0.1:80")))
		for i := range 3 {
			s := h.sotw(nil)
			// A refused stream may be ended before the request goes out: Send
			// then says io.EOF, and the status comes from Recv (errc).
			if err := s.st.Send(&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNames: []string{"a.demo:80"}}); err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("%+v: stream %d: %v", opts, i+1, err)
			}
			select {
			case r := <-s.resps:
				if i == 2 {
					t.Fatalf("%+v: stream 3 answered: %v", opts, r)
				}
			case err := <-s.errc:
				if i < 2 || status.Code(err) != codes.ResourceExhausted {
					t.Fatalf("%+v: stream %d: %v", opts, i+1, err)
				}
				s.errc <- err
			case <-time.After(waitFor):
				t.Fatalf("%+v: stream %d: nothing", opts, i+1)
			}
		}
	}
}

// TestAdmissionQueuesRefusedClients: xDS refusals follow the same virtual
// queue as the destination API's (destination/internal/admit): each client
// refused in a storm is told a later slot than the one before it, so that
// clients honouring RetryInfo come back one per slot instead of all at once.
func TestAdmissionQueuesRefusedClients(t *testing.T) {
	s := New(Options{Store: cache.New(), NewStreamsPerSecond: 10, NewStreamsBurst: 1})
	if err := s.admitStream(); err != nil {
		t.Fatalf("first stream: %v", err)
	}
	var last time.Duration
	for i := range 20 {
		err := s.admitStream()
		st := status.Convert(err)
		if st.Code() != codes.ResourceExhausted {
			t.Fatalf("refusal %d: %v", i, err)
		}
		var d time.Duration
		for _, det := range st.Details() {
			if ri, ok := det.(*errdetails.RetryInfo); ok {
				d = ri.RetryDelay.AsDuration()
			}
		}
		if d <= last {
			t.Fatalf("refusal %d: retry in %v after %v: want a later slot each time", i, d, last)
		}
		last = d
	}
	if last < time.Second {
		t.Fatalf("the 20th refused client of 10/s is told %v: want about 2 s (its place in the queue)", last)
	}
}

// TestBackupTierPriorities: the served tier's localities come first (the
// client's zone, then the others), the next failover tier's after them,
// numbered without gaps; the backup holds only what the tier would serve
// on its own (a critical endpoint of it is evicted).
func TestBackupTierPriorities(t *testing.T) {
	h := newHarness(t, Options{Federation: eastThenWest(t)})
	h.apply("east", group("web", "web.demo", 8080,
		discovery.Endpoint{Addr: mustAddr("10.0.0.1:8080"), Zone: "a", Health: discovery.HealthPassing},
		discovery.Endpoint{Addr: mustAddr("10.0.0.2:8080"), Zone: "b", Health: discovery.HealthPassing}))
	h.apply("west", group("web", "web.demo", 8080,
		discovery.Endpoint{Addr: mustAddr("10.0.1.1:8080"), Zone: "a", Health: discovery.HealthPassing},
		discovery.Endpoint{Addr: mustAddr("10.0.1.2:8080"), Zone: "a", Health: discovery.HealthCritical},
		discovery.Endpoint{Addr: mustAddr("10.0.1.3:8080"), Zone: "a", Health: discovery.HealthPassing}))
	for _, tc := range []struct {
		zone string
		want []string // "priority zone addresses"
	}{
		{"a", []string{"0 a 10.0.0.1", "1 b 10.0.0.2", "2 a 10.0.1.1,10.0.1.3"}},
		{"b", []string{"0 b 10.0.0.2", "1 a 10.0.0.1", "2 a 10.0.1.1,10.0.1.3"}},
		{"", []string{"0 a 10.0.0.1", "0 b 10.0.0.2", "1 a 10.0.1.1,10.0.1.3"}},
	} {
		s := h.sotw(nil)
		s.request(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "n", Locality: &corepb.Locality{Zone: tc.zone}},
			TypeUrl: TypeEndpoint, ResourceNames: []string{"web.demo:8080"}})
		var got []string
		for _, l := range cla(t, s.next())["web.demo:8080"].Endpoints {
			var addrs []string
			for _, e := range l.LbEndpoints {
				addrs = append(addrs, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
			got = append(got, fmt.Sprintf("%d %s %s", l.Priority, l.Locality.GetZone(), strings.Join(addrs, ",")))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("client zone %q: %q, want %q", tc.zone, got, tc.want)
		}
	}
}

// eastThenWest is a federation of web.demo:8080 that serves source east,
// and west when east has no healthy endpoint.
func eastThenWest(t *testing.T) *discovery.Federation {
	t.Helper()
	fed, err := discovery.NewFederation([]discovery.FederationRule{{
		Authority: discovery.Authority{Host: "web.demo", Port: 8080},
		Failover:  []discovery.Tier{{Sources: []string{"east"}, MinHealthy: 1}, {Sources: []string{"west"}, MinHealthy: 1}},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fed
}
