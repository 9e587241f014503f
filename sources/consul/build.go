package consul

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tributary-mesh/tributary/discovery"
)

// Metric labels every endpoint carries (besides the zone and source labels
// Tributary sets itself). Kept to three: they multiply proxy metric series.
const (
	LabelService    = "consul_service"
	LabelDatacenter = "consul_dc"
	LabelNode       = "consul_node"
)

// problem is an instance that could not become an endpoint.
type problem struct {
	instance string // node/service-id
	reason   string
}

func (p problem) String() string { return p.instance + ": " + p.reason }

// builder turns a health answer into a group. It is immutable once the
// source has bootstrapped, so fetch goroutines share it.
type builder struct {
	s            *settings
	trustDomains map[string]string // datacenter → trust domain ("" = none known)
}

// groupKey is the key of a Consul service's group.
func groupKey(dc, service string) string { return dc + "/" + service }

// build returns the group of one service in one datacenter from the
// instances Consul returned, and the instances it had to leave out.
//
// Each instance becomes an endpoint of the service's authority and of one
// subset authority per eligible tag. Critical instances are kept with
// HealthCritical: eviction happens on read, so recovery is instant.
func (b *builder) build(dc, service string, entries []*api.ServiceEntry) (discovery.Group, []problem) {
	g := discovery.Group{Key: groupKey(dc, service)}
	if len(entries) == 0 && b.s.instFilt == "" && !b.s.connect {
		// A Consul service exists while it has an instance: with none, it
		// was deregistered (the catalog's list says so next). Withdraw.
		return g, nil
	}
	var problems []problem
	byAuth := map[discovery.Authority][]discovery.Endpoint{}
	if !b.s.authorityPort {
		// The service exists even when no instance is served (all filtered
		// out or failing): exists, no endpoints.
		if a, err := render(b.s.authority, b.nameData(dc, service, "", 0)); err == nil {
			byAuth[a] = nil
		}
	}
	for _, e := range entries {
		if e == nil || e.Service == nil || e.Node == nil {
			problems = append(problems, problem{instance: "?", reason: "incomplete entry (no node or service)"})
			continue
		}
		if !hasAllTags(e.Service.Tags, b.s.tags) {
			continue
		}
		ep, err := b.endpoint(dc, e)
		if err != nil {
			problems = append(problems, problem{instance: e.Node.Node + "/" + e.Service.ID, reason: err.Error()})
			continue
		}
		a, err := render(b.s.authority, b.nameData(dc, service, "", e.Service.Port))
		if err != nil {
			problems = append(problems, problem{instance: e.Node.Node + "/" + e.Service.ID, reason: "naming.authority: " + err.Error()})
			continue
		}
		byAuth[a] = append(byAuth[a], ep)
		if b.s.tagAuthority == nil {
			continue
		}
		for _, tag := range uniqueTags(e.Service.Tags) {
			if !subsetTag.MatchString(tag) || !b.s.allTags && !b.s.subsetTags[tag] {
				continue
			}
			ta, err := render(b.s.tagAuthority, b.nameData(dc, service, tag, e.Service.Port))
			if err != nil || ta == a {
				continue // a tag that cannot be part of a name has no subset
			}
			byAuth[ta] = append(byAuth[ta], ep)
		}
	}
	for a, eps := range byAuth {
		g.Services = append(g.Services, discovery.Service{Authority: a, Endpoints: dedupe(eps)})
	}
	slices.SortFunc(g.Services, func(x, y discovery.Service) int {
		return cmp.Or(strings.Compare(x.Authority.Host, y.Authority.Host), cmp.Compare(x.Authority.Port, y.Authority.Port))
	})
	return g, problems
}

func (b *builder) nameData(dc, service, tag string, port int) nameData {
	return nameData{
		Service:    service,
		Datacenter: dc,
		Namespace:  cmp.Or(b.s.api.Namespace, "default"),
		Partition:  cmp.Or(b.s.api.Partition, "default"),
		Tag:        tag,
		Port:       port,
	}
}

// endpoint maps one instance.
func (b *builder) endpoint(dc string, e *api.ServiceEntry) (discovery.Endpoint, error) {
	svc := e.Service
	host := svc.Address
	if host == "" {
		host = e.Node.Address
	}
	if host == "" {
		return discovery.Endpoint{}, fmt.Errorf("no address (neither the service nor node %q has one)", e.Node.Node)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return discovery.Endpoint{}, fmt.Errorf("address %q is not an IP address (hostnames are not supported: the destination API carries IPs)", host)
	}
	if svc.Port < 1 || svc.Port > math.MaxUint16 {
		return discovery.Endpoint{}, fmt.Errorf("port %d is not routable (want 1 to 65535)", svc.Port)
	}
	health := b.health(e.Checks)
	ep := discovery.Endpoint{
		Addr:     netip.AddrPortFrom(ip.Unmap(), uint16(svc.Port)),
		Health:   health,
		Weight:   weight(svc.Weights, health),
		Zone:     b.zone(e),
		Identity: b.identity(dc, svc),
		Labels: map[string]string{
			LabelService:    svc.Service,
			LabelDatacenter: dc,
			LabelNode:       e.Node.Node,
		},
	}
	return ep, nil
}

// health folds an instance's checks (its own and its node's) into one
// state: any critical check, a maintenance check or a status Consul does
// not define evicts; a warning evicts unless warning_is_healthy; no checks
// at all is unknown (served, as Consul's DNS serves it).
func (b *builder) health(checks api.HealthChecks) discovery.Health {
	if len(checks) == 0 {
		return discovery.HealthUnknown
	}
	worst := discovery.HealthPassing
	for _, c := range checks {
		if c == nil {
			continue
		}
		if c.CheckID == api.NodeMaint || strings.HasPrefix(c.CheckID, api.ServiceMaintPrefix) {
			return discovery.HealthCritical
		}
		switch c.Status {
		case api.HealthPassing:
		case api.HealthWarning:
			worst = discovery.HealthWarning
		default: // critical, maintenance, or unknown to us
			return discovery.HealthCritical
		}
	}
	if worst == discovery.HealthWarning && !b.s.warningIsHealthy {
		return discovery.HealthCritical
	}
	return worst
}

// weight scales Consul's relative weights (default 1) so that Consul's 1 is
// Tributary's DefaultWeight and Consul endpoints weigh as much as any other
// source's. A warning weight of 0 becomes the smallest weight, 1: almost no
// traffic, as an SRV weight of 0 gets.
func weight(w api.AgentWeights, h discovery.Health) uint32 {
	v := w.Passing
	if h == discovery.HealthWarning {
		v = w.Warning
	}
	if v <= 0 {
		if h == discovery.HealthWarning && w.Warning == 0 && w.Passing > 0 {
			return 1
		}
		v = 1
	}
	return uint32(min(uint64(v)*discovery.DefaultWeight, math.MaxUint32))
}

// zone reads the configured metadata keys; the service's wins.
func (b *builder) zone(e *api.ServiceEntry) string {
	if k := b.s.zoneService; k != "" {
		if z := e.Service.Meta[k]; z != "" {
			return z
		}
	}
	if k := b.s.zoneNode; k != "" {
		return e.Node.Meta[k]
	}
	return ""
}

// identity is the Connect identity an instance presents: its own service's
// for a Connect-native instance, the destination service's for a sidecar
// proxy. None for anything else, and none when the datacenter's trust
// domain is unknown: an identity is never guessed.
func (b *builder) identity(dc string, svc *api.AgentService) discovery.Identity {
	var name string
	switch {
	case svc.Connect != nil && svc.Connect.Native:
		name = svc.Service
	case svc.Kind == api.ServiceKindConnectProxy && svc.Proxy != nil && svc.Proxy.DestinationServiceName != "":
		name = svc.Proxy.DestinationServiceName
	default:
		return discovery.Identity{}
	}
	td := b.trustDomains[dc]
	if td == "" {
		return discovery.Identity{}
	}
	id, sni, ok := connectIdentity(td, cmp.Or(svc.Namespace, b.s.api.Namespace), cmp.Or(svc.Partition, b.s.api.Partition), dc, name)
	if !ok {
		return discovery.Identity{}
	}
	return discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: id, ServerName: sni}
}

// connectIdentity builds Consul's SPIFFE ID for a service and the TLS
// server name Consul's own mesh uses for it (connect.ServiceSNI):
//
//	spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>     <service>.<ns>.<dc>.internal.<td>
//	spiffe://<td>/ap/<ap>/ns/<ns>/dc/<dc>/svc/<s>   <s>.<ns>.<ap>.<dc>.internal-v1.<td>
func connectIdentity(trustDomain, ns, partition, dc, service string) (id, sni string, ok bool) {
	ns = cmp.Or(ns, "default")
	partition = cmp.Or(partition, "default")
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return "", "", false
	}
	segments := []string{"ns", ns, "dc", dc, "svc", service}
	if partition != "default" {
		segments = append([]string{"ap", partition}, segments...)
	}
	sid, err := spiffeid.FromSegments(td, segments...)
	if err != nil {
		return "", "", false
	}
	if partition == "default" {
		sni = strings.Join([]string{service, ns, dc, "internal", td.Name()}, ".")
	} else {
		sni = strings.Join([]string{service, ns, partition, dc, "internal-v1", td.Name()}, ".")
	}
	return sid.String(), strings.ToLower(sni), true
}

func hasAllTags(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func uniqueTags(tags []string) []string {
	if len(tags) < 2 {
		return tags
	}
	out := slices.Clone(tags)
	slices.Sort(out)
	return slices.Compact(out)
}

// dedupe sorts endpoints by address and keeps one per address: the
// healthiest (two registrations of one address, one of them failing, still
// reach a serving process), then the first.
func dedupe(eps []discovery.Endpoint) []discovery.Endpoint {
	if len(eps) == 0 {
		return nil
	}
	slices.SortStableFunc(eps, func(a, b discovery.Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(severity(a.Health), severity(b.Health)))
	})
	return slices.CompactFunc(eps, func(a, b discovery.Endpoint) bool { return a.Addr == b.Addr })
}

func severity(h discovery.Health) int {
	switch h {
	case discovery.HealthPassing:
		return 0
	case discovery.HealthUnknown:
		return 1
	case discovery.HealthWarning:
		return 2
	}
	return 3
}

// groupsEqual reports whether two groups carry the same content.
func groupsEqual(a, b discovery.Group) bool {
	return a.Key == b.Key && slices.EqualFunc(a.Services, b.Services, func(x, y discovery.Service) bool {
		return x.Authority == y.Authority && x.Opaque == y.Opaque &&
			slices.EqualFunc(x.Endpoints, y.Endpoints, func(e, f discovery.Endpoint) bool { return e.Equal(&f) })
	})
}
