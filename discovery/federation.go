package discovery

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// PriorityLabel is the endpoint label that makes failover levels within
// one source: of the endpoints a source holds for an authority, only those
// of the lowest value (a decimal number) that has a serving endpoint are
// served; the next level takes over when none of them is serving. The DNS
// SRV source sets it from the record priority. Endpoints without it are
// level 0.
const PriorityLabel = "failover_priority"

// FederationDefaults are the settings a rule inherits when it does not set
// them.
type FederationDefaults struct {
	// PanicThreshold is the share (0..1) of an authority's endpoints that
	// must be serving for the rest to be evicted; below it every endpoint
	// is served. 0 disables panic mode.
	PanicThreshold float64
}

// Federation is the compiled federation rules plus each source's priority:
// what turns the endpoints the registry holds for an authority into what is
// served. Immutable and safe for concurrent use. A nil *Federation has no
// rules and gives every source priority 0.
type Federation struct {
	rules      map[Authority]*compiledRule
	priorities map[string]int
	panic      float64 // the default panic threshold
}

type compiledRule struct {
	rule FederationRule
	// tierOf maps a source named in a tier to the tier's index; any other
	// source is in the implicit last tier, len(rule.Failover).
	tierOf map[string]int
	// minHealthy per tier, the implicit last one included (1).
	minHealthy []int
	// panic is the rule's panic threshold.
	panic float64
}

// NewFederation compiles rules (as ParseConfig validated them) with the
// sources' priorities (a source missing from the map has priority 0) and
// the default panic threshold, DefaultPanicThreshold. Both are copied. It
// rejects two rules for one authority, and a source in two tiers of one
// rule. A MinHealthy below 1 counts as 1.
func NewFederation(rules []FederationRule, priorities map[string]int) (*Federation, error) {
	return NewFederationWithDefaults(rules, priorities, FederationDefaults{PanicThreshold: DefaultPanicThreshold})
}

// NewFederationWithDefaults is NewFederation with the settings rules
// inherit. A panic threshold outside 0..1 is an error.
func NewFederationWithDefaults(rules []FederationRule, priorities map[string]int, d FederationDefaults) (*Federation, error) {
	if !validShare(d.PanicThreshold) {
		return nil, fmt.Errorf("federation: panic threshold %v is not a share from 0 to 1", d.PanicThreshold)
	}
	f := &Federation{
		rules:      make(map[Authority]*compiledRule, len(rules)),
		priorities: maps.Clone(priorities),
		panic:      d.PanicThreshold,
	}
	for _, r := range rules {
		if _, dup := f.rules[r.Authority]; dup {
			return nil, fmt.Errorf("federation: two rules for %s", r.Authority)
		}
		cr := &compiledRule{rule: cloneRule(r), panic: d.PanicThreshold}
		if r.PanicThreshold != nil {
			if !validShare(*r.PanicThreshold) {
				return nil, fmt.Errorf("federation: rule %s: panic threshold %v is not a share from 0 to 1", r.Authority, *r.PanicThreshold)
			}
			cr.panic = *r.PanicThreshold
		}
		if len(r.Failover) > 0 {
			cr.tierOf = make(map[string]int)
			cr.minHealthy = make([]int, len(r.Failover)+1)
			for t, tier := range r.Failover {
				cr.minHealthy[t] = max(tier.MinHealthy, 1)
				for _, s := range tier.Sources {
					if prev, dup := cr.tierOf[s]; dup && prev != t {
						return nil, fmt.Errorf("federation: rule %s: source %q is in failover tiers %d and %d", r.Authority, s, prev, t)
					}
					cr.tierOf[s] = t
				}
			}
			cr.minHealthy[len(r.Failover)] = 1
		}
		f.rules[r.Authority] = cr
	}
	return f, nil
}

func validShare(v float64) bool { return v >= 0 && v <= 1 }

func cloneRule(r FederationRule) FederationRule {
	if r.PanicThreshold != nil {
		v := *r.PanicThreshold
		r.PanicThreshold = &v
	}
	r.Aliases = slices.Clone(r.Aliases)
	r.Failover = slices.Clone(r.Failover)
	for i := range r.Failover {
		r.Failover[i].Sources = slices.Clone(r.Failover[i].Sources)
	}
	return r
}

// lookup finds the rule for a: on the exact authority, else on its host
// with port 0 (a rule written with a bare host applies to every port).
func (f *Federation) lookup(a Authority) *compiledRule {
	if f == nil || len(f.rules) == 0 {
		return nil
	}
	if r, ok := f.rules[a]; ok {
		return r
	}
	if a.Port != 0 {
		return f.rules[Authority{Host: a.Host}]
	}
	return nil
}

// Rule returns the rule that applies to a, if any, as Members and Resolve
// use it (exact authority first, then bare host). The result is a copy.
func (f *Federation) Rule(a Authority) (FederationRule, bool) {
	r := f.lookup(a)
	if r == nil {
		return FederationRule{}, false
	}
	return cloneRule(r.rule), true
}

// RuleAuthorities returns the authorities the rules are written for,
// sorted. Followers of the registry use it to find the authorities whose
// view an alias's change affects.
func (f *Federation) RuleAuthorities() []Authority {
	if f == nil {
		return nil
	}
	out := slices.Collect(maps.Keys(f.rules))
	slices.SortFunc(out, func(x, y Authority) int {
		if c := strings.Compare(x.Host, y.Host); c != 0 {
			return c
		}
		return cmp.Compare(x.Port, y.Port)
	})
	return out
}

// Members returns the authorities whose endpoints serve a: a itself first,
// then the aliases of its rule, without repeats. An alias written without a
// port takes a's port. Without a rule it is just a. The slice is the
// caller's.
func (f *Federation) Members(a Authority) []Authority {
	r := f.lookup(a)
	if r == nil {
		return []Authority{a}
	}
	out := make([]Authority, 1, 1+len(r.rule.Aliases))
	out[0] = a
	for _, al := range r.rule.Aliases {
		if al.Port == 0 {
			al.Port = a.Port
		}
		if !slices.Contains(out, al) {
			out = append(out, al)
		}
	}
	return out
}

// PanicThreshold returns the panic threshold that applies to a.
func (f *Federation) PanicThreshold(a Authority) float64 {
	if r := f.lookup(a); r != nil {
		return r.panic
	}
	if f == nil {
		return 0
	}
	return f.panic
}

// Resolve turns every endpoint the registry holds for a's members (all
// health states, provenance stamped) into what is served:
//
//  1. Failover, when a's rule has tiers: the first tier, in order, whose
//     sources have at least MinHealthy serving endpoints (distinct
//     addresses) is used. Sources named in no tier form an implicit last
//     tier (needing one). If no tier qualifies, the first tier with any
//     serving endpoint is used, else the first tier with any endpoint.
//  2. Failover levels within a source (PriorityLabel): of each source's
//     endpoints, the lowest level with a serving endpoint is kept (the
//     lowest level when none is serving).
//  3. Panic threshold: when fewer than that share of the distinct
//     addresses left have a serving endpoint, every one of them is served
//     rather than evicting most of the service. Otherwise endpoints that
//     are not Health.Serving are evicted.
//  4. Endpoints of one address are deduplicated: the one of the source with
//     the highest priority wins, ties going to the smallest source name,
//     then key, then content, so the answer never depends on input order.
//     In panic mode a serving endpoint beats a failing one first.
//  5. The result is sorted by address.
//
// eps and the endpoints are not modified; the result is a new slice of the
// same pointers (nil when nothing is served). One allocation per call.
func (f *Federation) Resolve(a Authority, eps []*Endpoint) []*Endpoint {
	return f.resolve(a, eps, nil)
}

// Backups is, for an authority whose rule has failover tiers, what each
// tier after the one Resolve serves would serve on its own: the tier's
// endpoints resolved by the same rules as if it were the only one (levels,
// eviction and its panic threshold, deduplication), in failover order,
// leaving out addresses already served or offered by an earlier backup;
// tiers with nothing to offer are skipped. served is Resolve's answer for
// eps. Edges whose clients fail over by themselves (xDS priorities) offer
// these below the served tier, so that a client that cannot reach any of
// the served endpoints still has somewhere to go; the choice of the tier
// (min_healthy) stays Tributary's. Nil without failover tiers.
func (f *Federation) Backups(a Authority, eps, served []*Endpoint) [][]*Endpoint {
	r := f.lookup(a)
	if r == nil || len(r.rule.Failover) == 0 || len(served) == 0 {
		return nil
	}
	chosen := r.tier(served[0].Source)
	seen := make(map[netip.AddrPort]bool, len(served))
	for _, e := range served {
		seen[e.Addr] = true
	}
	var out [][]*Endpoint
	for t := chosen + 1; t < len(r.minHealthy); t++ {
		var tier []*Endpoint
		for _, e := range eps {
			if r.tier(e.Source) == t {
				tier = append(tier, e)
			}
		}
		var kept []*Endpoint
		for _, e := range f.Resolve(a, tier) {
			if !seen[e.Addr] {
				seen[e.Addr] = true
				kept = append(kept, e)
			}
		}
		if len(kept) > 0 {
			out = append(out, kept)
		}
	}
	return out
}

// resolve is Resolve; when ex is not nil, every endpoint it drops is
// recorded there with the step that dropped it, and the panic state.
func (f *Federation) resolve(a Authority, eps []*Endpoint, ex *Explanation) []*Endpoint {
	if len(eps) == 0 {
		return nil
	}
	out := slices.Clone(eps)
	slices.SortFunc(out, func(x, y *Endpoint) int { return x.Addr.Compare(y.Addr) })

	r := f.lookup(a)
	if r != nil && len(r.rule.Failover) > 0 {
		out = r.selectTier(out, ex)
	}
	out = selectLevels(out, ex)

	threshold := f.PanicThreshold(a)
	total, serving := countAddrs(out)
	panicking := threshold > 0 && float64(serving) < threshold*float64(total)
	if ex != nil {
		ex.PanicThreshold, ex.Panic, ex.Addresses, ex.ServingAddresses = threshold, panicking, total, serving
	}
	if !panicking {
		w := 0
		for _, e := range out {
			if e.Health.Serving() {
				out[w] = e
				w++
			} else if ex != nil {
				ex.drop(e, ReasonCritical, nil)
			}
		}
		clear(out[w:])
		out = out[:w]
	}

	// One winner per run of equal addresses.
	w := 0
	for i := 0; i < len(out); {
		best := out[i]
		j := i + 1
		for ; j < len(out) && out[j].Addr == best.Addr; j++ {
			if f.better(out[j], best, panicking) {
				best = out[j]
			}
		}
		if ex != nil {
			for _, e := range out[i:j] {
				if e != best {
					ex.drop(e, ReasonDuplicate, best)
				}
			}
		}
		out[w] = best
		w++
		i = j
	}
	clear(out[w:])
	if w == 0 {
		return nil
	}
	return out[:w]
}

// better reports whether x should win over y for one address.
func (f *Federation) better(x, y *Endpoint, servingFirst bool) bool {
	if servingFirst && x.Health.Serving() != y.Health.Serving() {
		return x.Health.Serving()
	}
	return f.compare(x, y) < 0
}

// countAddrs counts the distinct addresses of out (sorted by address) and
// those with at least one serving endpoint.
func countAddrs(out []*Endpoint) (total, serving int) {
	for i := 0; i < len(out); {
		ok := false
		j := i
		for ; j < len(out) && out[j].Addr == out[i].Addr; j++ {
			ok = ok || out[j].Health.Serving()
		}
		total++
		if ok {
			serving++
		}
		i = j
	}
	return total, serving
}

// level is an endpoint's failover level (PriorityLabel), 0 without one.
func level(e *Endpoint) uint64 {
	s, ok := e.Labels[PriorityLabel]
	if !ok {
		return 0
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0
	}
	return v
}

// selectLevels keeps, per source, the endpoints of the lowest failover
// level that has a serving endpoint (the lowest level when none has). out
// is filtered in place; without any PriorityLabel it is returned as is.
func selectLevels(out []*Endpoint, ex *Explanation) []*Endpoint {
	labelled := false
	for _, e := range out {
		if _, ok := e.Labels[PriorityLabel]; ok {
			labelled = true
			break
		}
	}
	if !labelled {
		return out
	}
	type choice struct {
		lowest, serving uint64
		hasServing      bool
	}
	chosen := make(map[string]*choice, 2)
	for _, e := range out {
		l := level(e)
		c := chosen[e.Source]
		if c == nil {
			c = &choice{lowest: l}
			chosen[e.Source] = c
		}
		c.lowest = min(c.lowest, l)
		if e.Health.Serving() && (!c.hasServing || l < c.serving) {
			c.serving, c.hasServing = l, true
		}
	}
	w := 0
	for _, e := range out {
		c := chosen[e.Source]
		want := c.lowest
		if c.hasServing {
			want = c.serving
		}
		if level(e) == want {
			out[w] = e
			w++
		} else if ex != nil {
			ex.drop(e, ReasonFailoverLevel, nil)
		}
	}
	clear(out[w:])
	return out[:w]
}

func (r *compiledRule) tier(source string) int {
	if t, ok := r.tierOf[source]; ok {
		return t
	}
	return len(r.rule.Failover)
}

// selectTier keeps the endpoints of the tier to serve. out holds
// endpoints of every health sorted by address; it is filtered in place.
func (r *compiledRule) selectTier(out []*Endpoint, ex *Explanation) []*Endpoint {
	nt := len(r.minHealthy)
	var countBuf, lastBuf [8]int
	var anyBuf [8]bool
	counts, last, anyEp := countBuf[:], lastBuf[:], anyBuf[:]
	if nt > len(countBuf) {
		counts, last, anyEp = make([]int, nt), make([]int, nt), make([]bool, nt)
	}
	counts, last, anyEp = counts[:nt], last[:nt], anyEp[:nt]
	for t := range last {
		last[t] = -1
	}
	// Count distinct serving addresses per tier: runs of one address are
	// adjacent. anyEp marks the tiers with any endpoint at all.
	for i := 0; i < len(out); {
		j := i
		for ; j < len(out) && out[j].Addr == out[i].Addr; j++ {
			t := r.tier(out[j].Source)
			anyEp[t] = true
			if out[j].Health.Serving() && last[t] != i {
				last[t] = i
				counts[t]++
			}
		}
		i = j
	}
	chosen := -1
	for t := range nt {
		if counts[t] >= r.minHealthy[t] {
			chosen = t
			break
		}
	}
	if chosen < 0 {
		for t := range nt {
			if counts[t] > 0 {
				chosen = t
				break
			}
		}
	}
	if chosen < 0 {
		for t := range nt {
			if anyEp[t] {
				chosen = t
				break
			}
		}
	}
	if ex != nil {
		ex.Tier = chosen
	}
	w := 0
	for _, e := range out {
		if r.tier(e.Source) == chosen {
			out[w] = e
			w++
		} else if ex != nil {
			ex.drop(e, ReasonFailoverTier, nil)
		}
	}
	clear(out[w:])
	return out[:w]
}

// compare orders endpoints of one address, the winner first: higher source
// priority, then smaller source name, then smaller key, then content (so
// that even identical provenance gives one answer whatever the input order).
func (f *Federation) compare(x, y *Endpoint) int {
	if x == y {
		return 0
	}
	if x.Source != y.Source {
		var px, py int
		if f != nil {
			px, py = f.priorities[x.Source], f.priorities[y.Source]
		}
		if c := cmp.Compare(py, px); c != 0 {
			return c
		}
		return strings.Compare(x.Source, y.Source)
	}
	if c := strings.Compare(x.Key, y.Key); c != 0 {
		return c
	}
	if c := cmp.Compare(healthRank(x.Health), healthRank(y.Health)); c != 0 {
		return c
	}
	if c := cmp.Compare(x.EffectiveWeight(), y.EffectiveWeight()); c != 0 {
		return -c // the heavier first
	}
	if c := cmp.Compare(x.Weight, y.Weight); c != 0 {
		return c
	}
	if c := strings.Compare(x.Zone, y.Zone); c != 0 {
		return c
	}
	if c := cmp.Compare(x.Identity.Kind, y.Identity.Kind); c != 0 {
		return c
	}
	if c := strings.Compare(x.Identity.Name, y.Identity.Name); c != 0 {
		return c
	}
	if c := strings.Compare(x.Identity.ServerName, y.Identity.ServerName); c != 0 {
		return c
	}
	if c := cmp.Compare(x.Protocol, y.Protocol); c != 0 {
		return c
	}
	return compareLabels(x.Labels, y.Labels)
}

// compareLabels orders label sets as sorted lists of key/value pairs. It
// allocates, but only runs for two endpoints of one address, source and key.
func compareLabels(a, b map[string]string) int {
	if maps.Equal(a, b) {
		return 0
	}
	ka, kb := slices.Sorted(maps.Keys(a)), slices.Sorted(maps.Keys(b))
	for i := range min(len(ka), len(kb)) {
		if c := strings.Compare(ka[i], kb[i]); c != 0 {
			return c
		}
		if c := strings.Compare(a[ka[i]], b[kb[i]]); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(ka), len(kb))
}

// healthRank orders serving states, the best first.
func healthRank(h Health) int {
	switch h {
	case HealthPassing:
		return 0
	case HealthUnknown:
		return 1
	case HealthWarning:
		return 2
	}
	return 3
}

// PreferZone applies topology hints as kube-proxy does, for every edge
// alike (Get streams and DNS answers): when the client's zone is known and
// every endpoint carries hints, serve those hinted for that zone; if there
// are none, or any endpoint has no hints, serve all.
func PreferZone(eps []*Endpoint, zone string) []*Endpoint {
	return preferZone(eps, zone, nil)
}

// preferZone is PreferZone, recording in ex (when not nil) the endpoints
// the hints leave out and whether the hints applied.
func preferZone(eps []*Endpoint, zone string, ex *Explanation) []*Endpoint {
	if zone == "" || len(eps) == 0 {
		return eps
	}
	n := 0
	for _, e := range eps {
		if len(e.ForZones) == 0 {
			return eps
		}
		if slices.Contains(e.ForZones, zone) {
			n++
		}
	}
	if n == 0 || n == len(eps) {
		return eps
	}
	if ex != nil {
		ex.ZoneHints = true
	}
	out := make([]*Endpoint, 0, n)
	for _, e := range eps {
		if slices.Contains(e.ForZones, zone) {
			out = append(out, e)
		} else if ex != nil {
			ex.drop(e, ReasonZoneHint, nil)
		}
	}
	return out
}
