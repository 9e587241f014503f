// Package policy serves linkerd2-proxy's policy API
// (io.linkerd.proxy.outbound.OutboundPolicies and
// io.linkerd.proxy.inbound.InboundServerPolicies) with defaults, so that a
// standalone proxy — one with no Linkerd policy controller, on bare metal —
// starts, and load-balances through Tributary's Get when the application
// dials a virtual IP. docs/policy.md says what the proxy requires of these
// answers and what is not supported.
//
// Outbound: a target that is a virtual IP (Options.VirtualIPs) gets a
// policy whose one backend is a p2c balancer over Get(host:port) — or, on
// a port its service is not declared with (Options.Port), Linkerd's
// undefined-port policy, which refuses the connection; an authority
// target (host:port) the balancer; any other IP a forward to that
// address, as Linkerd's controller answers for a target it does not know
// (its "egress-fallback"). Inbound: every port gets the configured default
// authorization (all-unauthenticated, all-authenticated or deny).
package policy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/linkerd/linkerd2-proxy-api/go/destination"
	"github.com/linkerd/linkerd2-proxy-api/go/http_route"
	"github.com/linkerd/linkerd2-proxy-api/go/inbound"
	"github.com/linkerd/linkerd2-proxy-api/go/meta"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"github.com/linkerd/linkerd2-proxy-api/go/opaque_route"
	"github.com/linkerd/linkerd2-proxy-api/go/outbound"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// What Linkerd's policy controller sends by default (policy-controller/grpc
// outbound.rs: default_queue_config, default_balancer_config; the detect
// timeout of its fallback policy).
const (
	queueCapacity   = 100
	failfastTimeout = 3 * time.Second
	defaultRTT      = 30 * time.Millisecond
	rttDecay        = 10 * time.Second
	detectTimeout   = 10 * time.Second
)

// VirtualIPs maps a virtual IP to the host it stands for, and a channel
// that closes when that may change. destination.VirtualIPs (the DNS
// interface, a kubernetes source's ClusterIPs) has this method.
type VirtualIPs interface {
	LookupVIP(ip netip.Addr) (host string, changed <-chan struct{}, ok bool)
}

// Options configure a Server.
type Options struct {
	// VirtualIPs are asked in order; the first that knows an IP answers.
	VirtualIPs []VirtualIPs
	// Port, when set, reads what the registry says of host:port: whether
	// it is opaque, whether the service is declared without it, and the
	// channels that close when that may change. Nil: every port is served
	// and detected.
	Port func(host string, port uint16) Port
	// Inbound is the default inbound authorization per port.
	Inbound Inbound
}

// Port is what the registry says of a service's port.
type Port struct {
	// Opaque: no HTTP detection, the policy is opaque.
	Opaque bool
	// Undefined: the host has service rows, none for this port (nor for
	// any port): a virtual IP's target gets Linkerd's undefined-port
	// policy, which refuses every connection.
	Undefined bool
	// Changed close when Opaque or Undefined may change.
	Changed []<-chan struct{}
}

// Server serves both policy services.
type Server struct {
	outbound.UnimplementedOutboundPoliciesServer
	inbound.UnimplementedInboundServerPoliciesServer
	opts Options
}

// New returns a server; register it with Register.
func New(opts Options) (*Server, error) {
	if err := opts.Inbound.Check(); err != nil {
		return nil, err
	}
	return &Server{opts: opts}, nil
}

// Register registers both services on g.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	outbound.RegisterOutboundPoliciesServer(g, s)
	inbound.RegisterInboundServerPoliciesServer(g, s)
}

// Get answers the outbound policy of spec's target.
func (s *Server) Get(_ context.Context, spec *outbound.TrafficSpec) (*outbound.OutboundPolicy, error) {
	p, _, err := s.outboundPolicy(spec)
	return p, err
}

// Watch sends the outbound policy at once, and again whenever the virtual
// IP behind it or the registry rows of its port (opaque, declared) may
// have changed and the policy did.
func (s *Server) Watch(spec *outbound.TrafficSpec, stream grpc.ServerStreamingServer[outbound.OutboundPolicy]) error {
	var last *outbound.OutboundPolicy
	for {
		p, changed, err := s.outboundPolicy(spec)
		if err != nil {
			return err
		}
		if last == nil || !proto.Equal(last, p) {
			if err := stream.Send(p); err != nil {
				return err
			}
			last = p
		}
		if len(changed) == 0 {
			<-stream.Context().Done()
			return nil
		}
		if !waitAny(stream.Context(), changed) {
			return nil
		}
	}
}

// waitAny waits until one of chans closes (true) or ctx ends (false).
func waitAny(ctx context.Context, chans []<-chan struct{}) bool {
	done := make(chan struct{})
	defer close(done)
	woke := make(chan struct{}, 1)
	for _, c := range chans[1:] {
		go func() {
			select {
			case <-c:
				select {
				case woke <- struct{}{}:
				default:
				}
			case <-done:
			}
		}()
	}
	select {
	case <-chans[0]:
		return true
	case <-woke:
		return true
	case <-ctx.Done():
		return false
	}
}

// outboundPolicy is the policy of spec's target, and the channels that
// close when it may change.
func (s *Server) outboundPolicy(spec *outbound.TrafficSpec) (*outbound.OutboundPolicy, []<-chan struct{}, error) {
	switch t := spec.GetTarget().(type) {
	case *outbound.TrafficSpec_Addr:
		ap, err := tcpAddr(t.Addr)
		if err != nil {
			return nil, nil, status.Errorf(codes.InvalidArgument, "target: %v", err)
		}
		var changed []<-chan struct{}
		for _, l := range s.opts.VirtualIPs {
			host, ch, ok := l.LookupVIP(ap.Addr())
			if ch != nil {
				changed = append(changed, ch)
			}
			if ok {
				pt := s.port(host, ap.Port())
				changed = append(changed, pt.Changed...)
				if pt.Undefined {
					return undefinedPort(), changed, nil
				}
				return balanced(host, ap.Port(), pt.Opaque), changed, nil
			}
		}
		return forward(ap), changed, nil
	case *outbound.TrafficSpec_Authority:
		host, port, err := net.SplitHostPort(t.Authority)
		if err != nil {
			host, port = t.Authority, "80"
		}
		host = strings.TrimSuffix(strings.ToLower(host), ".")
		n, perr := strconv.ParseUint(port, 10, 16)
		if host == "" || perr != nil || n == 0 {
			return nil, nil, status.Errorf(codes.InvalidArgument, "authority %q: want host:port", t.Authority)
		}
		pt := s.port(host, uint16(n))
		return balanced(host, uint16(n), pt.Opaque), pt.Changed, nil
	}
	return nil, nil, status.Error(codes.InvalidArgument, "target is required")
}

// tcpAddr converts the proxy's address; the port must be 1-65535.
func tcpAddr(a *pbnet.TcpAddress) (netip.AddrPort, error) {
	if a.GetPort() == 0 || a.GetPort() > 65535 {
		return netip.AddrPort{}, fmt.Errorf("port %d outside 1-65535", a.GetPort())
	}
	var ip netip.Addr
	switch v := a.GetIp().GetIp().(type) {
	case *pbnet.IPAddress_Ipv4:
		ip = netip.AddrFrom4([4]byte{byte(v.Ipv4 >> 24), byte(v.Ipv4 >> 16), byte(v.Ipv4 >> 8), byte(v.Ipv4)})
	case *pbnet.IPAddress_Ipv6:
		var b [16]byte
		for i := range 8 {
			b[i] = byte(v.Ipv6.GetFirst() >> (56 - 8*i))
			b[8+i] = byte(v.Ipv6.GetLast() >> (56 - 8*i))
		}
		ip = netip.AddrFrom16(b).Unmap()
	default:
		return netip.AddrPort{}, fmt.Errorf("no IP")
	}
	return netip.AddrPortFrom(ip, uint16(a.GetPort())), nil
}

// IPAddress converts ip to the API's form.
func IPAddress(ip netip.Addr) *pbnet.IPAddress {
	ip = ip.Unmap()
	if ip.Is4() {
		b := ip.As4()
		return &pbnet.IPAddress{Ip: &pbnet.IPAddress_Ipv4{Ipv4: uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])}}
	}
	b := ip.As16()
	var first, last uint64
	for i := range 8 {
		first = first<<8 | uint64(b[i])
		last = last<<8 | uint64(b[8+i])
	}
	return &pbnet.IPAddress{Ip: &pbnet.IPAddress_Ipv6{Ipv6: &pbnet.IPv6{First: first, Last: last}}}
}

func defaultMeta(name string) *meta.Metadata {
	return &meta.Metadata{Kind: &meta.Metadata_Default{Default: name}}
}

func queue() *outbound.Queue {
	return &outbound.Queue{Capacity: queueCapacity, FailfastTimeout: durationpb.New(failfastTimeout)}
}

// port asks Options.Port about host:port.
func (s *Server) port(host string, port uint16) Port {
	if s.opts.Port == nil {
		return Port{}
	}
	return s.opts.Port(host, port)
}

// balanced is the policy of a service: one backend, a p2c balancer (peak
// EWMA) over Get(host:port).
func balanced(host string, port uint16, opaque bool) *outbound.OutboundPolicy {
	authority := net.JoinHostPort(host, strconv.Itoa(int(port)))
	backend := &outbound.Backend{
		Metadata: defaultMeta("service"),
		Queue:    queue(),
		Kind: &outbound.Backend_Balancer{Balancer: &outbound.Backend_BalanceP2C{
			Discovery: &outbound.Backend_EndpointDiscovery{Kind: &outbound.Backend_EndpointDiscovery_Dst{
				Dst: &outbound.Backend_EndpointDiscovery_DestinationGet{Path: authority},
			}},
			Load: &outbound.Backend_BalanceP2C_PeakEwma_{PeakEwma: &outbound.Backend_BalanceP2C_PeakEwma{
				DefaultRtt: durationpb.New(defaultRTT),
				Decay:      durationpb.New(rttDecay),
			}},
		}},
	}
	return policyFor("service", backend, opaque)
}

// undefinedPort is the policy of a virtual IP's port its service does not
// declare, as Linkerd's controller answers a Service port that does not
// exist (policy-controller/grpc/src/outbound.rs, undefined_port): opaque,
// one route "undefined-port" with no backends and a forbidden filter, so
// the proxy refuses the connection at once. Linkerd names the Service in
// the policy metadata; Tributary has no resource to name and says
// "undefined-port" there too.
func undefinedPort() *outbound.OutboundPolicy {
	return &outbound.OutboundPolicy{
		Metadata: defaultMeta("undefined-port"),
		Protocol: &outbound.ProxyProtocol{Kind: &outbound.ProxyProtocol_Opaque_{Opaque: &outbound.ProxyProtocol_Opaque{
			Routes: []*outbound.OpaqueRoute{{
				Metadata: defaultMeta("undefined-port"),
				Rules: []*outbound.OpaqueRoute_Rule{{
					Backends: &outbound.OpaqueRoute_Distribution{Kind: &outbound.OpaqueRoute_Distribution_Empty_{
						Empty: &outbound.OpaqueRoute_Distribution_Empty{},
					}},
					Filters: []*outbound.OpaqueRoute_Filter{{Kind: &outbound.OpaqueRoute_Filter_Forbidden{
						Forbidden: &opaque_route.Forbidden{},
					}}},
				}},
			}},
		}}},
	}
}

// forward is the policy of an address that is no service: every
// connection to it goes to it, as Linkerd's egress-fallback.
func forward(ap netip.AddrPort) *outbound.OutboundPolicy {
	backend := &outbound.Backend{
		Metadata: defaultMeta("forward"),
		Queue:    queue(),
		Kind: &outbound.Backend_Forward{Forward: &destination.WeightedAddr{
			Addr:   &pbnet.TcpAddress{Ip: IPAddress(ap.Addr()), Port: uint32(ap.Port())},
			Weight: 1,
		}},
	}
	return policyFor("forward", backend, false)
}

// policyFor is a policy with parent metadata name sending everything to
// backend: opaque, or HTTP detection with one default route per HTTP
// version and an opaque route for what is not HTTP.
func policyFor(name string, backend *outbound.Backend, opaque bool) *outbound.OutboundPolicy {
	opq := &outbound.ProxyProtocol_Opaque{Routes: []*outbound.OpaqueRoute{{
		Metadata: defaultMeta("opaq"),
		Rules: []*outbound.OpaqueRoute_Rule{{
			Backends: &outbound.OpaqueRoute_Distribution{Kind: &outbound.OpaqueRoute_Distribution_FirstAvailable_{
				FirstAvailable: &outbound.OpaqueRoute_Distribution_FirstAvailable{
					Backends: []*outbound.OpaqueRoute_RouteBackend{{Backend: backend}},
				},
			}},
		}},
	}}}
	p := &outbound.OutboundPolicy{Metadata: defaultMeta(name)}
	if opaque {
		p.Protocol = &outbound.ProxyProtocol{Kind: &outbound.ProxyProtocol_Opaque_{Opaque: opq}}
		return p
	}
	route := func() []*outbound.HttpRoute {
		return []*outbound.HttpRoute{{
			Metadata: defaultMeta("http"),
			Rules: []*outbound.HttpRoute_Rule{{
				Matches: []*http_route.HttpRouteMatch{{
					Path: &http_route.PathMatch{Kind: &http_route.PathMatch_Prefix{Prefix: "/"}},
				}},
				Backends: &outbound.HttpRoute_Distribution{Kind: &outbound.HttpRoute_Distribution_FirstAvailable_{
					FirstAvailable: &outbound.HttpRoute_Distribution_FirstAvailable{
						Backends: []*outbound.HttpRoute_RouteBackend{{Backend: backend}},
					},
				}},
			}},
		}}
	}
	p.Protocol = &outbound.ProxyProtocol{Kind: &outbound.ProxyProtocol_Detect_{Detect: &outbound.ProxyProtocol_Detect{
		Timeout: durationpb.New(detectTimeout),
		Opaque:  opq,
		Http1:   &outbound.ProxyProtocol_Http1{Routes: route()},
		Http2:   &outbound.ProxyProtocol_Http2{Routes: route()},
	}}}
	return p
}
