package xds

import (
	"slices"
	"strconv"
	"strings"
	"sync"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// The resource types served, by type URL.
const (
	TypeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	TypeRoute    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	TypeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// kind indexes the four types.
type kind int

const (
	kindListener kind = iota
	kindRoute
	kindCluster
	kindEndpoint
	numKinds
)

var typeURLs = [numKinds]string{TypeListener, TypeRoute, TypeCluster, TypeEndpoint}

// kindNames label metrics.
var kindNames = [numKinds]string{"lds", "rds", "cds", "eds"}

func kindOf(typeURL string) (kind, bool) {
	for k, u := range typeURLs {
		if u == typeURL {
			return kind(k), true
		}
	}
	return 0, false
}

// fullState: a SotW response of these types carries every resource the
// client subscribes to (a resource left out is deleted); for the others it
// may carry only some (xDS protocol, "Knowing When a Requested Resource
// Does Not Exist").
func (k kind) fullState() bool { return k == kindListener || k == kindCluster }

// IdentityMetadataKey is the filter_metadata key under which an endpoint's
// identity and labels are given: {"tributary": {"identity": "spiffe://…",
// "server_name": "…", "labels": {"k": "v"}}}.
const IdentityMetadataKey = "tributary"

// routerFilter is the HTTP router filter's name and its typed config, the
// one filter an API listener for gRPC needs.
const routerFilterName = "envoy.filters.http.router"

// view is what an authority serves to clients of one zone at one registry
// version, built once per change by the fan-out engine and shared by every
// stream; its resources are built on first use, once.
type view struct {
	name      string // the canonical authority, host:port: every resource's name
	version   uint64
	exists    bool
	endpoints []*discovery.Endpoint // served (federation rules applied), by address
	// backups are the failover tiers after the served one, each as it
	// would serve on its own (discovery.Federation.Backups): lower
	// priorities, for clients that cannot reach any served endpoint.
	backups [][]*discovery.Endpoint
	zone    string // the clients' zone: decides the priorities

	// endpointVersion is the ClusterLoadAssignment's version, "r" and the
	// registry version, formatted once.
	endpointVersion string

	// res are the view's resources, built and marshalled on first use,
	// once, and shared by every stream.
	res [numKinds]builtResource
}

type builtResource struct {
	once sync.Once
	any  *anypb.Any
	wire []byte // any, marshalled
}

// build reads the view of key's authority (members: it and its aliases).
func (s *Server) build(snap *cache.Snapshot, ws memdb.WatchSet, a discovery.Authority, zone string, members []discovery.Authority) (*view, uint64) {
	v := &view{name: a.String(), zone: zone}
	var all []*discovery.Endpoint
	for _, m := range members {
		st := snap.Service(ws, m)
		v.version = max(v.version, st.Version)
		v.exists = v.exists || st.Exists
		all = append(all, st.Endpoints...)
	}
	served := s.fed.Resolve(a, all)
	v.endpoints = discovery.PreferZone(served, zone)
	for _, b := range s.fed.Backups(a, all, served) {
		v.backups = append(v.backups, discovery.PreferZone(b, zone))
	}
	v.exists = v.exists || len(v.endpoints) > 0
	v.endpointVersion = "r" + strconv.FormatUint(v.version, 10)
	return v, v.version
}

// resourceVersion is what a client holding this view's resource of kind k
// holds: equal strings, equal resources. Listener, route and cluster depend
// only on the name and the server's settings; the endpoints on the
// registry version.
func (v *view) resourceVersion(k kind, s *Server) string {
	if !v.exists {
		return ""
	}
	if k == kindEndpoint {
		return v.endpointVersion
	}
	return s.staticVersion
}

// resource returns v's resource of kind k, as an Any and marshalled.
// Callers share both: they must not modify them.
func (v *view) resource(k kind, s *Server) (*anypb.Any, []byte) {
	r := &v.res[k]
	r.once.Do(func() {
		switch k {
		case kindListener:
			r.any = mustAny(listener(v.name))
		case kindRoute:
			r.any = mustAny(routeConfig(v.name))
		case kindCluster:
			r.any = mustAny(s.cluster(v.name))
		default:
			r.any = mustAny(loadAssignment(v.name, append([][]*discovery.Endpoint{v.endpoints}, v.backups...), v.zone))
		}
		r.wire = anyWire(r.any)
	})
	return r.any, r.wire
}

// emptyAssignment is the ClusterLoadAssignment of a service that no longer
// exists, sent in SotW to a client that held endpoints for it.
func emptyAssignment(name string) []byte {
	return anyWire(mustAny(&endpointpb.ClusterLoadAssignment{ClusterName: name}))
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic("xds: marshal " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return a
}

// adsSource is "fetch this over the same ADS stream".
func adsSource() *corepb.ConfigSource {
	return &corepb.ConfigSource{
		ResourceApiVersion:    corepb.ApiVersion_V3,
		ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}},
	}
}

// listener is the API listener a proxyless gRPC client asks for when it
// dials xds:///name: an HTTP connection manager whose routes come over RDS
// under the same name.
func listener(name string) *listenerpb.Listener {
	hcm := &hcmpb.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: name,
		}},
		HttpFilters: []*hcmpb.HttpFilter{{
			Name:       routerFilterName,
			ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerpb.Router{})},
		}},
	}
	return &listenerpb.Listener{
		Name:        name,
		ApiListener: &listenerpb.ApiListener{ApiListener: mustAny(hcm)},
	}
}

// routeConfig sends every request for name to the cluster of the same name.
func routeConfig(name string) *routepb.RouteConfiguration {
	return &routepb.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routepb.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*routepb.Route{{
				Match: &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: ""}},
				Action: &routepb.Route_Route{Route: &routepb.RouteAction{
					ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: name},
				}},
			}},
		}},
	}
}

// cluster is an EDS cluster over ADS, round robin, with the configured
// upstream TLS.
func (s *Server) cluster(name string) *clusterpb.Cluster {
	c := &clusterpb.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
		EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		LbPolicy:             clusterpb.Cluster_ROUND_ROBIN,
	}
	if ts := s.upstreamTLS(); ts != nil {
		c.TransportSocket = &corepb.TransportSocket{
			Name:       "envoy.transport_sockets.tls",
			ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(ts)},
		}
	}
	return c
}

// upstreamTLS is the cluster's UpstreamTlsContext (nil: plaintext), from
// xds.upstream_tls: SDS secrets (Envoy with the SPIRE agent's SDS API) or
// certificate provider instances (proxyless gRPC's bootstrap
// certificate_providers). The peer must present a SPIFFE ID of the
// configured trust domain.
func (s *Server) upstreamTLS() *tlspb.UpstreamTlsContext {
	t := s.settings.UpstreamTLS
	if t == nil {
		return nil
	}
	var san []*tlspb.SubjectAltNameMatcher
	for _, td := range t.TrustDomains {
		san = append(san, &tlspb.SubjectAltNameMatcher{
			SanType: tlspb.SubjectAltNameMatcher_URI,
			Matcher: &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: "spiffe://" + td + "/"}},
		})
	}
	common := &tlspb.CommonTlsContext{}
	switch t.Mode {
	case TLSModeSDS:
		sds := func(name string) *tlspb.SdsSecretConfig {
			return &tlspb.SdsSecretConfig{Name: name, SdsConfig: &corepb.ConfigSource{
				ResourceApiVersion: corepb.ApiVersion_V3,
				ConfigSourceSpecifier: &corepb.ConfigSource_ApiConfigSource{ApiConfigSource: &corepb.ApiConfigSource{
					ApiType:             corepb.ApiConfigSource_GRPC,
					TransportApiVersion: corepb.ApiVersion_V3,
					GrpcServices: []*corepb.GrpcService{{TargetSpecifier: &corepb.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corepb.GrpcService_EnvoyGrpc{ClusterName: t.SDSCluster},
					}}},
				}},
			}}
		}
		common.TlsCertificateSdsSecretConfigs = []*tlspb.SdsSecretConfig{sds(t.Certificate)}
		common.ValidationContextType = &tlspb.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlspb.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlspb.CertificateValidationContext{MatchTypedSubjectAltNames: san},
				ValidationContextSdsSecretConfig: sds(t.Validation),
			},
		}
	default: // certificate_provider
		// gRPC reads match_subject_alt_names (matched against every SAN),
		// not the typed matchers Envoy prefers (grpc-go xdsresource,
		// unmarshal_cds.go); a spiffe:// prefix only matches a URI SAN.
		var untyped []*matcherpb.StringMatcher
		for _, m := range san {
			untyped = append(untyped, m.GetMatcher())
		}
		common.TlsCertificateProviderInstance = &tlspb.CertificateProviderPluginInstance{InstanceName: t.Certificate}
		common.ValidationContextType = &tlspb.CommonTlsContext_ValidationContext{
			ValidationContext: &tlspb.CertificateValidationContext{
				CaCertificateProviderInstance: &tlspb.CertificateProviderPluginInstance{InstanceName: t.Validation},
				//lint:ignore SA1019 gRPC reads only this field (see above).
				MatchSubjectAltNames: untyped,
			},
		}
	}
	return &tlspb.UpstreamTlsContext{CommonTlsContext: common}
}

// loadAssignment maps the served endpoints and the backup tiers after
// them (tiers[0] is what is served) to a ClusterLoadAssignment: one
// LocalityLbEndpoints per (tier, zone). Within a tier the client's own zone
// comes first and every other zone after it (one level when the client's
// zone is unknown or no endpoint of the tier is in it); the tiers follow
// one another. Priorities are these levels numbered from 0 without gaps
// (gRPC rejects a gap), so gRPC's priority policy and Envoy use the local
// zone of the served tier while it has a ready endpoint, then its other
// zones, then the next tier. A locality's weight is the sum of its
// endpoints' weights.
func loadAssignment(name string, tiers [][]*discovery.Endpoint, clientZone string) *endpointpb.ClusterLoadAssignment {
	cla := &endpointpb.ClusterLoadAssignment{ClusterName: name}
	var priority uint32
	for _, eps := range tiers {
		if len(eps) == 0 {
			continue
		}
		local := clientZone != "" && slices.ContainsFunc(eps, func(e *discovery.Endpoint) bool { return e.Zone == clientZone })
		others := false
		byZone := map[string]*endpointpb.LocalityLbEndpoints{}
		var zones []string
		for _, e := range eps {
			l := byZone[e.Zone]
			if l == nil {
				l = &endpointpb.LocalityLbEndpoints{Locality: &corepb.Locality{Zone: e.Zone}, Priority: priority}
				if local && e.Zone != clientZone {
					l.Priority, others = priority+1, true
				}
				byZone[e.Zone] = l
				zones = append(zones, e.Zone)
			}
			l.LbEndpoints = append(l.LbEndpoints, lbEndpoint(e))
		}
		slices.SortFunc(zones, func(a, b string) int {
			pa, pb := byZone[a].Priority, byZone[b].Priority
			if pa != pb {
				return int(pa) - int(pb)
			}
			return strings.Compare(a, b)
		})
		for _, z := range zones {
			l := byZone[z]
			var w uint64
			for _, e := range l.LbEndpoints {
				w += uint64(e.LoadBalancingWeight.GetValue())
			}
			l.LoadBalancingWeight = wrapperspb.UInt32(uint32(min(w, 1<<31))) // gRPC caps a priority's total at 2^32-1
			cla.Endpoints = append(cla.Endpoints, l)
		}
		priority++
		if others {
			priority++
		}
	}
	return cla
}

func lbEndpoint(e *discovery.Endpoint) *endpointpb.LbEndpoint {
	ep := &endpointpb.LbEndpoint{
		HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{
			Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
				Address:       e.Addr.Addr().Unmap().WithZone("").String(),
				PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: uint32(e.Addr.Port())},
			}}},
		}},
		HealthStatus:        healthStatus(e.Health),
		LoadBalancingWeight: wrapperspb.UInt32(e.EffectiveWeight()),
	}
	if e.Identity.Kind != discovery.IdentityNone || len(e.Labels) > 0 {
		f := map[string]*structpb.Value{}
		if e.Identity.Kind != discovery.IdentityNone {
			f["identity"] = structpb.NewStringValue(e.Identity.Name)
			f["server_name"] = structpb.NewStringValue(e.Identity.ServerName)
		}
		if len(e.Labels) > 0 {
			l := make(map[string]*structpb.Value, len(e.Labels))
			for k, v := range e.Labels {
				l[k] = structpb.NewStringValue(v)
			}
			f["labels"] = structpb.NewStructValue(&structpb.Struct{Fields: l})
		}
		ep.Metadata = &corepb.Metadata{FilterMetadata: map[string]*structpb.Struct{IdentityMetadataKey: {Fields: f}}}
	}
	return ep
}

// healthStatus: passing and warning (degraded but serving, which Linkerd
// serves too) are HEALTHY, unknown is UNKNOWN (both receive traffic in
// Envoy and gRPC), critical is UNHEALTHY — present only when the panic
// threshold keeps every endpoint in the view.
func healthStatus(h discovery.Health) corepb.HealthStatus {
	switch h {
	case discovery.HealthPassing, discovery.HealthWarning:
		return corepb.HealthStatus_HEALTHY
	case discovery.HealthCritical:
		return corepb.HealthStatus_UNHEALTHY
	default:
		return corepb.HealthStatus_UNKNOWN
	}
}
