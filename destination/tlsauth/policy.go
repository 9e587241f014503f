package tlsauth

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The APIs a peer is authorized for. Every gRPC method and admin path maps
// to one of them (MethodAPI).
const (
	// APIDestination is Linkerd's Destination service (Get and
	// GetProfile) and its policy API (OutboundPolicies,
	// InboundServerPolicies).
	APIDestination = "destination"
	// APIAdmin is the admin HTTP endpoints (with tls.admin) and gRPC
	// server reflection on the API port.
	APIAdmin = "admin"
	// APIRegistration is reserved for the registration API (proto package
	// tributary.registration.*), so that its access list can be written
	// today and is enforced the day it lands.
	APIRegistration = "registration"
	// APIXDS is Envoy's aggregated discovery service (destination/xds).
	APIXDS = "xds"
)

// methodAPIs maps gRPC full-method prefixes to APIs; "" is public: no
// client certificate needed (health checks, which probes make without one).
var methodAPIs = []struct{ prefix, api string }{
	{"/io.linkerd.proxy.destination.Destination/", APIDestination},
	// linkerd2-proxy's policy API (destination/policy): the proxies
	// that may discover may fetch their policies.
	{"/io.linkerd.proxy.outbound.OutboundPolicies/", APIDestination},
	{"/io.linkerd.proxy.inbound.InboundServerPolicies/", APIDestination},
	{"/grpc.health.v1.Health/", ""},
	{"/grpc.reflection.v1.ServerReflection/", APIAdmin},
	{"/grpc.reflection.v1alpha.ServerReflection/", APIAdmin},
	{"/tributary.registration.", APIRegistration},
	{"/envoy.service.discovery.v3.AggregatedDiscoveryService/", APIXDS},
}

// MethodAPI returns the API a gRPC full method name ("/pkg.Service/Method")
// belongs to; "" for a public method. ok is false for a method no API
// claims: the interceptor refuses it, so a service registered on the
// server without an entry here fails closed.
func MethodAPI(fullMethod string) (api string, ok bool) {
	for _, m := range methodAPIs {
		if strings.HasPrefix(fullMethod, m.prefix) {
			return m.api, true
		}
	}
	return "", false
}

// idPattern is a compiled SPIFFE ID pattern (CheckSPIFFEIDPattern
// has the syntax): a literal trust domain and path segments, where "*"
// matches exactly one segment and a final "**" one or more.
type idPattern struct {
	raw  string
	td   spiffeid.TrustDomain
	segs []string
}

func parsePattern(s string) (idPattern, error) {
	if err := CheckSPIFFEIDPattern(s); err != nil {
		return idPattern{}, err
	}
	td, path, _ := strings.Cut(strings.TrimPrefix(s, "spiffe://"), "/")
	return idPattern{raw: s, td: spiffeid.RequireTrustDomainFromString(td), segs: strings.Split(path, "/")}, nil
}

func (p idPattern) match(id spiffeid.ID) bool {
	if id.TrustDomain() != p.td || id.Path() == "" {
		return false
	}
	segs := strings.Split(id.Path()[1:], "/")
	for i, ps := range p.segs {
		if ps == "**" {
			return len(segs) > i
		}
		if i >= len(segs) || ps != "*" && ps != segs[i] {
			return false
		}
	}
	return len(segs) == len(p.segs)
}

// access is one API's access list.
type access struct {
	tds []spiffeid.TrustDomain
	ids []idPattern
	// inherit: the list is empty, so the default trust domains apply.
	inherit bool
}

// policy decides who may call what.
type policy struct {
	// defaults are tls.trust_domains; empty means the server's own.
	defaults []spiffeid.TrustDomain
	apis     map[string]access
}

func newPolicy(c *Config) (policy, error) {
	p := policy{apis: map[string]access{}}
	var err error
	if p.defaults, err = trustDomains(c.TrustDomains); err != nil {
		return p, fmt.Errorf("trust_domains: %w", err)
	}
	for api, a := range map[string]APIAccess{
		APIDestination:  c.Authorize.Destination,
		APIAdmin:        c.Authorize.Admin,
		APIRegistration: c.Authorize.Registration,
		APIXDS:          c.Authorize.XDS,
	} {
		var acc access
		if acc.tds, err = trustDomains(a.TrustDomains); err != nil {
			return p, fmt.Errorf("authorize.%s.trust_domains: %w", api, err)
		}
		for _, s := range a.IDs {
			pat, err := parsePattern(s)
			if err != nil {
				return p, fmt.Errorf("authorize.%s.ids: %w", api, err)
			}
			acc.ids = append(acc.ids, pat)
		}
		acc.inherit = len(acc.tds) == 0 && len(acc.ids) == 0
		p.apis[api] = acc
	}
	return p, nil
}

func trustDomains(names []string) ([]spiffeid.TrustDomain, error) {
	out := make([]spiffeid.TrustDomain, 0, len(names))
	for _, n := range names {
		td, err := spiffeid.TrustDomainFromString(n)
		if err != nil {
			return nil, err
		}
		out = append(out, td)
	}
	return out, nil
}

// needsOwnTrustDomain reports whether some API falls back to the server's
// own trust domain.
func (p policy) needsOwnTrustDomain() bool {
	if len(p.defaults) > 0 {
		return false
	}
	for _, a := range p.apis {
		if a.inherit {
			return true
		}
	}
	return false
}

// allowed reports whether id may call api; own is the trust domain of the
// server's own SPIFFE ID (zero if it has none).
func (p policy) allowed(api string, id spiffeid.ID, own spiffeid.TrustDomain) bool {
	a, ok := p.apis[api]
	if !ok {
		return false
	}
	tds := a.tds
	if a.inherit {
		tds = p.defaults
		if len(tds) == 0 && !own.IsZero() {
			tds = []spiffeid.TrustDomain{own}
		}
	}
	for _, td := range tds {
		if id.MemberOf(td) {
			return true
		}
	}
	for _, pat := range a.ids {
		if pat.match(id) {
			return true
		}
	}
	return false
}
