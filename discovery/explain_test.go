package discovery

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"testing"
)

// explainInput builds endpoints from bytes, 5 each (address, source, key,
// health, extras): few distinct values so that duplicates, tiers, levels
// and hints meet often.
func explainInput(data []byte) []*Endpoint {
	sources := []string{"east", "west", "west2", "other"}
	zones := []string{"z1", "z2", "z3"}
	var eps []*Endpoint
	for i := 0; i+4 < len(data) && len(eps) < 48; i += 5 {
		x := data[i+4]
		e := &Endpoint{
			Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, data[i] % 8}), 80),
			Source: sources[int(data[i+1])%len(sources)],
			Key:    strconv.Itoa(int(data[i+2] % 3)),
			Health: Health(data[i+3] % 4),
			Zone:   zones[int(x)%len(zones)],
		}
		if x&0x04 != 0 {
			e.Labels = map[string]string{PriorityLabel: strconv.Itoa(int(x>>3) % 3)}
		}
		// Hints on most endpoints, so that every endpoint having them
		// (when PreferZone applies) is not rare.
		if x&0xc0 != 0 {
			e.ForZones = []string{zones[int(x>>6)%len(zones)]}
		}
		eps = append(eps, e)
	}
	return eps
}

func explainFederations(t testing.TB) []*Federation {
	prio := map[string]int{"east": 2, "west": 1, "west2": 1}
	var out []*Federation
	for _, th := range []float64{0, DefaultPanicThreshold, 0.9} {
		for _, rules := range [][]FederationRule{nil, tiered, {{Authority: Authority{"web.demo", 0}, Failover: []Tier{{Sources: []string{"other"}, MinHealthy: 2}}}}} {
			f, err := NewFederationWithDefaults(rules, prio, FederationDefaults{PanicThreshold: th})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, f)
		}
	}
	return append(out, nil)
}

// checkExplain asserts that Explain serves exactly what Resolve and
// PreferZone serve, and that every reason is consistent with the input.
func checkExplain(t *testing.T, fed *Federation, zone string, eps []*Endpoint) {
	t.Helper()
	want := PreferZone(fed.Resolve(webAuth, eps), zone)
	ex := fed.Explain(webAuth, zone, eps)
	if !slices.Equal(ex.Served, want) {
		t.Fatalf("Explain serves %s, Resolve+PreferZone %s", describe(ex.Served), describe(want))
	}
	if len(ex.Decisions) != len(eps) {
		t.Fatalf("%d decisions for %d endpoints", len(ex.Decisions), len(eps))
	}
	reasons := map[*Endpoint]Decision{}
	for _, d := range ex.Decisions {
		if _, dup := reasons[d.Endpoint]; dup {
			t.Fatalf("two decisions for %s", describe([]*Endpoint{d.Endpoint}))
		}
		reasons[d.Endpoint] = d
	}
	var servedByReason []*Endpoint
	for _, e := range eps {
		d, ok := reasons[e]
		if !ok {
			t.Fatalf("no decision for %s", describe([]*Endpoint{e}))
		}
		switch d.Reason {
		case ReasonServed:
			if !e.Health.Serving() {
				t.Fatalf("%v endpoint explained as served", e.Health)
			}
			servedByReason = append(servedByReason, e)
		case ReasonServedInPanic:
			if !ex.Panic || e.Health.Serving() {
				t.Fatalf("served_in_panic: panic %v, health %v", ex.Panic, e.Health)
			}
			servedByReason = append(servedByReason, e)
		case ReasonCritical:
			if ex.Panic || e.Health.Serving() {
				t.Fatalf("critical: panic %v, health %v", ex.Panic, e.Health)
			}
		case ReasonDuplicate:
			w := d.Winner
			if w == nil || w.Addr != e.Addr || w == e {
				t.Fatalf("duplicate of %s without a winner of its address", e.Addr)
			}
			if r := reasons[w].Reason; r != ReasonServed && r != ReasonServedInPanic && r != ReasonZoneHint {
				t.Fatalf("the winner over %s is %s", e.Addr, r)
			}
		case ReasonFailoverTier:
			r := fed.lookup(webAuth)
			if r == nil || ex.Tier < 0 || r.tier(e.Source) == ex.Tier {
				t.Fatalf("failover_tier for a source of the chosen tier %d", ex.Tier)
			}
		case ReasonFailoverLevel:
			if _, ok := e.Labels[PriorityLabel]; !ok && !slices.ContainsFunc(eps, func(o *Endpoint) bool {
				_, l := o.Labels[PriorityLabel]
				return l && o.Source == e.Source
			}) {
				t.Fatal("failover_level for a source without levels")
			}
		case ReasonZoneHint:
			if !ex.ZoneHints || slices.Contains(e.ForZones, zone) {
				t.Fatalf("zone_hint: hints %v, zones %v for %q", ex.ZoneHints, e.ForZones, zone)
			}
		default:
			t.Fatalf("reason %q", d.Reason)
		}
	}
	slices.SortFunc(servedByReason, func(x, y *Endpoint) int { return x.Addr.Compare(y.Addr) })
	if !slices.Equal(servedByReason, want) {
		t.Fatalf("explained as served: %s; served: %s", describe(servedByReason), describe(want))
	}
}

// TestExplainServesWhatResolveServes runs many random registries through
// Explain and through the Get path's functions.
func TestExplainServesWhatResolveServes(t *testing.T) {
	feds := explainFederations(t)
	r := rand.New(rand.NewPCG(18, 1))
	reasons := map[Reason]int{}
	for range 3000 {
		data := make([]byte, 5*r.IntN(20))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		eps := explainInput(data)
		for _, fed := range feds {
			for _, zone := range []string{"", "z1", "z2", "z9"} {
				checkExplain(t, fed, zone, eps)
				for _, d := range fed.Explain(webAuth, zone, eps).Decisions {
					reasons[d.Reason]++
				}
			}
		}
	}
	// The inputs reach every reason, so the test exercises each step.
	for _, want := range []Reason{ReasonServed, ReasonServedInPanic, ReasonCritical, ReasonDuplicate, ReasonFailoverTier, ReasonFailoverLevel, ReasonZoneHint} {
		if reasons[want] == 0 {
			t.Errorf("no random input gave %s: %v", want, reasons)
		}
	}
}

func FuzzExplain(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0xc4, 0, 1, 0, 3, 0x44, 1, 2, 1, 0, 0x80}, "z1")
	f.Add([]byte{1, 3, 0, 3, 0x0c, 1, 1, 1, 1, 0x14, 2, 2, 2, 1, 0x40}, "z2")
	feds := explainFederations(f)
	f.Fuzz(func(t *testing.T, data []byte, zone string) {
		eps := explainInput(data)
		for _, fed := range feds {
			checkExplain(t, fed, zone, eps)
		}
	})
}

func TestExplainRecordsPanicAndTier(t *testing.T) {
	f := mustFederation(t, tiered, nil)
	eps := []*Endpoint{
		fep("10.0.0.1:80", "east", "a", HealthCritical),
		fep("10.0.0.2:80", "east", "a", HealthCritical),
		fep("10.0.0.3:80", "west", "b", HealthPassing),
		fep("10.0.0.4:80", "west", "b", HealthCritical),
		fep("10.0.0.5:80", "west", "b", HealthCritical),
	}
	ex := f.Explain(webAuth, "", eps)
	if ex.Tier != 1 || !ex.Panic || ex.Addresses != 3 || ex.ServingAddresses != 1 || len(ex.Tiers) != 2 {
		t.Fatalf("tier %d panic %v %d/%d tiers %v", ex.Tier, ex.Panic, ex.ServingAddresses, ex.Addresses, ex.Tiers)
	}
	got := map[string]Reason{}
	for _, d := range ex.Decisions {
		got[d.Endpoint.Addr.String()] = d.Reason
	}
	want := map[string]Reason{"10.0.0.1:80": ReasonFailoverTier, "10.0.0.2:80": ReasonFailoverTier,
		"10.0.0.3:80": ReasonServed, "10.0.0.4:80": ReasonServedInPanic, "10.0.0.5:80": ReasonServedInPanic}
	for a, r := range want {
		if got[a] != r {
			t.Errorf("%s: %s, want %s", a, got[a], r)
		}
	}
}
