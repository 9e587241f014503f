package destination

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"

	"github.com/tributary-mesh/tributary/discovery"
)

func ep(addr string, mods ...func(*discovery.Endpoint)) *discovery.Endpoint {
	e := &discovery.Endpoint{Addr: netip.MustParseAddrPort(addr), Source: "s", Key: "k"}
	for _, m := range mods {
		m(e)
	}
	return e
}

func withWeight(w uint32) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) { e.Weight = w }
}
func withZone(z string) func(*discovery.Endpoint) { return func(e *discovery.Endpoint) { e.Zone = z } }

// kind describes an update compactly: "add:a,b", "remove:a", "none:true".
func kind(u *pb.Update) string {
	switch x := u.GetUpdate().(type) {
	case *pb.Update_Add:
		s := "add:"
		for i, wa := range x.Add.GetAddrs() {
			ap, _ := AddrPortFromTCP(wa.GetAddr())
			if i > 0 {
				s += ","
			}
			s += ap.String()
		}
		return s
	case *pb.Update_Remove:
		s := "remove:"
		for i, a := range x.Remove.GetAddrs() {
			ap, _ := AddrPortFromTCP(a)
			if i > 0 {
				s += ","
			}
			s += ap.String()
		}
		return s
	case *pb.Update_NoEndpoints:
		if x.NoEndpoints.GetExists() {
			return "none:true"
		}
		return "none:false"
	}
	return "?"
}

func kinds(us []*pb.Update) []string {
	out := []string{}
	for _, u := range us {
		out = append(out, kind(u))
	}
	return out
}

func TestTranslatorWireContract(t *testing.T) {
	a := ep("10.0.0.1:80")
	b := ep("10.0.0.2:80")
	c := ep("[2001:db8::1]:80")
	type step struct {
		view view
		want []string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first: endpoints give one add of all", []step{
			{view{exists: true, endpoints: []*discovery.Endpoint{a, b}}, []string{"add:10.0.0.1:80,10.0.0.2:80"}},
		}},
		{"first: known service without endpoints", []step{
			{view{exists: true}, []string{"none:true"}},
		}},
		{"first: unknown service, then it appears", []step{
			{view{}, []string{"none:false"}},
			{view{}, []string{}},
			{view{exists: true}, []string{"none:true"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{c}}, []string{"add:[2001:db8::1]:80"}},
		}},
		{"diffs: add new, remove gone, add before remove", []step{
			{view{exists: true, endpoints: []*discovery.Endpoint{a}}, []string{"add:10.0.0.1:80"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{b}}, []string{"add:10.0.0.2:80", "remove:10.0.0.1:80"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{a, b}}, []string{"add:10.0.0.1:80"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{a}}, []string{"remove:10.0.0.2:80"}},
		}},
		{"unchanged view sends nothing, equal copies too", []step{
			{view{exists: true, endpoints: []*discovery.Endpoint{a}}, []string{"add:10.0.0.1:80"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{a}}, []string{}},
			{view{exists: true, endpoints: []*discovery.Endpoint{ep("10.0.0.1:80")}}, []string{}},
			{view{exists: true, endpoints: []*discovery.Endpoint{ep("10.0.0.1:80", func(e *discovery.Endpoint) { e.Health = discovery.HealthWarning })}}, []string{}},
		}},
		{"changed metadata is re-added", []step{
			{view{exists: true, endpoints: []*discovery.Endpoint{a}}, []string{"add:10.0.0.1:80"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{ep("10.0.0.1:80", withWeight(5))}}, []string{"add:10.0.0.1:80"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{ep("10.0.0.1:80", withWeight(5), withZone("z"))}}, []string{"add:10.0.0.1:80"}},
		}},
		{"last endpoint gone: no_endpoints, not an empty remove", []step{
			{view{exists: true, endpoints: []*discovery.Endpoint{a}}, []string{"add:10.0.0.1:80"}},
			{view{exists: true}, []string{"none:true"}},
			{view{exists: true}, []string{}},
			{view{}, []string{"none:false"}},
			{view{exists: true, endpoints: []*discovery.Endpoint{a}}, []string{"add:10.0.0.1:80"}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTranslator("")
			for i, s := range tc.steps {
				got := kinds(tr.next(s.view))
				if !slices.Equal(got, s.want) {
					t.Fatalf("step %d: got %v, want %v", i, got, s.want)
				}
			}
		})
	}
}

func TestWeightedAddr(t *testing.T) {
	spiffe := ep("10.0.0.1:8080", withZone("zone-a"), func(e *discovery.Endpoint) {
		e.Identity = discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://example.org/web", ServerName: "web.example.org"}
		e.Protocol = discovery.ProtocolOpaque
		e.Labels = map[string]string{"rack": "r1"}
	})
	wa := weightedAddr(spiffe, "zone-a")
	if got := wa.GetTlsIdentity().GetUriLikeIdentity().GetUri(); got != "spiffe://example.org/web" {
		t.Errorf("uri identity %q", got)
	}
	if got := wa.GetTlsIdentity().GetServerName().GetName(); got != "web.example.org" {
		t.Errorf("server name %q", got)
	}
	if wa.GetProtocolHint().GetOpaque() == nil {
		t.Errorf("want opaque hint, got %v", wa.GetProtocolHint())
	}
	if wa.GetProtocolHint().GetOpaqueTransport() != nil {
		t.Errorf("opaque_transport without an inbound port: %v", wa.GetProtocolHint())
	}
	tunnelled := *spiffe
	tunnelled.OpaqueTransport = 4143
	if got := weightedAddr(&tunnelled, "").GetProtocolHint(); got.GetOpaque() == nil || got.GetOpaqueTransport().GetInboundPort() != 4143 {
		t.Errorf("opaque hint with the target proxy's inbound port: %v", got)
	}
	if wa.GetWeight() != discovery.DefaultWeight {
		t.Errorf("weight %d", wa.GetWeight())
	}
	want := map[string]string{"rack": "r1", "zone": "zone-a", "zone_locality": "local", "source": "s"}
	for k, v := range want {
		if wa.GetMetricLabels()[k] != v {
			t.Errorf("label %s=%q, want %q (all: %v)", k, wa.GetMetricLabels()[k], v, wa.GetMetricLabels())
		}
	}
	if got := weightedAddr(spiffe, "zone-b").GetMetricLabels()["zone_locality"]; got != "remote" {
		t.Errorf("zone_locality for another zone: %q", got)
	}
	if _, ok := weightedAddr(spiffe, "").GetMetricLabels()["zone_locality"]; ok {
		t.Error("zone_locality set without a client zone")
	}

	dns := ep("10.0.0.2:8080", func(e *discovery.Endpoint) {
		e.Identity = discovery.Identity{Kind: discovery.IdentityDNS, Name: "web.demo.serviceaccount.identity.linkerd.cluster.local", ServerName: "web.demo.serviceaccount.identity.linkerd.cluster.local"}
		e.Protocol = discovery.ProtocolH2
		e.Weight = 7
	})
	wa = weightedAddr(dns, "")
	if wa.GetTlsIdentity().GetDnsLikeIdentity().GetName() != dns.Identity.Name || wa.GetTlsIdentity().GetServerName().GetName() != dns.Identity.Name {
		t.Errorf("dns identity %v", wa.GetTlsIdentity())
	}
	if wa.GetProtocolHint().GetH2() == nil || wa.GetWeight() != 7 {
		t.Errorf("h2 hint / weight: %v %d", wa.GetProtocolHint(), wa.GetWeight())
	}
	if weightedAddr(ep("10.0.0.3:1"), "").GetTlsIdentity() != nil {
		t.Error("identity set for an endpoint without one")
	}
	noSNI := ep("10.0.0.4:1", func(e *discovery.Endpoint) {
		e.Identity = discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://x/y"}
	})
	if weightedAddr(noSNI, "").GetTlsIdentity() != nil {
		t.Error("SPIFFE identity without server name must not be sent")
	}
}

func TestTCPAddressRoundTrip(t *testing.T) {
	for _, s := range []string{"10.1.2.3:8080", "[2001:db8::ff00:42:8329]:443", "[::1]:1", "255.255.255.255:65535"} {
		ap := netip.MustParseAddrPort(s)
		got, ok := AddrPortFromTCP(tcpAddress(ap))
		if !ok || got != ap {
			t.Errorf("%s: round trip gave %v %v", s, got, ok)
		}
	}
}

// TestTranslatorReplayMatchesView drives random view sequences and checks
// that a client replaying the updates always holds exactly the view.
func TestTranslatorReplayMatchesView(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	pool := make([]*discovery.Endpoint, 20)
	for i := range pool {
		pool[i] = ep(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 80).String())
	}
	for run := 0; run < 200; run++ {
		tr := newTranslator("")
		var set EndpointSet
		for step := 0; step < 30; step++ {
			var v view
			v.exists = r.IntN(5) > 0
			if v.exists {
				for _, e := range pool {
					if r.IntN(3) == 0 {
						if r.IntN(4) == 0 {
							e = ep(e.Addr.String(), withWeight(uint32(r.IntN(3)+1)))
						}
						v.endpoints = append(v.endpoints, e)
					}
				}
			}
			ups := tr.next(v)
			if step == 0 && len(ups) == 0 {
				t.Fatal("first view sent nothing")
			}
			for _, u := range ups {
				if err := set.Apply(u); err != nil {
					t.Fatalf("run %d step %d: %v", run, step, err)
				}
			}
			var want []netip.AddrPort
			for _, e := range v.endpoints {
				want = append(want, e.Addr)
			}
			if got := set.Sorted(); !slices.Equal(got, want) {
				t.Fatalf("run %d step %d: client holds %v, view is %v", run, step, got, want)
			}
			for _, e := range v.endpoints {
				if set.Addrs[e.Addr].GetWeight() != e.EffectiveWeight() {
					t.Fatalf("run %d step %d: %v weight %d, want %d", run, step, e.Addr, set.Addrs[e.Addr].GetWeight(), e.EffectiveWeight())
				}
			}
			if len(v.endpoints) == 0 && set.Exists != v.exists {
				t.Fatalf("run %d step %d: exists %v, want %v", run, step, set.Exists, v.exists)
			}
		}
	}
}

func TestPreferZone(t *testing.T) {
	hinted := func(addr string, zones ...string) *discovery.Endpoint {
		return ep(addr, func(e *discovery.Endpoint) { e.ForZones = zones })
	}
	a, b, c := hinted("10.0.0.1:80", "z1"), hinted("10.0.0.2:80", "z2"), hinted("10.0.0.3:80", "z1", "z2")
	plain := ep("10.0.0.4:80")
	for _, tc := range []struct {
		name string
		eps  []*discovery.Endpoint
		zone string
		want []*discovery.Endpoint
	}{
		{"client zone unknown: all", []*discovery.Endpoint{a, b}, "", []*discovery.Endpoint{a, b}},
		{"hinted for the zone", []*discovery.Endpoint{a, b, c}, "z1", []*discovery.Endpoint{a, c}},
		{"other zone", []*discovery.Endpoint{a, b, c}, "z2", []*discovery.Endpoint{b, c}},
		{"none for the zone: all", []*discovery.Endpoint{a, b}, "z3", []*discovery.Endpoint{a, b}},
		{"an endpoint without hints: all", []*discovery.Endpoint{a, b, plain}, "z1", []*discovery.Endpoint{a, b, plain}},
	} {
		if got := discovery.PreferZone(tc.eps, tc.zone); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %d endpoints, want %d", tc.name, len(got), len(tc.want))
		}
	}
}
