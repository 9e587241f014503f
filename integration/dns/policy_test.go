//go:build integration

package dns

import (
	"context"
	"net/netip"
	"testing"

	"github.com/linkerd/linkerd2-proxy-api/go/inbound"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"github.com/linkerd/linkerd2-proxy-api/go/outbound"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/destination/policy"
	"github.com/tributary-mesh/tributary/integration/harness"
)

// The policy API of the real binary, through the upstream stubs, as a
// standalone linkerd2-proxy asks it: a DNS virtual IP → a balancer over
// Get(host:port); an endpoint's address → a forward to it; inbound, the
// configured default per port (docs/policy.md).
func TestPolicyAPI(t *testing.T) {
	tr := start(t, demoServices, vipDNS)
	got := short(t, tr.DNS, "web.demo", "A")
	if len(got) != 1 {
		t.Fatalf("A %v, want one virtual IP", got)
	}
	vip := netip.MustParseAddr(got[0])

	cc, err := grpc.NewClient(tr.API, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	out := outbound.NewOutboundPoliciesClient(cc)
	ctx, cancel := context.WithTimeout(t.Context(), harness.WaitFor)
	defer cancel()
	spec := func(ap netip.AddrPort) *outbound.TrafficSpec {
		return &outbound.TrafficSpec{SourceWorkload: "vm3", Target: &outbound.TrafficSpec_Addr{
			Addr: &pbnet.TcpAddress{Ip: policy.IPAddress(ap.Addr()), Port: uint32(ap.Port())},
		}}
	}
	backend := func(p *outbound.OutboundPolicy) *outbound.Backend {
		t.Helper()
		d := p.GetProtocol().GetDetect()
		if p.GetMetadata() == nil || d.GetTimeout() == nil || d.GetOpaque() == nil || d.GetHttp2() == nil {
			t.Fatalf("policy is not detect with timeout, opaque, http1 and http2: %v", p)
		}
		b := d.GetHttp1().GetRoutes()[0].GetRules()[0].GetBackends().GetFirstAvailable().GetBackends()[0].GetBackend()
		if b.GetQueue().GetFailfastTimeout() == nil || b.GetMetadata() == nil {
			t.Fatalf("backend without queue or metadata: %v", b)
		}
		return b
	}

	p, err := out.Get(ctx, spec(netip.AddrPortFrom(vip, 8080)))
	if err != nil {
		t.Fatal(err)
	}
	if path := backend(p).GetBalancer().GetDiscovery().GetDst().GetPath(); path != "web.demo:8080" {
		t.Fatalf("Get(%s:8080): dst path %q, want web.demo:8080", vip, path)
	}
	// Watch: the first message at once.
	ws, err := out.Watch(ctx, spec(netip.AddrPortFrom(vip, 9090)))
	if err != nil {
		t.Fatal(err)
	}
	p, err = ws.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if path := backend(p).GetBalancer().GetDiscovery().GetDst().GetPath(); path != "web.demo:9090" {
		t.Fatalf("Watch(%s:9090): dst path %q", vip, path)
	}
	// An endpoint's own address: a forward to it.
	ep := netip.MustParseAddrPort("10.0.0.1:18080")
	p, err = out.Get(ctx, spec(ep))
	if err != nil {
		t.Fatal(err)
	}
	f := backend(p).GetForward()
	if f.GetAddr().GetPort() != 18080 || !proto3Equal(f.GetAddr().GetIp(), policy.IPAddress(ep.Addr())) {
		t.Fatalf("Get(%s): backend %v, want a forward to it", ep, backend(p))
	}
	if _, err := out.Get(ctx, &outbound.TrafficSpec{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no target: %v, want InvalidArgument", err)
	}

	// Inbound: the default (all-unauthenticated without inbound_policy).
	in := inbound.NewInboundServerPoliciesClient(cc)
	srv, err := in.GetPort(ctx, &inbound.PortSpec{Workload: "vm3", Port: 8080})
	if err != nil {
		t.Fatal(err)
	}
	if srv.GetLabels()["name"] != policy.AllUnauthenticated || len(srv.GetAuthorizations()) != 1 ||
		srv.GetAuthorizations()[0].GetAuthentication().GetUnauthenticated() == nil {
		t.Fatalf("GetPort(8080): %v", srv)
	}
}

func proto3Equal(a, b *pbnet.IPAddress) bool {
	return a.GetIpv4() == b.GetIpv4() && a.GetIpv6().GetFirst() == b.GetIpv6().GetFirst() && a.GetIpv6().GetLast() == b.GetIpv6().GetLast() &&
		(a.GetIpv4() != 0 || a.GetIpv6() != nil)
}
