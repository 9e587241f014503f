package policy_test

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/linkerd/linkerd2-proxy-api/go/inbound"
	"github.com/linkerd/linkerd2-proxy-api/go/meta"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"github.com/linkerd/linkerd2-proxy-api/go/outbound"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/destination/policy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// vips is a virtual IP table that can change.
type vips struct {
	mu      sync.Mutex
	hosts   map[netip.Addr]string
	changed chan struct{}
}

func newVIPs(m map[netip.Addr]string) *vips { return &vips{hosts: m, changed: make(chan struct{})} }

func (v *vips) LookupVIP(ip netip.Addr) (string, <-chan struct{}, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	h, ok := v.hosts[ip]
	return h, v.changed, ok
}

func (v *vips) set(ip netip.Addr, host string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.hosts[ip] = host
	close(v.changed)
	v.changed = make(chan struct{})
}

// serve runs s on 127.0.0.1 and returns a connection to it.
func serve(t *testing.T, s *policy.Server) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(ln) }()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		g.Stop()
		<-done
	})
	return cc
}

func newServer(t *testing.T, opts policy.Options) *policy.Server {
	t.Helper()
	s, err := policy.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func addrSpec(ap netip.AddrPort) *outbound.TrafficSpec {
	return &outbound.TrafficSpec{SourceWorkload: "vm1", Target: &outbound.TrafficSpec_Addr{
		Addr: &pbnet.TcpAddress{Ip: policy.IPAddress(ap.Addr()), Port: uint32(ap.Port())},
	}}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// backends checks the policy the way linkerd2-proxy's client-policy
// conversion does (metadata, protocol, detect timeout, http1/http2/opaque,
// routes with metadata and a distribution, backends with metadata, queue
// with failfast timeout, a dispatcher) and returns every route's backend.
func backends(t *testing.T, p *outbound.OutboundPolicy, wantDetect bool) []*outbound.Backend {
	t.Helper()
	if p.GetMetadata().GetKind() == nil {
		t.Fatal("missing metadata")
	}
	var opq *outbound.ProxyProtocol_Opaque
	var http [][]*outbound.HttpRoute
	switch k := p.GetProtocol().GetKind().(type) {
	case *outbound.ProxyProtocol_Detect_:
		if !wantDetect {
			t.Fatal("detect, want opaque")
		}
		d := k.Detect
		if d.GetTimeout() == nil || d.GetTimeout().AsDuration() <= 0 {
			t.Fatal("detect without timeout")
		}
		if d.GetHttp1() == nil || d.GetHttp2() == nil || d.GetOpaque() == nil {
			t.Fatal("detect without http1, http2 or opaque")
		}
		opq = d.GetOpaque()
		http = [][]*outbound.HttpRoute{d.GetHttp1().GetRoutes(), d.GetHttp2().GetRoutes()}
	case *outbound.ProxyProtocol_Opaque_:
		if wantDetect {
			t.Fatal("opaque, want detect")
		}
		opq = k.Opaque
	default:
		t.Fatalf("protocol %T", k)
	}
	var out []*outbound.Backend
	for _, routes := range http {
		if len(routes) == 0 {
			t.Fatal("no HTTP route")
		}
		for _, r := range routes {
			if r.GetMetadata().GetKind() == nil {
				t.Fatal("HTTP route without metadata")
			}
			for _, rule := range r.GetRules() {
				if len(rule.GetMatches()) == 0 {
					t.Error("HTTP rule matches nothing")
				}
				fa := rule.GetBackends().GetFirstAvailable()
				if fa == nil || len(fa.GetBackends()) == 0 {
					t.Fatal("HTTP rule without a first-available distribution")
				}
				for _, b := range fa.GetBackends() {
					out = append(out, b.GetBackend())
				}
			}
		}
	}
	if len(opq.GetRoutes()) == 0 {
		t.Fatal("no opaque route")
	}
	for _, r := range opq.GetRoutes() {
		if r.GetMetadata().GetKind() == nil {
			t.Fatal("opaque route without metadata")
		}
		for _, rule := range r.GetRules() {
			for _, b := range rule.GetBackends().GetFirstAvailable().GetBackends() {
				out = append(out, b.GetBackend())
			}
		}
	}
	for _, b := range out {
		if b.GetMetadata().GetKind() == nil {
			t.Fatal("backend without metadata")
		}
		if b.GetQueue() == nil || b.GetQueue().GetCapacity() == 0 || b.GetQueue().GetFailfastTimeout() == nil {
			t.Fatal("backend without queue capacity and failfast timeout")
		}
		if b.GetKind() == nil {
			t.Fatal("backend without dispatcher")
		}
	}
	return out
}

func dstPath(t *testing.T, b *outbound.Backend) string {
	t.Helper()
	bal := b.GetBalancer()
	if bal == nil {
		t.Fatalf("backend %v is not a balancer", b.GetKind())
	}
	ewma := bal.GetPeakEwma()
	if ewma.GetDefaultRtt() == nil || ewma.GetDecay() == nil {
		t.Fatal("balancer without peak EWMA default RTT and decay")
	}
	return bal.GetDiscovery().GetDst().GetPath()
}

func TestOutboundVirtualIP(t *testing.T) {
	vip := netip.MustParseAddr("240.0.0.7")
	table := newVIPs(map[netip.Addr]string{vip: "web.demo"})
	s := newServer(t, policy.Options{VirtualIPs: []policy.VirtualIPs{table},
		Port: func(host string, port uint16) policy.Port { return policy.Port{Opaque: port == 5432} }})
	c := outbound.NewOutboundPoliciesClient(serve(t, s))

	p, err := c.Get(ctx(t), addrSpec(netip.AddrPortFrom(vip, 8080)))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range backends(t, p, true) {
		if got := dstPath(t, b); got != "web.demo:8080" {
			t.Errorf("dst path %q, want web.demo:8080", got)
		}
	}
	// An opaque port: opaque protocol, same balancer.
	p, err = c.Get(ctx(t), addrSpec(netip.AddrPortFrom(vip, 5432)))
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range backends(t, p, false) {
		if got := dstPath(t, b); got != "web.demo:5432" {
			t.Errorf("dst path %q, want web.demo:5432", got)
		}
	}
	// By authority.
	p, err = c.Get(ctx(t), &outbound.TrafficSpec{Target: &outbound.TrafficSpec_Authority{Authority: "api.demo.:9090"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range backends(t, p, true) {
		if got := dstPath(t, b); got != "api.demo:9090" {
			t.Errorf("dst path %q, want api.demo:9090", got)
		}
	}
}

func TestOutboundEndpointForward(t *testing.T) {
	s := newServer(t, policy.Options{VirtualIPs: []policy.VirtualIPs{newVIPs(map[netip.Addr]string{})}})
	c := outbound.NewOutboundPoliciesClient(serve(t, s))
	for _, ap := range []netip.AddrPort{netip.MustParseAddrPort("10.0.0.5:8080"), netip.MustParseAddrPort("[fd00::1:5]:443")} {
		p, err := c.Get(ctx(t), addrSpec(ap))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range backends(t, p, true) {
			f := b.GetForward()
			if f == nil {
				t.Fatalf("%v: backend %T, want forward", ap, b.GetKind())
			}
			got := netip.AddrPortFrom(ipOf(t, f.GetAddr().GetIp()), uint16(f.GetAddr().GetPort()))
			if got != ap {
				t.Errorf("forward to %v, want %v", got, ap)
			}
		}
	}
}

func ipOf(t *testing.T, ip *pbnet.IPAddress) netip.Addr {
	t.Helper()
	switch v := ip.GetIp().(type) {
	case *pbnet.IPAddress_Ipv4:
		x := v.Ipv4
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	case *pbnet.IPAddress_Ipv6:
		var b [16]byte
		for i := range 8 {
			b[i] = byte(v.Ipv6.GetFirst() >> (56 - 8*i))
			b[8+i] = byte(v.Ipv6.GetLast() >> (56 - 8*i))
		}
		return netip.AddrFrom16(b)
	}
	t.Fatalf("no IP in %v", ip)
	return netip.Addr{}
}

// TestOutboundWatch: the first message comes at once; a VIP that becomes
// one turns the forward into a balancer on the same stream.
func TestOutboundWatch(t *testing.T) {
	table := newVIPs(map[netip.Addr]string{})
	s := newServer(t, policy.Options{VirtualIPs: []policy.VirtualIPs{table}})
	c := outbound.NewOutboundPoliciesClient(serve(t, s))
	vip := netip.MustParseAddr("240.0.0.9")
	st, err := c.Watch(ctx(t), addrSpec(netip.AddrPortFrom(vip, 80)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if backends(t, p, true)[0].GetForward() == nil {
		t.Fatal("first policy is not a forward")
	}
	table.set(vip, "db.demo")
	p, err = st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := dstPath(t, backends(t, p, true)[0]); got != "db.demo:80" {
		t.Errorf("dst path %q, want db.demo:80", got)
	}
}

// registry is what Options.Port reads, and can change.
type registry struct {
	mu      sync.Mutex
	ports   map[uint16]policy.Port
	changed chan struct{}
}

func newRegistry(m map[uint16]policy.Port) *registry {
	return &registry{ports: m, changed: make(chan struct{})}
}

func (r *registry) port(host string, port uint16) policy.Port {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.ports[port]
	p.Changed = []<-chan struct{}{r.changed}
	return p
}

func (r *registry) set(port uint16, p policy.Port) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ports[port] = p
	close(r.changed)
	r.changed = make(chan struct{})
}

// touch wakes watchers without changing anything.
func (r *registry) touch() { r.set(0, policy.Port{}) }

// A Watch follows the registry's opaque marking of the port, and sends
// again only when the policy changed.
func TestOutboundWatchOpaque(t *testing.T) {
	vip := netip.MustParseAddr("240.0.0.7")
	reg := newRegistry(map[uint16]policy.Port{})
	s := newServer(t, policy.Options{VirtualIPs: []policy.VirtualIPs{newVIPs(map[netip.Addr]string{vip: "db.demo"})}, Port: reg.port})
	c := outbound.NewOutboundPoliciesClient(serve(t, s))
	st, err := c.Watch(ctx(t), addrSpec(netip.AddrPortFrom(vip, 5432)))
	if err != nil {
		t.Fatal(err)
	}
	recv := func(wantDetect bool) {
		t.Helper()
		p, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range backends(t, p, wantDetect) {
			if got := dstPath(t, b); got != "db.demo:5432" {
				t.Errorf("dst path %q, want db.demo:5432", got)
			}
		}
	}
	recv(true)
	reg.touch() // no change: nothing sent
	reg.set(5432, policy.Port{Opaque: true})
	recv(false)
	reg.touch()
	reg.set(5432, policy.Port{})
	recv(true)
	// By authority too.
	st, err = c.Watch(ctx(t), &outbound.TrafficSpec{Target: &outbound.TrafficSpec_Authority{Authority: "db.demo:5432"}})
	if err != nil {
		t.Fatal(err)
	}
	recv(true)
	reg.set(5432, policy.Port{Opaque: true})
	recv(false)
}

// checkUndefinedPort checks p is Linkerd's undefined-port policy: opaque,
// one route whose one rule has no backends and a forbidden filter.
func checkUndefinedPort(t *testing.T, p *outbound.OutboundPolicy) {
	t.Helper()
	if p.GetMetadata().GetKind() == nil {
		t.Fatal("missing metadata")
	}
	opq := p.GetProtocol().GetOpaque()
	if opq == nil || len(opq.GetRoutes()) != 1 {
		t.Fatalf("protocol %v, want opaque with one route", p.GetProtocol())
	}
	r := opq.GetRoutes()[0]
	if r.GetMetadata().GetDefault() != "undefined-port" {
		t.Errorf("route metadata %v, want default undefined-port", r.GetMetadata())
	}
	if len(r.GetRules()) != 1 {
		t.Fatalf("%d rules, want 1", len(r.GetRules()))
	}
	rule := r.GetRules()[0]
	if rule.GetBackends().GetEmpty() == nil {
		t.Errorf("distribution %v, want empty", rule.GetBackends())
	}
	if len(rule.GetFilters()) != 1 || rule.GetFilters()[0].GetForbidden() == nil {
		t.Errorf("filters %v, want one forbidden", rule.GetFilters())
	}
}

// A virtual IP's port its service does not declare gets Linkerd's
// undefined-port policy; a Watch moves to and from it as the registry
// does. An authority target keeps its balancer.
func TestOutboundUndefinedPort(t *testing.T) {
	vip := netip.MustParseAddr("240.0.0.7")
	reg := newRegistry(map[uint16]policy.Port{9999: {Undefined: true}})
	s := newServer(t, policy.Options{VirtualIPs: []policy.VirtualIPs{newVIPs(map[netip.Addr]string{vip: "web.demo"})}, Port: reg.port})
	c := outbound.NewOutboundPoliciesClient(serve(t, s))
	p, err := c.Get(ctx(t), addrSpec(netip.AddrPortFrom(vip, 9999)))
	if err != nil {
		t.Fatal(err)
	}
	checkUndefinedPort(t, p)
	p, err = c.Get(ctx(t), &outbound.TrafficSpec{Target: &outbound.TrafficSpec_Authority{Authority: "web.demo:9999"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := dstPath(t, backends(t, p, true)[0]); got != "web.demo:9999" {
		t.Errorf("authority: dst path %q, want web.demo:9999", got)
	}

	st, err := c.Watch(ctx(t), addrSpec(netip.AddrPortFrom(vip, 9999)))
	if err != nil {
		t.Fatal(err)
	}
	if p, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	checkUndefinedPort(t, p)
	reg.set(9999, policy.Port{})
	if p, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := dstPath(t, backends(t, p, true)[0]); got != "web.demo:9999" {
		t.Errorf("dst path %q, want web.demo:9999", got)
	}
	reg.set(9999, policy.Port{Undefined: true})
	if p, err = st.Recv(); err != nil {
		t.Fatal(err)
	}
	checkUndefinedPort(t, p)
}

func TestInboundDefaults(t *testing.T) {
	s := newServer(t, policy.Options{Inbound: policy.Inbound{
		Default: policy.AllAuthenticated,
		Ports:   map[uint16]string{8080: policy.AllUnauthenticated, 9999: policy.Deny},
	}})
	c := inbound.NewInboundServerPoliciesClient(serve(t, s))
	for port, want := range map[uint32]string{8080: policy.AllUnauthenticated, 9999: policy.Deny, 4143: policy.AllAuthenticated} {
		srv, err := c.GetPort(ctx(t), &inbound.PortSpec{Workload: "vm1", Port: port})
		if err != nil {
			t.Fatal(err)
		}
		checkInbound(t, srv, want)
	}
	st, err := c.WatchPort(ctx(t), &inbound.PortSpec{Workload: "vm1", Port: 9999})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	checkInbound(t, srv, policy.Deny)
}

// checkInbound checks srv as linkerd2-proxy's server-policy conversion
// does (protocol, detect timeout, route metadata, authorizations with
// networks and an authentication) and that it is mode.
func checkInbound(t *testing.T, srv *inbound.Server, mode string) {
	t.Helper()
	d := srv.GetProtocol().GetDetect()
	if d == nil || d.GetTimeout() == nil {
		t.Fatal("no detect protocol with a timeout")
	}
	for _, r := range d.GetHttpRoutes() {
		if r.GetMetadata().GetKind() == nil {
			t.Fatal("route without metadata")
		}
	}
	if srv.GetLabels()["name"] != mode || srv.GetLabels()["kind"] != "default" {
		t.Errorf("labels %v, want the default %s", srv.GetLabels(), mode)
	}
	for _, a := range srv.GetAuthorizations() {
		if len(a.GetNetworks()) == 0 || a.GetNetworks()[0].GetNet() == nil {
			t.Fatal("authorization without networks")
		}
		if a.GetAuthentication().GetPermit() == nil {
			t.Fatal("authorization without authentication")
		}
		if md, ok := a.GetMetadata().GetKind().(*meta.Metadata_Default); !ok || md.Default != mode {
			t.Errorf("authorization metadata %v, want default %s", a.GetMetadata(), mode)
		}
	}
	authz := srv.GetAuthorizations()
	switch mode {
	case policy.Deny:
		if len(authz) != 0 {
			t.Errorf("deny has %d authorizations", len(authz))
		}
	case policy.AllUnauthenticated:
		if len(authz) != 1 || authz[0].GetAuthentication().GetUnauthenticated() == nil {
			t.Errorf("all-unauthenticated: %v", authz)
		}
	case policy.AllAuthenticated:
		if len(authz) != 1 || authz[0].GetAuthentication().GetMeshTLS().GetIdentities() == nil {
			t.Errorf("all-authenticated: %v", authz)
		}
	}
}

func TestMalformed(t *testing.T) {
	s := newServer(t, policy.Options{})
	cc := serve(t, s)
	oc := outbound.NewOutboundPoliciesClient(cc)
	ic := inbound.NewInboundServerPoliciesClient(cc)
	for name, spec := range map[string]*outbound.TrafficSpec{
		"no target":     {},
		"no ip":         {Target: &outbound.TrafficSpec_Addr{Addr: &pbnet.TcpAddress{Port: 80}}},
		"port 0":        addrSpec(netip.MustParseAddrPort("10.0.0.1:0")),
		"big port":      {Target: &outbound.TrafficSpec_Addr{Addr: &pbnet.TcpAddress{Ip: policy.IPAddress(netip.MustParseAddr("10.0.0.1")), Port: 70000}}},
		"bad authority": {Target: &outbound.TrafficSpec_Authority{Authority: "web:http"}},
	} {
		if _, err := oc.Get(ctx(t), spec); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Get %s: %v, want InvalidArgument", name, err)
		}
		st, err := oc.Watch(ctx(t), spec)
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("Watch %s: %v, want InvalidArgument", name, err)
		}
	}
	for _, port := range []uint32{0, 65536} {
		if _, err := ic.GetPort(ctx(t), &inbound.PortSpec{Port: port}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("GetPort %d: %v, want InvalidArgument", port, err)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	for _, in := range []policy.Inbound{{Default: "allow"}, {Ports: map[uint16]string{0: policy.Deny}}, {Ports: map[uint16]string{80: ""}}} {
		if _, err := policy.New(policy.Options{Inbound: in}); err == nil {
			t.Errorf("%+v accepted", in)
		}
	}
}
