package policy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/linkerd/linkerd2-proxy-api/go/http_route"
	"github.com/linkerd/linkerd2-proxy-api/go/inbound"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The default inbound authorizations, by Linkerd's names.
const (
	// AllUnauthenticated admits every client, meshed or not.
	AllUnauthenticated = "all-unauthenticated"
	// AllAuthenticated admits only clients with a mesh TLS identity.
	AllAuthenticated = "all-authenticated"
	// Deny admits nobody (but localhost, which the proxy always admits).
	Deny = "deny"
)

// Modes lists the default authorizations.
var Modes = []string{AllUnauthenticated, AllAuthenticated, Deny}

// Inbound is the inbound default: one authorization for every port, and
// per-port exceptions.
type Inbound struct {
	// Default is the authorization of a port Ports does not name; ""
	// means AllUnauthenticated, Linkerd's own default.
	Default string `yaml:"default"`
	// Ports overrides Default per port.
	Ports map[uint16]string `yaml:"ports"`
}

// Check refuses unknown modes and port 0.
func (in Inbound) Check() error {
	if in.Default != "" && !slices.Contains(Modes, in.Default) {
		return fmt.Errorf("inbound default %q: want %s", in.Default, strings.Join(Modes, ", "))
	}
	ports := make([]int, 0, len(in.Ports))
	for p := range in.Ports {
		ports = append(ports, int(p))
	}
	sort.Ints(ports)
	for _, p := range ports {
		if p == 0 {
			return fmt.Errorf("inbound port 0: want 1-65535")
		}
		if m := in.Ports[uint16(p)]; !slices.Contains(Modes, m) {
			return fmt.Errorf("inbound port %d: %q: want %s", p, m, strings.Join(Modes, ", "))
		}
	}
	return nil
}

// Mode is port's authorization.
func (in Inbound) Mode(port uint16) string {
	if m, ok := in.Ports[port]; ok {
		return m
	}
	if in.Default == "" {
		return AllUnauthenticated
	}
	return in.Default
}

// GetPort answers the inbound policy of a port.
func (s *Server) GetPort(_ context.Context, spec *inbound.PortSpec) (*inbound.Server, error) {
	return s.inboundServer(spec)
}

// WatchPort sends the port's policy at once; it does not change while the
// process runs, so the stream then waits for the client to leave.
func (s *Server) WatchPort(spec *inbound.PortSpec, stream grpc.ServerStreamingServer[inbound.Server]) error {
	srv, err := s.inboundServer(spec)
	if err != nil {
		return err
	}
	if err := stream.Send(srv); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (s *Server) inboundServer(spec *inbound.PortSpec) (*inbound.Server, error) {
	if spec.GetPort() == 0 || spec.GetPort() > 65535 {
		return nil, status.Errorf(codes.InvalidArgument, "port %d outside 1-65535", spec.GetPort())
	}
	return InboundServer(s.opts.Inbound.Mode(uint16(spec.GetPort()))), nil
}

// InboundServer is the Server of a default mode, as Linkerd's controller
// sends its default policies: labels {group: "", kind: default, name:
// mode}, HTTP detection (10s) with one default route, and for the
// admitting modes one authorization over every network.
func InboundServer(mode string) *inbound.Server {
	labels := func() map[string]string {
		return map[string]string{"group": "", "kind": "default", "name": mode}
	}
	var authz []*inbound.Authz
	var authn *inbound.Authn
	switch mode {
	case AllUnauthenticated:
		authn = &inbound.Authn{Permit: &inbound.Authn_Unauthenticated{Unauthenticated: &inbound.Authn_PermitUnauthenticated{}}}
	case AllAuthenticated:
		// Any identity: one suffix with no parts matches every name.
		authn = &inbound.Authn{Permit: &inbound.Authn_MeshTLS{MeshTLS: &inbound.Authn_PermitMeshTLS{
			Clients: &inbound.Authn_PermitMeshTLS_Identities{Identities: &inbound.Authn_PermitMeshTLS_PermitClientIdentities{
				Suffixes: []*inbound.IdentitySuffix{{Parts: []string{}}},
			}},
		}}}
	}
	if authn != nil {
		authz = append(authz, &inbound.Authz{
			Networks: []*inbound.Network{
				{Net: &pbnet.IPNetwork{Ip: IPAddress(netip.IPv4Unspecified()), PrefixLen: 0}},
				{Net: &pbnet.IPNetwork{Ip: IPAddress(netip.IPv6Unspecified()), PrefixLen: 0}},
			},
			Authentication: authn,
			Labels:         labels(),
			Metadata:       defaultMeta(mode),
		})
	}
	return &inbound.Server{
		Protocol: &inbound.ProxyProtocol{Kind: &inbound.ProxyProtocol_Detect_{Detect: &inbound.ProxyProtocol_Detect{
			Timeout: durationpb.New(detectTimeout),
			HttpRoutes: []*inbound.HttpRoute{{
				Metadata: defaultMeta("default"),
				Rules: []*inbound.HttpRoute_Rule{{
					Matches: []*http_route.HttpRouteMatch{{
						Path: &http_route.PathMatch{Kind: &http_route.PathMatch_Prefix{Prefix: "/"}},
					}},
				}},
			}},
		}}},
		Authorizations: authz,
		Labels:         labels(),
	}
}
