package discovery

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func fep(addr, source, key string, h Health) *Endpoint {
	return &Endpoint{Addr: netip.MustParseAddrPort(addr), Source: source, Key: key, Health: h}
}

// describe renders endpoints as "addr/source/key" for comparisons.
func describe(eps []*Endpoint) string {
	parts := make([]string, len(eps))
	for i, e := range eps {
		parts[i] = e.Addr.String() + "/" + e.Source + "/" + e.Key
	}
	return strings.Join(parts, " ")
}

func mustFederation(t testing.TB, rules []FederationRule, prio map[string]int) *Federation {
	t.Helper()
	f, err := NewFederation(rules, prio)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

var (
	webAuth = Authority{"web.demo", 8080}
	tiered  = []FederationRule{{
		Authority: webAuth,
		Failover: []Tier{
			{Sources: []string{"east"}, MinHealthy: 2},
			{Sources: []string{"west", "west2"}, MinHealthy: 1},
		},
	}}
)

func TestResolve(t *testing.T) {
	const (
		P = HealthPassing
		U = HealthUnknown
		W = HealthWarning
		C = HealthCritical
	)
	prio := map[string]int{"k8s": 10, "consul": 5, "file": 5}
	cases := []struct {
		name  string
		rules []FederationRule
		eps   []*Endpoint
		want  string
	}{
		{
			name: "union of two sources, sorted by address",
			eps:  []*Endpoint{fep("10.0.0.3:80", "consul", "web", P), fep("10.0.0.1:80", "k8s", "web", U), fep("10.0.0.2:80", "consul", "web", W)},
			want: "10.0.0.1:80/k8s/web 10.0.0.2:80/consul/web 10.0.0.3:80/consul/web",
		},
		{
			name: "priority conflict",
			eps:  []*Endpoint{fep("10.0.0.1:80", "consul", "web", P), fep("10.0.0.1:80", "k8s", "slice-a", P)},
			want: "10.0.0.1:80/k8s/slice-a",
		},
		{
			name: "priority conflict, other order",
			eps:  []*Endpoint{fep("10.0.0.1:80", "k8s", "slice-a", P), fep("10.0.0.1:80", "consul", "web", P)},
			want: "10.0.0.1:80/k8s/slice-a",
		},
		{
			name: "equal priority: smallest source name",
			eps:  []*Endpoint{fep("10.0.0.1:80", "file", "a", P), fep("10.0.0.1:80", "consul", "z", P)},
			want: "10.0.0.1:80/consul/z",
		},
		{
			name: "same source: smallest key",
			eps:  []*Endpoint{fep("10.0.0.1:80", "file", "b", P), fep("10.0.0.1:80", "file", "a", P)},
			want: "10.0.0.1:80/file/a",
		},
		{
			name: "critical loser does not shadow",
			eps:  []*Endpoint{fep("10.0.0.1:80", "k8s", "web", C), fep("10.0.0.1:80", "consul", "web", P)},
			want: "10.0.0.1:80/consul/web",
		},
		{
			name: "critical evicted",
			eps:  []*Endpoint{fep("10.0.0.1:80", "k8s", "web", C), fep("10.0.0.2:80", "k8s", "web", P)},
			want: "10.0.0.2:80/k8s/web",
		},
		{
			name: "all critical: panic serves them",
			eps:  []*Endpoint{fep("10.0.0.1:80", "k8s", "web", C)},
			want: "10.0.0.1:80/k8s/web",
		},
		{name: "nothing", want: ""},
		{
			name:  "failover: tier 1 has enough",
			rules: tiered,
			eps: []*Endpoint{
				fep("10.1.0.1:80", "east", "a", P), fep("10.1.0.2:80", "east", "a", P), fep("10.1.0.3:80", "east", "a", C),
				fep("10.2.0.1:80", "west", "a", P), fep("10.9.0.1:80", "other", "a", P),
			},
			want: "10.1.0.1:80/east/a 10.1.0.2:80/east/a",
		},
		{
			name:  "failover: tier 1 below min_healthy, tier 2 used",
			rules: tiered,
			eps: []*Endpoint{
				fep("10.1.0.1:80", "east", "a", P), fep("10.1.0.2:80", "east", "a", C),
				fep("10.2.0.1:80", "west", "a", P), fep("10.2.0.2:80", "west2", "b", W), fep("10.9.0.1:80", "other", "a", P),
			},
			want: "10.2.0.1:80/west/a 10.2.0.2:80/west2/b",
		},
		{
			name:  "failover: duplicates count once towards min_healthy",
			rules: tiered,
			eps: []*Endpoint{
				fep("10.1.0.1:80", "east", "a", P), fep("10.1.0.1:80", "east", "b", P),
				fep("10.2.0.1:80", "west", "a", P),
			},
			want: "10.2.0.1:80/west/a",
		},
		{
			name:  "failover: untiered sources are the implicit last tier",
			rules: tiered,
			eps: []*Endpoint{
				fep("10.1.0.1:80", "east", "a", P), fep("10.2.0.1:80", "west", "a", C),
				fep("10.9.0.1:80", "other", "a", P), fep("10.9.0.2:80", "", "", U),
			},
			want: "10.9.0.1:80/other/a 10.9.0.2:80//",
		},
		{
			name:  "failover: nothing qualifies, first tier with any serving",
			rules: []FederationRule{{Authority: webAuth, Failover: []Tier{{Sources: []string{"east"}, MinHealthy: 3}, {Sources: []string{"west"}, MinHealthy: 3}}}},
			eps: []*Endpoint{
				fep("10.1.0.1:80", "east", "a", C), fep("10.2.0.1:80", "west", "a", P), fep("10.2.0.2:80", "west", "a", P),
			},
			want: "10.2.0.1:80/west/a 10.2.0.2:80/west/a",
		},
		{
			name:  "failover: every tier critical, panic serves the first",
			rules: tiered,
			eps:   []*Endpoint{fep("10.1.0.1:80", "east", "a", C), fep("10.2.0.1:80", "west", "a", C)},
			want:  "10.1.0.1:80/east/a",
		},
		{
			name:  "failover: conflict inside the chosen tier",
			rules: tiered,
			eps:   []*Endpoint{fep("10.2.0.1:80", "west2", "a", P), fep("10.2.0.1:80", "west", "b", P)},
			want:  "10.2.0.1:80/west/b",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := mustFederation(t, tc.rules, prio)
			before := deepCopy(tc.eps)
			got := f.Resolve(webAuth, tc.eps)
			if d := describe(got); d != tc.want {
				t.Errorf("Resolve = %q\nwant      %q", d, tc.want)
			}
			assertUnchanged(t, before, tc.eps)
			for i := range 5 {
				shuffled := slices.Clone(tc.eps)
				rand.New(rand.NewPCG(uint64(i), 1)).Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
				if d := describe(f.Resolve(webAuth, shuffled)); d != tc.want {
					t.Errorf("shuffled %d: Resolve = %q, want %q", i, d, tc.want)
				}
			}
		})
	}
}

func lep(addr, source string, h Health, level string) *Endpoint {
	e := fep(addr, source, "k", h)
	if level != "" {
		e.Labels = map[string]string{PriorityLabel: level}
	}
	return e
}

func TestResolvePanicThresholdAndLevels(t *testing.T) {
	const (
		P = HealthPassing
		C = HealthCritical
	)
	pct := func(v float64) *float64 { return &v }
	cases := []struct {
		name      string
		threshold float64 // the default
		rules     []FederationRule
		eps       []*Endpoint
		want      string
	}{
		{
			name: "below the threshold: everything served", threshold: 0.5,
			eps:  []*Endpoint{fep("10.0.0.1:80", "s", "k", P), fep("10.0.0.2:80", "s", "k", C), fep("10.0.0.3:80", "s", "k", C)},
			want: "10.0.0.1:80/s/k 10.0.0.2:80/s/k 10.0.0.3:80/s/k",
		},
		{
			name: "exactly at the threshold: evicted", threshold: 0.5,
			eps:  []*Endpoint{fep("10.0.0.1:80", "s", "k", P), fep("10.0.0.2:80", "s", "k", C)},
			want: "10.0.0.1:80/s/k",
		},
		{
			name: "threshold 0: all critical serves nothing", threshold: 0,
			eps:  []*Endpoint{fep("10.0.0.1:80", "s", "k", C), fep("10.0.0.2:80", "s", "k", C)},
			want: "",
		},
		{
			name: "a rule overrides the default", threshold: 0.5,
			rules: []FederationRule{{Authority: webAuth, PanicThreshold: pct(0.9)}},
			eps:   []*Endpoint{fep("10.0.0.1:80", "s", "k", P), fep("10.0.0.2:80", "s", "k", P), fep("10.0.0.3:80", "s", "k", C)},
			want:  "10.0.0.1:80/s/k 10.0.0.2:80/s/k 10.0.0.3:80/s/k",
		},
		{
			name: "a rule turns it off", threshold: 0.5,
			rules: []FederationRule{{Authority: Authority{Host: "web.demo"}, PanicThreshold: pct(0)}},
			eps:   []*Endpoint{fep("10.0.0.1:80", "s", "k", C)},
			want:  "",
		},
		{
			name: "addresses count once; a serving copy counts the address serving", threshold: 0.5,
			eps: []*Endpoint{
				fep("10.0.0.1:80", "a", "k", C), fep("10.0.0.1:80", "b", "k", P),
				fep("10.0.0.2:80", "a", "k", C), fep("10.0.0.2:80", "b", "k", C), fep("10.0.0.2:80", "c", "k", C),
			},
			want: "10.0.0.1:80/b/k",
		},
		{
			name: "panic: a serving copy wins its address over priority", threshold: 0.5,
			eps: []*Endpoint{
				fep("10.0.0.1:80", "hi", "k", C), fep("10.0.0.1:80", "lo", "k", P),
				fep("10.0.0.2:80", "hi", "k", C), fep("10.0.0.3:80", "hi", "k", C),
			},
			want: "10.0.0.1:80/lo/k 10.0.0.2:80/hi/k 10.0.0.3:80/hi/k",
		},
		{
			name: "levels: the lowest serves", threshold: 0.5,
			eps:  []*Endpoint{lep("10.0.0.1:80", "dns", P, "10"), lep("10.0.0.2:80", "dns", P, "10"), lep("10.0.0.3:80", "dns", P, "20")},
			want: "10.0.0.1:80/dns/k 10.0.0.2:80/dns/k",
		},
		{
			name: "levels: the next takes over when the lowest has nothing serving", threshold: 0.5,
			eps:  []*Endpoint{lep("10.0.0.1:80", "dns", C, "10"), lep("10.0.0.2:80", "dns", C, "10"), lep("10.0.0.3:80", "dns", P, "20"), lep("10.0.0.4:80", "dns", P, "30")},
			want: "10.0.0.3:80/dns/k",
		},
		{
			name: "levels: one serving in the lowest keeps it (then panic within it)", threshold: 0.5,
			eps:  []*Endpoint{lep("10.0.0.1:80", "dns", C, "10"), lep("10.0.0.2:80", "dns", C, "10"), lep("10.0.0.5:80", "dns", P, "10"), lep("10.0.0.3:80", "dns", P, "20")},
			want: "10.0.0.1:80/dns/k 10.0.0.2:80/dns/k 10.0.0.5:80/dns/k",
		},
		{
			name: "levels: none serving anywhere, the lowest in panic", threshold: 0.5,
			eps:  []*Endpoint{lep("10.0.0.1:80", "dns", C, "10"), lep("10.0.0.3:80", "dns", C, "20")},
			want: "10.0.0.1:80/dns/k",
		},
		{
			name: "levels are per source; unlabelled endpoints are level 0", threshold: 0.5,
			eps: []*Endpoint{
				lep("10.0.0.1:80", "dns", P, "10"), lep("10.0.0.2:80", "dns", P, "5"),
				lep("10.1.0.1:80", "file", P, ""), lep("10.1.0.2:80", "file", P, "1"),
			},
			want: "10.0.0.2:80/dns/k 10.1.0.1:80/file/k",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewFederationWithDefaults(tc.rules, nil, FederationDefaults{PanicThreshold: tc.threshold})
			if err != nil {
				t.Fatal(err)
			}
			before := deepCopy(tc.eps)
			if d := describe(f.Resolve(webAuth, tc.eps)); d != tc.want {
				t.Errorf("Resolve = %q\nwant      %q", d, tc.want)
			}
			assertUnchanged(t, before, tc.eps)
			for i := range 5 {
				shuffled := slices.Clone(tc.eps)
				rand.New(rand.NewPCG(uint64(i), 2)).Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
				if d := describe(f.Resolve(webAuth, shuffled)); d != tc.want {
					t.Errorf("shuffled %d: Resolve = %q, want %q", i, d, tc.want)
				}
			}
		})
	}
	if _, err := NewFederationWithDefaults(nil, nil, FederationDefaults{PanicThreshold: 1.5}); err == nil {
		t.Error("a threshold over 1 was accepted")
	}
	if _, err := NewFederationWithDefaults([]FederationRule{{Authority: webAuth, PanicThreshold: pct(-1)}}, nil, FederationDefaults{}); err == nil {
		t.Error("a negative rule threshold was accepted")
	}
	var nilFed *Federation
	if nilFed.PanicThreshold(webAuth) != 0 {
		t.Error("a nil federation has no panic threshold")
	}
}

// snapshot is an endpoint slice and the endpoints' contents at one time.
type snapshot struct {
	ptrs []*Endpoint
	vals []Endpoint
}

func deepCopy(eps []*Endpoint) snapshot {
	s := snapshot{ptrs: slices.Clone(eps)}
	for _, e := range eps {
		s.vals = append(s.vals, *e)
	}
	return s
}

func assertUnchanged(t testing.TB, before snapshot, eps []*Endpoint) {
	t.Helper()
	if !slices.Equal(before.ptrs, eps) {
		t.Fatal("Resolve reordered or replaced its input slice")
	}
	for i, e := range eps {
		if !reflect.DeepEqual(*e, before.vals[i]) {
			t.Fatalf("Resolve modified endpoint %d: %+v, was %+v", i, *e, before.vals[i])
		}
	}
}

func TestMembers(t *testing.T) {
	rules := []FederationRule{
		{Authority: Authority{"web.demo", 8080}, Aliases: []Authority{{"web.service.dc1.consul", 80}, {"web.prod", 0}}},
		{Authority: Authority{"web.demo", 0}, Aliases: []Authority{{"web.any", 0}, {"web.fixed", 9000}, {"web.demo", 9000}}},
		{Authority: Authority{"api", 0}},
	}
	f := mustFederation(t, rules, nil)
	cases := []struct {
		a    Authority
		want []Authority
	}{
		{Authority{"web.demo", 8080}, []Authority{{"web.demo", 8080}, {"web.service.dc1.consul", 80}, {"web.prod", 8080}}},
		{Authority{"web.demo", 81}, []Authority{{"web.demo", 81}, {"web.any", 81}, {"web.fixed", 9000}, {"web.demo", 9000}}},
		{Authority{"web.demo", 9000}, []Authority{{"web.demo", 9000}, {"web.any", 9000}, {"web.fixed", 9000}}},
		{Authority{"api", 1}, []Authority{{"api", 1}}},
		{Authority{"other", 80}, []Authority{{"other", 80}}},
		// an alias has no rule of its own: aliases are not symmetric
		{Authority{"web.service.dc1.consul", 80}, []Authority{{"web.service.dc1.consul", 80}}},
	}
	for _, tc := range cases {
		if got := f.Members(tc.a); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Members(%v) = %v, want %v", tc.a, got, tc.want)
		}
	}

	if r, ok := f.Rule(Authority{"web.demo", 81}); !ok || r.Authority != (Authority{"web.demo", 0}) {
		t.Errorf("Rule(web.demo:81) = %v, %v", r, ok)
	}
	r, _ := f.Rule(Authority{"web.demo", 8080})
	r.Aliases[0] = Authority{"changed", 1}
	if got := f.Members(Authority{"web.demo", 8080}); got[1].Host != "web.service.dc1.consul" {
		t.Error("Rule returned the federation's own slice")
	}
	if _, ok := f.Rule(Authority{"nope", 1}); ok {
		t.Error("Rule(nope) found a rule")
	}

	var nilF *Federation
	if got := nilF.Members(webAuth); !reflect.DeepEqual(got, []Authority{webAuth}) {
		t.Errorf("nil Members = %v", got)
	}
	if got := describe(nilF.Resolve(webAuth, []*Endpoint{fep("10.0.0.1:80", "b", "", HealthPassing), fep("10.0.0.1:80", "a", "", HealthPassing)})); got != "10.0.0.1:80/a/" {
		t.Errorf("nil Resolve = %q", got)
	}
}

func TestBareHostRuleResolve(t *testing.T) {
	// A bare-host rule's failover applies to every port.
	rules := []FederationRule{{Authority: Authority{"web.demo", 0}, Failover: []Tier{{Sources: []string{"east"}, MinHealthy: 1}}}}
	f := mustFederation(t, rules, nil)
	eps := []*Endpoint{fep("10.1.0.1:80", "east", "", HealthPassing), fep("10.2.0.1:80", "west", "", HealthPassing)}
	if got := describe(f.Resolve(Authority{"web.demo", 1234}, eps)); got != "10.1.0.1:80/east/" {
		t.Errorf("Resolve = %q", got)
	}
	if got := describe(f.Resolve(Authority{"api.demo", 1234}, eps)); got != "10.1.0.1:80/east/ 10.2.0.1:80/west/" {
		t.Errorf("Resolve without rule = %q", got)
	}
}

func TestNewFederationErrors(t *testing.T) {
	if _, err := NewFederation([]FederationRule{{Authority: webAuth}, {Authority: webAuth}}, nil); err == nil {
		t.Error("two rules for one authority accepted")
	}
	two := []FederationRule{{Authority: webAuth, Failover: []Tier{{Sources: []string{"a"}}, {Sources: []string{"a"}}}}}
	if _, err := NewFederation(two, nil); err == nil {
		t.Error("a source in two tiers accepted")
	}
	// Inputs are copied.
	rules := []FederationRule{{Authority: webAuth, Aliases: []Authority{{"x", 1}}}}
	prio := map[string]int{"a": 1}
	f := mustFederation(t, rules, prio)
	rules[0].Aliases[0] = Authority{"y", 1}
	prio["b"] = 9
	if got := f.Members(webAuth); got[1].Host != "x" {
		t.Error("rules not copied")
	}
	if got := describe(f.Resolve(webAuth, []*Endpoint{fep("10.0.0.1:80", "a", "", HealthPassing), fep("10.0.0.1:80", "b", "", HealthPassing)})); got != "10.0.0.1:80/a/" {
		t.Errorf("priorities not copied: %q", got)
	}
}

func TestResolveTiesOnContent(t *testing.T) {
	// Same address, source and key (one source serving an authority and its
	// alias): the answer must still not depend on input order.
	mk := func(zone string, w uint32, labels map[string]string) *Endpoint {
		e := fep("10.0.0.1:80", "k8s", "slice", HealthPassing)
		e.Zone, e.Weight, e.Labels = zone, w, labels
		return e
	}
	eps := []*Endpoint{
		mk("b", 0, nil), mk("a", 0, map[string]string{"x": "2"}), mk("a", 0, map[string]string{"x": "1"}),
		mk("a", 5, nil), mk("a", 0, map[string]string{"x": "1", "y": "0"}),
	}
	var f *Federation
	want := f.Resolve(webAuth, eps)
	if len(want) != 1 || want[0] != eps[2] {
		t.Fatalf("winner = %+v", want)
	}
	for i := range 50 {
		s := slices.Clone(eps)
		rand.New(rand.NewPCG(uint64(i), 2)).Shuffle(len(s), func(a, b int) { s[a], s[b] = s[b], s[a] })
		if got := f.Resolve(webAuth, s); got[0] != want[0] {
			t.Fatalf("shuffle %d: winner %+v, want %+v", i, *got[0], *want[0])
		}
	}
}

func TestResolveAllocs(t *testing.T) {
	f := mustFederation(t, tiered, map[string]int{"east": 1})
	var eps []*Endpoint
	for i := range 200 {
		src := []string{"east", "west", "other"}[i%3]
		eps = append(eps, fep("10.0."+strconv.Itoa(i%50)+".1:80", src, "k", Health(i%4)))
	}
	if n := testing.AllocsPerRun(100, func() { f.Resolve(webAuth, eps) }); n > 1 {
		t.Errorf("Resolve allocates %v times, want 1", n)
	}
}

// resolveInput builds endpoints from fuzz bytes: 4 bytes each (address,
// source, key, health), few distinct values so that conflicts are common.
func resolveInput(data []byte) []*Endpoint {
	sources := []string{"east", "west", "west2", "other", ""}
	var eps []*Endpoint
	for i := 0; i+3 < len(data) && len(eps) < 64; i += 4 {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, data[i] % 8}), 80)
		eps = append(eps, &Endpoint{
			Addr:   addr,
			Source: sources[int(data[i+1])%len(sources)],
			Key:    strconv.Itoa(int(data[i+2] % 3)),
			Health: Health(data[i+3] % 4),
			Zone:   strconv.Itoa(int(data[i+3] / 4 % 2)),
		})
	}
	return eps
}

func FuzzResolve(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 1, 0, 1, 1, 2, 1, 3, 2, 3, 2, 0}, uint64(1))
	f.Add([]byte{1, 0, 0, 3, 1, 1, 1, 1, 1, 2, 2, 1, 5, 3, 0, 2, 5, 4, 1, 6, 7, 0, 2, 1}, uint64(1))
	f.Add([]byte{3, 3, 3, 3, 3, 3, 3, 7, 3, 2, 1, 0, 3, 1, 2, 4}, uint64(1))
	prio := map[string]int{"east": 2, "west": 1, "west2": 1}
	noPanic := func(rules []FederationRule) *Federation {
		fed, err := NewFederationWithDefaults(rules, prio, FederationDefaults{PanicThreshold: 0})
		if err != nil {
			f.Fatal(err)
		}
		return fed
	}
	other := []FederationRule{{Authority: Authority{"web.demo", 0}, Failover: []Tier{{Sources: []string{"other"}, MinHealthy: 2}}}}
	// With panic mode off every property below holds; with it on (the
	// default threshold) only those that do not depend on health: the
	// panic cases themselves are table tests.
	feds := []struct {
		fed   *Federation
		panic bool
	}{
		{nil, true},
		{noPanic(nil), false},
		{noPanic(tiered), false},
		{noPanic(other), false},
		{mustFederation(f, tiered, prio), true},
		{mustFederation(f, other, prio), true},
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		eps := resolveInput(data)
		before := deepCopy(eps)
		for _, tc := range feds {
			fed := tc.fed
			got := fed.Resolve(webAuth, eps)
			assertUnchanged(t, before, eps)
			for i, e := range got {
				if !tc.panic && !e.Health.Serving() {
					t.Fatalf("served a %v endpoint", e.Health)
				}
				if i > 0 && got[i-1].Addr.Compare(e.Addr) >= 0 {
					t.Fatalf("not sorted or not deduplicated: %s", describe(got))
				}
				if !slices.Contains(eps, e) {
					t.Fatal("returned an endpoint not in the input")
				}
				// No serving endpoint of the same address and the same
				// tier beats the winner.
				for _, o := range eps {
					if !tc.panic && o.Addr == e.Addr && o.Health.Serving() && sameTier(fed, o, e) && fed.compare(o, e) < 0 {
						t.Fatalf("%+v lost to %+v", *e, *o)
					}
				}
			}
			s := slices.Clone(eps)
			rand.New(rand.NewPCG(seed, 3)).Shuffle(len(s), func(a, b int) { s[a], s[b] = s[b], s[a] })
			again := fed.Resolve(webAuth, s)
			if len(again) != len(got) {
				t.Fatalf("shuffling changed the answer: %s vs %s", describe(got), describe(again))
			}
			for i := range got {
				if !got[i].Equal(again[i]) {
					t.Fatalf("shuffling changed the answer: %s vs %s", describe(got), describe(again))
				}
			}
		}
	})
}

func sameTier(f *Federation, a, b *Endpoint) bool {
	r := f.lookup(webAuth)
	if r == nil || len(r.rule.Failover) == 0 {
		return true
	}
	return r.tier(a.Source) == r.tier(b.Source)
}

func TestBackups(t *testing.T) {
	const (
		P = HealthPassing
		C = HealthCritical
	)
	f := mustFederation(t, tiered, nil)
	eps := []*Endpoint{
		fep("10.0.0.1:80", "east", "e", P),
		fep("10.0.0.2:80", "east", "e", P),
		fep("10.0.1.1:80", "west", "w", P),
		fep("10.0.1.2:80", "west", "w", C),   // evicted in its tier as Resolve would
		fep("10.0.0.1:80", "west2", "w2", P), // already served by east
		fep("10.0.2.1:80", "other", "o", P),  // the implicit last tier
	}
	served := f.Resolve(webAuth, eps)
	if got := describe(served); got != "10.0.0.1:80/east/e 10.0.0.2:80/east/e" {
		t.Fatalf("served %s", got)
	}
	var got []string
	for _, tier := range f.Backups(webAuth, eps, served) {
		got = append(got, describe(tier))
	}
	want := []string{"10.0.1.1:80/west/w", "10.0.2.1:80/other/o"}
	if !slices.Equal(got, want) {
		t.Fatalf("backups %q, want %q", got, want)
	}

	// east below min_healthy: west is served, and only what comes after it
	// is a backup (east is not offered: Tributary chose against it).
	eps[1] = fep("10.0.0.2:80", "east", "e", C)
	served = f.Resolve(webAuth, eps)
	if got := describe(served); got != "10.0.0.1:80/west2/w2 10.0.1.1:80/west/w" {
		t.Fatalf("served %s", got)
	}
	got = got[:0]
	for _, tier := range f.Backups(webAuth, eps, served) {
		got = append(got, describe(tier))
	}
	if want := []string{"10.0.2.1:80/other/o"}; !slices.Equal(got, want) {
		t.Fatalf("backups %q, want %q", got, want)
	}

	// No failover rule: no backups.
	if b := mustFederation(t, nil, nil).Backups(webAuth, eps, served); b != nil {
		t.Fatalf("backups without a rule: %v", b)
	}
}
