package discovery

import (
	"cmp"
	"slices"
	"strings"
)

// Reason says why an endpoint the registry holds is served to a client, or
// which step of the federation left it out. Explain takes the reasons from
// Resolve and PreferZone themselves, as they decide, so an explanation
// cannot drift from what a Get stream or a DNS answer serves.
type Reason string

const (
	// ReasonServed: the endpoint is served.
	ReasonServed Reason = "served"
	// ReasonServedInPanic: the endpoint is critical but served, because
	// fewer than the panic threshold of the authority's addresses are
	// serving and evicting would take most of the service away.
	ReasonServedInPanic Reason = "served_in_panic"
	// ReasonCritical: the endpoint is critical and evicted.
	ReasonCritical Reason = "critical"
	// ReasonDuplicate: another endpoint of the same address won (the
	// source of higher priority; see Resolve); Decision.Winner is it.
	ReasonDuplicate Reason = "duplicate"
	// ReasonFailoverTier: the endpoint's source is not in the failover
	// tier the authority's rule chose.
	ReasonFailoverTier Reason = "failover_tier"
	// ReasonFailoverLevel: another failover level of the same source
	// (PriorityLabel) has serving endpoints and is used instead.
	ReasonFailoverLevel Reason = "failover_level"
	// ReasonZoneHint: the client's zone has hinted endpoints and this one
	// is not hinted for it (topology hints, PreferZone).
	ReasonZoneHint Reason = "zone_hint"

	reasonUnexplained Reason = "unexplained"
)

// Decision is what happened to one endpoint.
type Decision struct {
	Endpoint *Endpoint
	Reason   Reason
	// Winner is the endpoint served for the address instead, with
	// ReasonDuplicate.
	Winner *Endpoint
}

// Explanation is what Explain records of one resolution.
type Explanation struct {
	Authority Authority
	// Zone is the client's zone the topology hints were applied for ("":
	// none).
	Zone string
	// Tiers are the failover tiers of the authority's rule (nil: none) and
	// Tier the index of the one chosen; len(Tiers) is the implicit last
	// tier of the sources no tier names, -1 no tier (no rule with tiers, or
	// no endpoint).
	Tiers []Tier
	Tier  int
	// PanicThreshold is the authority's; Panic says whether it applied:
	// ServingAddresses of Addresses (distinct addresses left after the
	// failover steps) are serving, fewer than that share.
	PanicThreshold              float64
	Panic                       bool
	Addresses, ServingAddresses int
	// ZoneHints: the topology hints left some endpoints out for Zone.
	ZoneHints bool
	// Served is exactly what Resolve and then PreferZone return for the
	// same input.
	Served []*Endpoint
	// Decisions has one entry per endpoint of the input, sorted by address,
	// then source, then key.
	Decisions []Decision

	dropped map[*Endpoint]Decision
}

// drop records that a step left e out.
func (ex *Explanation) drop(e *Endpoint, r Reason, winner *Endpoint) {
	if _, ok := ex.dropped[e]; !ok {
		ex.dropped[e] = Decision{Endpoint: e, Reason: r, Winner: winner}
	}
}

// Explain resolves eps (every endpoint of a's members, as for Resolve) for
// a client in zone ("" for none) through the same code as Resolve and
// PreferZone, recording why each endpoint is served or left out. It is
// meant for operators (the admin API, `tributary explain`), not for a hot
// path: it allocates per endpoint.
func (f *Federation) Explain(a Authority, zone string, eps []*Endpoint) *Explanation {
	ex := &Explanation{Authority: a, Zone: zone, Tier: -1, dropped: make(map[*Endpoint]Decision)}
	if r := f.lookup(a); r != nil && len(r.rule.Failover) > 0 {
		ex.Tiers = cloneRule(r.rule).Failover
	}
	ex.PanicThreshold = f.PanicThreshold(a)
	ex.Served = preferZone(f.resolve(a, eps, ex), zone, ex)
	served := make(map[*Endpoint]bool, len(ex.Served))
	for _, e := range ex.Served {
		served[e] = true
	}
	seen := make(map[*Endpoint]bool, len(eps))
	for _, e := range eps {
		if seen[e] {
			continue
		}
		seen[e] = true
		d, ok := ex.dropped[e]
		switch {
		case served[e] && !e.Health.Serving():
			d = Decision{Endpoint: e, Reason: ReasonServedInPanic}
		case served[e]:
			d = Decision{Endpoint: e, Reason: ReasonServed}
		case !ok:
			// Every step that leaves an endpoint out records it: this
			// would be a bug in this file, which the tests look for.
			d = Decision{Endpoint: e, Reason: reasonUnexplained}
		}
		ex.Decisions = append(ex.Decisions, d)
	}
	slices.SortStableFunc(ex.Decisions, func(x, y Decision) int {
		if c := x.Endpoint.Addr.Compare(y.Endpoint.Addr); c != 0 {
			return c
		}
		if c := strings.Compare(x.Endpoint.Source, y.Endpoint.Source); c != 0 {
			return c
		}
		return cmp.Compare(x.Endpoint.Key, y.Endpoint.Key)
	})
	ex.dropped = nil
	return ex
}
