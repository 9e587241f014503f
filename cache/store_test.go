package cache

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

// Builders. Every call returns fresh values (new label maps included), so a
// second Apply of the same description is a no-op only if the store compares
// content rather than identity.

type epOpt func(*discovery.Endpoint)

func ep(addr string, opts ...epOpt) discovery.Endpoint {
	e := discovery.Endpoint{Addr: netip.MustParseAddrPort(addr)}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func weight(w uint32) epOpt { return func(e *discovery.Endpoint) { e.Weight = w } }

func health(h discovery.Health) epOpt { return func(e *discovery.Endpoint) { e.Health = h } }

// withLabels gives the endpoint m itself, not a copy.
func withLabels(m map[string]string) epOpt {
	return func(e *discovery.Endpoint) { e.Labels = m }
}

func labels(kv ...string) epOpt {
	return func(e *discovery.Endpoint) {
		e.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			e.Labels[kv[i]] = kv[i+1]
		}
	}
}

func auth(s string) discovery.Authority {
	a, err := discovery.ParseAuthority(s, 0)
	if err != nil {
		if i := strings.LastIndexByte(s, ':'); i >= 0 && s[i+1:] == "0" {
			return discovery.Authority{Host: s[:i]}
		}
		panic(err)
	}
	return a
}

func svc(authority string, eps ...discovery.Endpoint) discovery.Service {
	return discovery.Service{Authority: auth(authority), Endpoints: eps}
}

func opaque(s discovery.Service) discovery.Service { s.Opaque = true; return s }

func group(key string, svcs ...discovery.Service) discovery.Group {
	return discovery.Group{Key: key, Services: svcs}
}

func apply(t testing.TB, s *Store, provider string, groups ...discovery.Group) bool {
	t.Helper()
	changed, err := s.Apply(provider, groups)
	if err != nil {
		t.Fatalf("Apply(%q): %v", provider, err)
	}
	return changed
}

// watchFired reports whether ws fired within a short timeout.
func watchFired(ws memdb.WatchSet) bool {
	return !ws.Watch(time.After(50 * time.Millisecond))
}

// watch reads a and returns the watch set of that read.
func watch(s *Store, a string) memdb.WatchSet {
	ws := memdb.NewWatchSet()
	s.Snapshot().Service(ws, auth(a))
	return ws
}

// addrs summarises endpoints as "addr source/key".
func addrs(eps []*discovery.Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, fmt.Sprintf("%s %s/%s", e.Addr, e.Source, e.Key))
	}
	return out
}

func TestSchemaValid(t *testing.T) {
	if err := schema().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestApplyStampsProvenanceAndCopiesEndpoints(t *testing.T) {
	s := New()
	in := []discovery.Group{group("web",
		svc("web.demo:8080",
			ep("10.0.0.1:8080", labels("pod", "a")),
			discovery.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Source: "forged", Key: "forged"},
		),
	)}
	before := deepCopyGroups(in)

	if !apply(t, s, "file/a", in...) {
		t.Fatal("first Apply reported no change")
	}
	if !reflect.DeepEqual(in, before) {
		t.Fatalf("Apply modified its input:\n got %+v\nwant %+v", in, before)
	}

	st := s.Snapshot().Service(nil, auth("web.demo:8080"))
	if got, want := addrs(st.Endpoints), []string{"10.0.0.1:8080 file/a/web", "10.0.0.2:8080 file/a/web"}; !slices.Equal(got, want) {
		t.Fatalf("endpoints = %q, want %q", got, want)
	}
	for _, e := range st.Endpoints {
		for i := range in[0].Services[0].Endpoints {
			if e == &in[0].Services[0].Endpoints[i] {
				t.Fatal("the store retained a pointer into the caller's slice")
			}
		}
	}

}

// Label maps are kept as handed over (endpoints are immutable from then on):
// handing the same endpoint over again is a no-op, whether it brings the
// same map or an equal one, and a different map is a change.
func TestApplyComparesLabelsByContent(t *testing.T) {
	s := New()
	shared := map[string]string{"pod": "a", "team": "x"}
	if !apply(t, s, "file/a", group("web", svc("web.demo:8080", ep("10.0.0.1:8080", withLabels(shared))))) {
		t.Fatal("first Apply reported no change")
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		change bool
	}{
		{"same map", shared, false},
		{"equal map", map[string]string{"team": "x", "pod": "a"}, false},
		{"other value", map[string]string{"pod": "b", "team": "x"}, true},
		{"other key", map[string]string{"pod": "b", "zone2": "x"}, true},
		{"fewer labels", map[string]string{"pod": "b"}, true},
		{"none", nil, true},
		{"none again, empty map", map[string]string{}, false},
	} {
		if got := apply(t, s, "file/a", group("web", svc("web.demo:8080", ep("10.0.0.1:8080", withLabels(tc.labels))))); got != tc.change {
			t.Errorf("%s: Apply changed = %v, want %v", tc.name, got, tc.change)
		}
		st := s.Snapshot().Service(nil, auth("web.demo:8080"))
		if len(st.Endpoints) != 1 || !maps.Equal(st.Endpoints[0].Labels, tc.labels) || len(tc.labels) == 0 && st.Endpoints[0].Labels != nil {
			t.Errorf("%s: stored labels = %v, want %v", tc.name, st.Endpoints[0].Labels, tc.labels)
		}
	}
}

func deepCopyGroups(gs []discovery.Group) []discovery.Group {
	out := slices.Clone(gs)
	for i := range out {
		out[i].Services = slices.Clone(out[i].Services)
		for j := range out[i].Services {
			out[i].Services[j].Endpoints = slices.Clone(out[i].Services[j].Endpoints)
			for k := range out[i].Services[j].Endpoints {
				e := &out[i].Services[j].Endpoints[k]
				e.Labels = maps.Clone(e.Labels)
			}
		}
	}
	return out
}

func TestApplyNoOpWakesNobody(t *testing.T) {
	state := func() []discovery.Group {
		return []discovery.Group{
			group("web",
				opaque(svc("web.demo:8080", ep("10.0.0.1:8080", labels("pod", "a"), weight(5)), ep("10.0.0.2:8080"))),
				svc("empty.demo:80"),
			),
			group("db", svc("db.demo:5432", ep("10.0.1.1:5432", labels()))),
		}
	}
	s := New()
	apply(t, s, "file/a", state()...)

	ws := memdb.NewWatchSet()
	snap := s.Snapshot()
	for _, a := range []string{"web.demo:8080", "web.demo:0", "empty.demo:80", "db.demo:5432"} {
		snap.Service(ws, auth(a))
	}
	snap.EndpointsByAddr(ws, netip.MustParseAddrPort("10.0.0.1:8080"))

	if apply(t, s, "file/a", state()...) {
		t.Fatal("re-applying identical content reported a change")
	}
	// An empty label map equals no labels, and withdrawing an unknown key is nothing.
	again := state()
	again[1].Services[0].Endpoints[0].Labels = nil
	if apply(t, s, "file/a", append(again, group("never-seen"))...) {
		t.Fatal("nil vs empty labels or withdrawing an unknown key reported a change")
	}
	if changed, err := s.Apply("file/a", nil); changed || err != nil {
		t.Fatalf("Apply(nil) = %v, %v", changed, err)
	}
	if watchFired(ws) {
		t.Fatal("a no-op Apply woke a watcher")
	}
}

func TestWatchFiresOnlyForChangedHost(t *testing.T) {
	base := func() []discovery.Group {
		return []discovery.Group{
			group("web", svc("web.demo:8080", ep("10.0.0.1:8080"), ep("10.0.0.2:8080"))),
			group("api", svc("api.demo:8080", ep("10.0.2.1:8080"))),
		}
	}
	cases := []struct {
		name     string
		provider string
		groups   []discovery.Group
		// otherPort: the change is on web.demo:9090, which a read of
		// web.demo:8080 does not return; its watch may or may not fire.
		otherPort bool
	}{
		{name: "endpoint changed", provider: "p", groups: []discovery.Group{group("web", svc("web.demo:8080", ep("10.0.0.1:8080", weight(7)), ep("10.0.0.2:8080")))}},
		{name: "endpoint health changed", provider: "p", groups: []discovery.Group{group("web", svc("web.demo:8080", ep("10.0.0.1:8080", health(discovery.HealthCritical)), ep("10.0.0.2:8080")))}},
		{name: "endpoint added", provider: "p", groups: []discovery.Group{group("web", svc("web.demo:8080", ep("10.0.0.1:8080"), ep("10.0.0.2:8080"), ep("10.0.0.3:8080")))}},
		{name: "endpoint removed", provider: "p", groups: []discovery.Group{group("web", svc("web.demo:8080", ep("10.0.0.1:8080")))}},
		{name: "opaque flipped", provider: "p", groups: []discovery.Group{group("web", opaque(svc("web.demo:8080", ep("10.0.0.1:8080"), ep("10.0.0.2:8080"))))}},
		{name: "key withdrawn", provider: "p", groups: []discovery.Group{group("web")}},
		{name: "another provider asserts it", provider: "q", groups: []discovery.Group{group("web", svc("web.demo:8080"))}},
		{name: "another port of the host", provider: "p", groups: []discovery.Group{group("web", svc("web.demo:8080", ep("10.0.0.1:8080"), ep("10.0.0.2:8080")), svc("web.demo:9090", ep("10.0.0.1:9090")))}, otherPort: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			apply(t, s, "p", base()...)
			webPort, webAll, api := watch(s, "web.demo:8080"), watch(s, "web.demo:0"), watch(s, "api.demo:8080")

			if !apply(t, s, tc.provider, tc.groups...) {
				t.Fatal("Apply reported no change")
			}
			if !tc.otherPort && !watchFired(webPort) {
				t.Error("watch on web.demo:8080 did not fire")
			}
			if !watchFired(webAll) {
				t.Error("watch on web.demo (all ports) did not fire")
			}
			if watchFired(api) {
				t.Error("watch on api.demo:8080 fired for a change of web.demo")
			}
		})
	}
}

func TestApplyMergeRules(t *testing.T) {
	s := New()
	apply(t, s, "p",
		group("dup-key", svc("old.demo:80", ep("10.9.9.9:80"))),
		group("web",
			svc("web.demo:8080", ep("10.0.0.1:8080", weight(1)), ep("10.0.0.2:8080")),
			opaque(svc("WEB.Demo.:8080", ep("10.0.0.1:8080", weight(2)), ep("10.0.0.3:8080"))),
			svc("web.demo:9090", ep("10.0.0.1:9090")),
			svc("other.demo:8080", ep("10.0.0.1:8080", weight(9))),
		),
		group("dup-key", svc("new.demo:80", ep("10.8.8.8:80"))),
	)
	snap := s.Snapshot()

	st := snap.Service(nil, auth("web.demo:8080"))
	if !st.Exists || !st.Opaque {
		t.Fatalf("merged service: exists=%v opaque=%v, want true, true", st.Exists, st.Opaque)
	}
	if got, want := addrs(st.Endpoints), []string{"10.0.0.1:8080 p/web", "10.0.0.2:8080 p/web", "10.0.0.3:8080 p/web"}; !slices.Equal(got, want) {
		t.Fatalf("merged endpoints = %q, want %q", got, want)
	}
	if w := st.Endpoints[0].Weight; w != 2 {
		t.Fatalf("duplicate address: weight %d, want the last one (2)", w)
	}
	if st := snap.Service(nil, auth("Web.Demo:9090")); len(st.Endpoints) != 1 || st.Opaque {
		t.Fatalf("web.demo:9090 = %+v, want one non-opaque endpoint", st)
	}
	if st := snap.Service(nil, auth("other.demo:8080")); len(st.Endpoints) != 1 || st.Endpoints[0].Weight != 9 {
		t.Fatalf("same address under another authority must stay separate: %+v", st)
	}
	if snap.Service(nil, auth("old.demo:80")).Exists || !snap.Service(nil, auth("new.demo:80")).Exists {
		t.Fatal("a key listed twice: the last group must win")
	}
	if got := s.Keys("p"); !slices.Equal(got, []string{"dup-key", "web"}) {
		t.Fatalf("Keys = %q", got)
	}
	for _, row := range snap.Dump() {
		if row.Authority.Host != strings.ToLower(row.Authority.Host) || strings.HasSuffix(row.Authority.Host, ".") {
			t.Fatalf("host stored in non-canonical form: %q", row.Authority.Host)
		}
	}
}

func TestApplyReplacesGroupRows(t *testing.T) {
	s := New()
	apply(t, s, "p", group("g",
		svc("a.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80")),
		svc("b.demo:80", ep("10.0.0.3:80")),
	))
	if !apply(t, s, "p", group("g", svc("a.demo:80", ep("10.0.0.2:80", weight(3)), ep("10.0.0.4:80")))) {
		t.Fatal("no change reported")
	}
	snap := s.Snapshot()
	st := snap.Service(nil, auth("a.demo:80"))
	if got, want := addrs(st.Endpoints), []string{"10.0.0.2:80 p/g", "10.0.0.4:80 p/g"}; !slices.Equal(got, want) {
		t.Fatalf("endpoints = %q, want %q", got, want)
	}
	if st.Endpoints[0].Weight != 3 {
		t.Fatalf("updated endpoint weight = %d, want 3", st.Endpoints[0].Weight)
	}
	if snap.Service(nil, auth("b.demo:80")).Exists {
		t.Fatal("a service the group no longer lists is still there")
	}
	if n := len(snap.EndpointsByAddr(nil, netip.MustParseAddrPort("10.0.0.3:80"))); n != 0 {
		t.Fatalf("endpoint of a dropped service still indexed by address (%d rows)", n)
	}
}

func TestEmptyGroupWithdrawsOnlyItsKey(t *testing.T) {
	s := New()
	apply(t, s, "p", group("a", svc("a.demo:80", ep("10.0.0.1:80"))), group("b", svc("b.demo:80", ep("10.0.0.2:80"))))
	apply(t, s, "q", group("a", svc("a.demo:80", ep("10.0.0.3:80"))))

	if !apply(t, s, "p", group("a")) {
		t.Fatal("withdrawing a key reported no change")
	}
	if got := s.Keys("p"); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("Keys(p) = %q, want [b]", got)
	}
	if got := s.Keys("q"); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("Keys(q) = %q, want [a]", got)
	}
	snap := s.Snapshot()
	if got, want := addrs(snap.Service(nil, auth("a.demo:80")).Endpoints), []string{"10.0.0.3:80 q/a"}; !slices.Equal(got, want) {
		t.Fatalf("a.demo:80 = %q, want %q", got, want)
	}
	if got, want := addrs(snap.Service(nil, auth("b.demo:80")).Endpoints), []string{"10.0.0.2:80 p/b"}; !slices.Equal(got, want) {
		t.Fatalf("b.demo:80 = %q, want %q", got, want)
	}
	if apply(t, s, "p", group("a")) {
		t.Fatal("withdrawing a key twice reported a change")
	}
}

func TestServiceExistenceAndPorts(t *testing.T) {
	s := New()
	apply(t, s, "p",
		group("g1",
			svc("empty.demo:80"),
			svc("web.demo:8080", ep("10.0.0.1:8080")),
			svc("web.demo:9090", ep("10.0.0.1:9090")),
			svc("any.demo:0", ep("10.0.1.1:7000")),
		),
		group("g2",
			svc("mixed.demo:0", ep("10.0.2.1:1111")),
			svc("mixed.demo:8080", ep("10.0.2.2:8080")),
		),
	)
	cases := []struct {
		ask    string
		exists bool
		eps    []string
	}{
		{"empty.demo:80", true, nil},
		{"empty.demo:81", false, nil},
		{"unknown.demo:80", false, nil},
		{"web.demo:8080", true, []string{"10.0.0.1:8080 p/g1"}},
		{"web.demo:9090", true, []string{"10.0.0.1:9090 p/g1"}},
		{"web.demo:1234", false, nil},
		{"web.demo:0", true, []string{"10.0.0.1:8080 p/g1", "10.0.0.1:9090 p/g1"}},
		{"we.demo:8080", false, nil},
		{"any.demo:443", true, []string{"10.0.1.1:7000 p/g1"}},
		{"any.demo:0", true, []string{"10.0.1.1:7000 p/g1"}},
		{"mixed.demo:8080", true, []string{"10.0.2.1:1111 p/g2", "10.0.2.2:8080 p/g2"}},
		{"mixed.demo:9", true, []string{"10.0.2.1:1111 p/g2"}},
	}
	snap := s.Snapshot()
	for _, tc := range cases {
		t.Run(tc.ask, func(t *testing.T) {
			st := snap.Service(nil, auth(tc.ask))
			if st.Exists != tc.exists {
				t.Errorf("Exists = %v, want %v", st.Exists, tc.exists)
			}
			if got := addrs(st.Endpoints); !slices.Equal(got, append([]string{}, tc.eps...)) {
				t.Errorf("endpoints = %q, want %q", got, tc.eps)
			}
		})
	}
}

func TestServiceEndpointOrder(t *testing.T) {
	s := New()
	apply(t, s, "zeta", group("k", svc("web.demo:80", ep("10.0.0.2:80"), ep("10.0.0.1:80"))))
	apply(t, s, "alpha", group("k2", svc("web.demo:80", ep("10.0.0.1:80"))), group("k1", svc("web.demo:80", ep("10.0.0.1:80"))))
	apply(t, s, "mid", group("k", svc("web.demo:0", ep("[2001:db8::1]:80"), ep("9.9.9.9:80"))))
	got := addrs(s.Snapshot().Service(nil, auth("web.demo:80")).Endpoints)
	want := []string{
		"9.9.9.9:80 mid/k",
		"10.0.0.1:80 alpha/k1",
		"10.0.0.1:80 alpha/k2",
		"10.0.0.1:80 zeta/k",
		"10.0.0.2:80 zeta/k",
		"[2001:db8::1]:80 mid/k",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("order:\n got %q\nwant %q", got, want)
	}
}

func TestDropProvider(t *testing.T) {
	s := New()
	apply(t, s, "p", group("a", svc("a.demo:80", ep("10.0.0.1:80"))), group("b", svc("b.demo:80")))
	apply(t, s, "q", group("a", svc("a.demo:80", ep("10.0.0.2:80"))))
	wsA, wsB := watch(s, "a.demo:80"), watch(s, "b.demo:80")

	changed, err := s.DropProvider("p")
	if err != nil || !changed {
		t.Fatalf("DropProvider = %v, %v; want true, nil", changed, err)
	}
	if !watchFired(wsA) || !watchFired(wsB) {
		t.Fatal("DropProvider did not wake the watchers of its hosts")
	}
	if got := s.Keys("p"); len(got) != 0 {
		t.Fatalf("Keys(p) = %q after DropProvider", got)
	}
	snap := s.Snapshot()
	if got, want := addrs(snap.Service(nil, auth("a.demo:80")).Endpoints), []string{"10.0.0.2:80 q/a"}; !slices.Equal(got, want) {
		t.Fatalf("a.demo:80 = %q, want %q", got, want)
	}
	if snap.Service(nil, auth("b.demo:80")).Exists {
		t.Fatal("b.demo:80 still exists")
	}
	if _, ok := snap.Providers()["p"]; ok {
		t.Fatal("Providers still lists p")
	}

	ws := watch(s, "a.demo:80")
	if changed, err := s.DropProvider("p"); changed || err != nil {
		t.Fatalf("second DropProvider = %v, %v; want false, nil", changed, err)
	}
	if watchFired(ws) {
		t.Fatal("a no-op DropProvider woke a watcher")
	}
	if _, err := s.DropProvider(""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("DropProvider(\"\") = %v, want ErrInvalid", err)
	}
}

// The go-memdb compound-prefix trap: a prefix read of "consul/dc1" must not
// match "consul/dc10".
func TestProviderNamePrefixIsolation(t *testing.T) {
	const dc1, dc10 = "consul/dc1", "consul/dc10"
	s := New()
	// The hosts share no prefix: a radix node split between two hosts may
	// wake a neighbour's watcher, which is not what this test is about.
	apply(t, s, dc1, group("web", svc("api.dc1.consul:80", ep("10.1.0.1:80"))))
	apply(t, s, dc10,
		group("web", svc("web.dc10.consul:80", ep("10.10.0.1:80"))),
		group("db", svc("db.dc10.consul:5432", ep("10.10.0.2:5432"))),
	)
	dc10Dump := func() []ServiceRow {
		var out []ServiceRow
		for _, r := range s.Snapshot().Dump() {
			if r.Provider == dc10 {
				out = append(out, r)
			}
		}
		return out
	}
	want10 := dc10Dump()
	ws10 := watch(s, "web.dc10.consul:80")

	if got := s.Keys(dc1); !slices.Equal(got, []string{"web"}) {
		t.Fatalf("Keys(%s) = %q, want [web]", dc1, got)
	}
	if !apply(t, s, dc1, group("web")) {
		t.Fatal("withdraw reported no change")
	}
	if got := s.Keys(dc1); len(got) != 0 {
		t.Fatalf("Keys(%s) = %q after withdrawing its only key", dc1, got)
	}
	apply(t, s, dc1, group("web", svc("api.dc1.consul:80", ep("10.1.0.1:80"))))
	if changed, err := s.DropProvider(dc1); !changed || err != nil {
		t.Fatalf("DropProvider(%s) = %v, %v", dc1, changed, err)
	}
	if changed, _ := s.DropProvider(dc1); changed {
		t.Fatalf("DropProvider(%s) twice reported a change: it touched %s", dc1, dc10)
	}

	if got := s.Keys(dc10); !slices.Equal(got, []string{"db", "web"}) {
		t.Fatalf("Keys(%s) = %q, want [db web]", dc10, got)
	}
	if got := dc10Dump(); !reflect.DeepEqual(got, want10) {
		t.Fatalf("%s rows changed:\n got %+v\nwant %+v", dc10, got, want10)
	}
	if watchFired(ws10) {
		t.Fatalf("writes of %s woke a watcher of %s", dc1, dc10)
	}
	if st := s.Snapshot().Providers(); st[dc10] != (ProviderStats{Keys: 2, Services: 2, Endpoints: 2}) || len(st) != 1 {
		t.Fatalf("Providers = %+v", st)
	}
}

func TestApplyRejectsInvalidInput(t *testing.T) {
	valid := group("ok", svc("ok.demo:80", ep("10.0.0.9:80")))
	cases := []struct {
		name     string
		provider string
		groups   []discovery.Group
	}{
		{"empty provider", "", []discovery.Group{valid}},
		{"NUL in provider", "p\x00", []discovery.Group{valid}},
		{name: "empty group key", provider: "p", groups: []discovery.Group{group("", svc("web.demo:80"))}},
		{name: "empty group key withdrawing", provider: "p", groups: []discovery.Group{group("")}},
		{name: "NUL in group key", provider: "p", groups: []discovery.Group{group("a\x00b", svc("web.demo:80"))}},
		{name: "empty host", provider: "p", groups: []discovery.Group{group("g", discovery.Service{Authority: discovery.Authority{Port: 80}})}},
		{name: "host is a dot", provider: "p", groups: []discovery.Group{group("g", discovery.Service{Authority: discovery.Authority{Host: ".", Port: 80}})}},
		{name: "host with a space", provider: "p", groups: []discovery.Group{group("g", discovery.Service{Authority: discovery.Authority{Host: "a b", Port: 80}})}},
		{name: "host with a NUL", provider: "p", groups: []discovery.Group{group("g", discovery.Service{Authority: discovery.Authority{Host: "a\x00b", Port: 80}})}},
		{name: "host too long", provider: "p", groups: []discovery.Group{group("g", discovery.Service{Authority: discovery.Authority{Host: strings.Repeat("a", discovery.MaxHostLen+1), Port: 80}})}},
		{name: "zero address", provider: "p", groups: []discovery.Group{group("g", svc("web.demo:80", discovery.Endpoint{}))}},
		{name: "address without port", provider: "p", groups: []discovery.Group{group("g", svc("web.demo:80", ep("10.0.0.1:0")))}},
		{name: "bad group after a valid one", provider: "p", groups: []discovery.Group{valid, group("g", svc("web.demo:80", discovery.Endpoint{}))}},
		{name: "withdraw then a bad group", provider: "p", groups: []discovery.Group{group("existing"), group("g", discovery.Service{Endpoints: []discovery.Endpoint{ep("10.0.0.1:80")}})}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			apply(t, s, "p", group("existing", svc("web.demo:80", ep("10.0.0.1:80"))))
			before := s.Snapshot().Dump()
			ws := watch(s, "web.demo:80")
			s.Snapshot().Service(ws, auth("ok.demo:80"))

			changed, err := s.Apply(tc.provider, tc.groups)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if changed {
				t.Error("changed = true on rejected input")
			}
			if after := s.Snapshot().Dump(); !reflect.DeepEqual(after, before) {
				t.Errorf("rejected input changed the store:\n got %+v\nwant %+v", after, before)
			}
			if watchFired(ws) {
				t.Error("rejected input woke a watcher")
			}
		})
	}
}

func TestEndpointsByAddr(t *testing.T) {
	s := New()
	apply(t, s, "q", group("k", svc("web.demo:80", ep("10.0.0.1:80", weight(1)))))
	apply(t, s, "p",
		group("k2", svc("web.demo:80", ep("10.0.0.1:80", weight(2)))),
		group("k1",
			svc("web.demo:80", ep("10.0.0.1:80", weight(3)), ep("10.0.0.1:81"), ep("[::ffff:10.0.0.1]:80")),
			svc("alias.demo:0", ep("10.0.0.1:80", weight(4))),
		),
	)
	ws := memdb.NewWatchSet()
	got := s.Snapshot().EndpointsByAddr(ws, netip.MustParseAddrPort("10.0.0.1:80"))
	var desc []string
	for _, m := range got {
		desc = append(desc, fmt.Sprintf("%s %s/%s w%d", m.Authority, m.Endpoint.Source, m.Endpoint.Key, m.Endpoint.Weight))
	}
	want := []string{"alias.demo p/k1 w4", "web.demo:80 p/k1 w3", "web.demo:80 p/k2 w2", "web.demo:80 q/k w1"}
	if !slices.Equal(desc, want) {
		t.Fatalf("EndpointsByAddr:\n got %q\nwant %q", desc, want)
	}
	if n := len(s.Snapshot().EndpointsByAddr(nil, netip.MustParseAddrPort("[::ffff:10.0.0.1]:80"))); n != 1 {
		t.Fatalf("IPv4-mapped address: %d rows, want 1 (distinct from the IPv4 one)", n)
	}
	if n := len(s.Snapshot().EndpointsByAddr(nil, netip.MustParseAddrPort("10.0.0.2:80"))); n != 0 {
		t.Fatalf("unknown address: %d rows", n)
	}

	wsOther := memdb.NewWatchSet()
	s.Snapshot().EndpointsByAddr(wsOther, netip.MustParseAddrPort("10.0.0.1:81"))
	apply(t, s, "q", group("k", svc("web.demo:80", ep("10.0.0.1:80", weight(9)))))
	if !watchFired(ws) {
		t.Fatal("changing the address's row did not fire its watch")
	}
	if watchFired(wsOther) {
		t.Fatal("changing 10.0.0.1:80 fired the watch of 10.0.0.1:81")
	}
}

func TestDumpOrder(t *testing.T) {
	s := New()
	apply(t, s, "q", group("k", svc("b.demo:80", ep("10.0.0.2:80"), ep("10.0.0.1:80"))))
	apply(t, s, "p",
		group("k2", svc("b.demo:80"), opaque(svc("a.demo:443"))),
		group("k1", svc("b.demo:80", ep("10.0.0.3:80")), svc("b.demo:0"), svc("a.demo:80")),
	)
	var got []string
	for _, r := range s.Snapshot().Dump() {
		line := fmt.Sprintf("%s %s/%s opaque=%v", r.Authority, r.Provider, r.Key, r.Opaque)
		for _, e := range r.Endpoints {
			line += " " + e.Addr.String()
		}
		got = append(got, line)
	}
	want := []string{
		"a.demo:80 p/k1 opaque=false",
		"a.demo:443 p/k2 opaque=true",
		"b.demo p/k1 opaque=false",
		"b.demo:80 p/k1 opaque=false 10.0.0.3:80",
		"b.demo:80 p/k2 opaque=false",
		"b.demo:80 q/k opaque=false 10.0.0.1:80 10.0.0.2:80",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Dump:\n got %q\nwant %q", got, want)
	}
}

func TestProvidersCounts(t *testing.T) {
	s := New()
	apply(t, s, "p",
		group("a", svc("a.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80")), svc("a.demo:81")),
		group("b", svc("b.demo:80", ep("10.0.0.1:80"))),
	)
	apply(t, s, "q", group("only-empty", svc("c.demo:80")))
	apply(t, s, "r", group("gone", svc("d.demo:80", ep("10.0.0.4:80"))))
	apply(t, s, "r", group("gone"))

	got := s.Snapshot().Providers()
	want := map[string]ProviderStats{
		"p": {Keys: 2, Services: 3, Endpoints: 3},
		"q": {Keys: 1, Services: 1, Endpoints: 0},
	}
	if !maps.Equal(got, want) {
		t.Fatalf("Providers = %+v, want %+v", got, want)
	}
}

func TestSnapshotIsolation(t *testing.T) {
	s := New()
	apply(t, s, "p", group("g", svc("web.demo:80", ep("10.0.0.1:80"))))
	old := s.Snapshot()
	apply(t, s, "p", group("g", svc("web.demo:80", ep("10.0.0.2:80"))))
	if got, want := addrs(old.Service(nil, auth("web.demo:80")).Endpoints), []string{"10.0.0.1:80 p/g"}; !slices.Equal(got, want) {
		t.Fatalf("old snapshot sees %q, want %q", got, want)
	}
	if got, want := addrs(s.Snapshot().Service(nil, auth("web.demo:80")).Endpoints), []string{"10.0.0.2:80 p/g"}; !slices.Equal(got, want) {
		t.Fatalf("new snapshot sees %q, want %q", got, want)
	}
}

func TestKeysSortedAndUnknown(t *testing.T) {
	s := New()
	apply(t, s, "p", group("b", svc("x.demo:80")), group("a", svc("x.demo:81"), svc("y.demo:80")), group("a!", svc("z.demo:80")))
	if got, want := s.Keys("p"), []string{"a", "a!", "b"}; !slices.Equal(got, want) {
		t.Fatalf("Keys = %q, want %q", got, want)
	}
	if got := s.Keys("nobody"); len(got) != 0 {
		t.Fatalf("Keys(unknown) = %q", got)
	}
	if got := s.Keys(""); len(got) != 0 {
		t.Fatalf("Keys(\"\") = %q", got)
	}
}

// Run with -race: concurrent writers and readers, every read consistent.
func TestConcurrentApplyAndRead(t *testing.T) {
	s := New()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			provider := fmt.Sprintf("p%d", w)
			for i := range 200 {
				n := i%5 + 1
				eps := make([]discovery.Endpoint, n)
				for j := range eps {
					eps[j] = ep(fmt.Sprintf("10.0.%d.%d:80", w, j+1), weight(uint32(i)))
				}
				if _, err := s.Apply(provider, []discovery.Group{group("g", svc("web.demo:80", eps...))}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				st := s.Snapshot().Service(nil, auth("web.demo:80"))
				// One provider's endpoints share a weight: its group is written whole.
				w := map[string]uint32{}
				for _, e := range st.Endpoints {
					if v, ok := w[e.Source]; ok && v != e.Weight {
						t.Error("a read saw half of a transaction")
						return
					}
					w[e.Source] = e.Weight
				}
			}
		}()
	}
	wg.Wait()
}

func TestHostVersionsTrackChanges(t *testing.T) {
	s := New()
	version := func(a string) (uint64, time.Time) {
		st := s.Snapshot().Service(nil, auth(a))
		return st.Version, st.Changed
	}
	if v, _ := version("web:80"); v != 0 {
		t.Fatalf("unknown host has version %d", v)
	}
	at := time.Unix(1000, 0)
	if _, err := s.ApplyAt("p", []discovery.Group{group("k", svc("web:80", ep("10.0.0.1:80"))), group("j", svc("api:80", ep("10.0.0.2:80")))}, at); err != nil {
		t.Fatal(err)
	}
	web1, changed := version("web:80")
	api1, _ := version("api:80")
	if web1 == 0 || web1 != api1 || !changed.Equal(at) {
		t.Fatalf("after first apply: web %d api %d changed %v", web1, api1, changed)
	}
	// A no-op keeps every version.
	apply(t, s, "p", group("k", svc("web:80", ep("10.0.0.1:80"))))
	if v, _ := version("web:80"); v != web1 {
		t.Fatalf("no-op moved the version %d -> %d", web1, v)
	}
	// A change to web moves web only.
	apply(t, s, "p", group("k", svc("web:80", ep("10.0.0.1:80", weight(3)))))
	web2, _ := version("web:80")
	if api2, _ := version("api:80"); web2 <= web1 || api2 != api1 {
		t.Fatalf("web %d -> %d, api %d -> %d", web1, web2, api1, api2)
	}
	// Dropping the provider moves both.
	if _, err := s.DropProvider("p"); err != nil {
		t.Fatal(err)
	}
	web3, _ := version("web:80")
	api3, _ := version("api:80")
	if web3 <= web2 || api3 <= api1 {
		t.Fatalf("after drop: web %d api %d", web3, api3)
	}
}

// TestServiceWatchesFireOnlyForTheirService: the watches a Service read
// adds (what a hub entry sleeps on) fire when that service changes, not
// when another does.
func TestServiceWatchesFireOnlyForTheirService(t *testing.T) {
	s := New()
	apply(t, s, "p", group("k", svc("web:80", ep("10.0.0.1:80")), svc("api:80", ep("10.0.0.2:80"))))
	for _, a := range []string{"web:80", "web"} {
		ws := memdb.NewWatchSet()
		if v := s.Snapshot().Service(ws, auth(a)).Version; v == 0 {
			t.Fatalf("%s: Service version 0", a)
		}
		other := memdb.NewWatchSet()
		s.Snapshot().Service(other, auth("api:80"))
		apply(t, s, "p", group("k", svc("web:80", ep("10.0.0.1:80", weight(uint32(len(a))))), svc("api:80", ep("10.0.0.2:80"))))
		if !watchFired(ws) {
			t.Fatalf("%s: watch did not fire on a change of web", a)
		}
		if watchFired(other) {
			t.Fatalf("%s: api's watch fired on a change of web", a)
		}
	}
}

// Endpoint ids start with the host: a read of "web" must not return the rows
// of "web2" or "we", and a change of one must not wake the other's watchers.
func TestHostNamePrefixIsolation(t *testing.T) {
	s := New()
	base := func(w uint32) []discovery.Group {
		return []discovery.Group{
			group("we", svc("we:80", ep("10.0.0.1:80"))),
			group("web", svc("web:80", ep("10.0.0.2:80")), svc("web:0", ep("10.0.0.3:80"))),
			group("web2", svc("web2:80", ep("10.0.0.4:80", weight(w))), svc("web2:0", ep("10.0.0.5:80"))),
		}
	}
	apply(t, s, "p", base(1)...)
	snap := s.Snapshot()
	for _, tc := range []struct {
		ask string
		eps []string
	}{
		{"we:80", []string{"10.0.0.1:80 p/we"}},
		{"we:0", []string{"10.0.0.1:80 p/we"}},
		{"web:80", []string{"10.0.0.2:80 p/web", "10.0.0.3:80 p/web"}},
		{"web:0", []string{"10.0.0.2:80 p/web", "10.0.0.3:80 p/web"}},
		{"web:81", []string{"10.0.0.3:80 p/web"}},
		{"web2:80", []string{"10.0.0.4:80 p/web2", "10.0.0.5:80 p/web2"}},
		{"web2:0", []string{"10.0.0.4:80 p/web2", "10.0.0.5:80 p/web2"}},
		{"w:80", []string{}},
		{"web2x:0", []string{}},
	} {
		if got := addrs(snap.Service(nil, auth(tc.ask)).Endpoints); !slices.Equal(got, tc.eps) {
			t.Errorf("%s: endpoints = %q, want %q", tc.ask, got, tc.eps)
		}
	}

	wsWeb, wsWebAll, wsWe := watch(s, "web:80"), watch(s, "web:0"), watch(s, "we:80")
	wsWeb2 := watch(s, "web2:80")
	apply(t, s, "p", base(2)...) // changes an endpoint of web2:80 only
	if !watchFired(wsWeb2) {
		t.Fatal("watch on web2:80 did not fire")
	}
	if watchFired(wsWeb) || watchFired(wsWebAll) || watchFired(wsWe) {
		t.Fatal("a change of web2 woke a watcher of web or we")
	}
}

// Under one authority, a group's or a provider's rows must not take in
// those of a provider or key that its name prefixes.
func TestNamePrefixesUnderOneHost(t *testing.T) {
	const dc1, dc10 = "consul/dc1", "consul/dc10"
	s := New()
	apply(t, s, dc1,
		group("k", svc("web.demo:80", ep("10.0.0.1:80"))),
		group("k1", svc("web.demo:80", ep("10.0.0.2:80")), svc("web.demo:0", ep("10.0.0.3:80"))),
	)
	apply(t, s, dc10, group("k", svc("web.demo:80", ep("10.0.0.4:80"))), group("k1", svc("web.demo:80", ep("10.0.0.5:80"))))
	read := func() []string { return addrs(s.Snapshot().Service(nil, auth("web.demo:80")).Endpoints) }
	want := []string{"10.0.0.1:80 consul/dc1/k", "10.0.0.2:80 consul/dc1/k1", "10.0.0.3:80 consul/dc1/k1", "10.0.0.4:80 consul/dc10/k", "10.0.0.5:80 consul/dc10/k1"}
	if got := read(); !slices.Equal(got, want) {
		t.Fatalf("endpoints = %q, want %q", got, want)
	}

	if apply(t, s, dc1, group("k", svc("web.demo:80", ep("10.0.0.1:80")))) {
		t.Fatalf("re-applying %s/k reported a change: it read the rows of another key or provider", dc1)
	}
	if !apply(t, s, dc1, group("k")) {
		t.Fatal("withdraw reported no change")
	}
	want = slices.Delete(want, 0, 1)
	if got := read(); !slices.Equal(got, want) {
		t.Fatalf("after withdrawing %s/k: endpoints = %q, want %q", dc1, got, want)
	}
	if changed, err := s.DropProvider(dc1); !changed || err != nil {
		t.Fatalf("DropProvider(%s) = %v, %v", dc1, changed, err)
	}
	want = want[2:]
	if got := read(); !slices.Equal(got, want) {
		t.Fatalf("after dropping %s: endpoints = %q, want %q", dc1, got, want)
	}
	if st := s.Snapshot().Providers(); len(st) != 1 || st[dc10] != (ProviderStats{Keys: 2, Services: 2, Endpoints: 2}) {
		t.Fatalf("Providers = %+v", st)
	}
}

// TestAgainstModel applies random writes whose names prefix one another and
// compares every read with a plain model of the registry. Providers counts
// the endpoint table itself, so an endpoint row left without its service
// row shows there.
func TestAgainstModel(t *testing.T) {
	var (
		providers = []string{"p", "p2", "consul/dc1", "consul/dc10"}
		keys      = []string{"k", "k1", "k10", "j"}
		hosts     = []string{"web", "web2", "we", "a.b", "a.bc"}
		ports     = []uint16{0, 80, 8080}
		addrPool  = []string{"10.0.0.1:80", "10.0.0.1:81", "10.0.0.2:80", "[::ffff:10.0.0.1]:80", "[2001:db8::1]:80"}
	)
	type mEP struct {
		addr netip.AddrPort
		w    uint32
	}
	type mSvc struct {
		auth   discovery.Authority
		opaque bool
		eps    []mEP
	}
	model := map[string]map[string][]mSvc{} // provider -> key -> services
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(n int) []int { return rng.Perm(n)[:rng.IntN(n+1)] }

	s := New()
	for step := range 400 {
		provider := providers[rng.IntN(len(providers))]
		if rng.IntN(8) == 0 {
			_, had := model[provider]
			if changed, err := s.DropProvider(provider); err != nil || changed != had {
				t.Fatalf("step %d: DropProvider(%s) = %v, %v; want %v", step, provider, changed, err, had)
			}
			delete(model, provider)
		} else {
			var groups []discovery.Group
			for _, ki := range pick(2) {
				key := keys[(ki+step)%len(keys)]
				g := discovery.Group{Key: key}
				var ms []mSvc
				for _, ai := range pick(3) {
					a := discovery.Authority{Host: hosts[(ai+step)%len(hosts)], Port: ports[rng.IntN(len(ports))]}
					if slices.ContainsFunc(ms, func(m mSvc) bool { return m.auth == a }) {
						continue
					}
					m := mSvc{auth: a, opaque: rng.IntN(4) == 0}
					sv := discovery.Service{Authority: a, Opaque: m.opaque}
					for _, ei := range pick(3) {
						e := ep(addrPool[(ei+step)%len(addrPool)], weight(uint32(rng.IntN(3))))
						sv.Endpoints = append(sv.Endpoints, e)
						m.eps = append(m.eps, mEP{e.Addr, e.Weight})
					}
					g.Services = append(g.Services, sv)
					ms = append(ms, m)
				}
				groups = append(groups, g)
				if len(ms) == 0 {
					delete(model[provider], key)
					if len(model[provider]) == 0 {
						delete(model, provider)
					}
				} else {
					if model[provider] == nil {
						model[provider] = map[string][]mSvc{}
					}
					model[provider][key] = ms
				}
			}
			if _, err := s.Apply(provider, groups); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		}

		snap := s.Snapshot()
		for _, h := range hosts {
			for _, port := range []uint16{0, 80, 8080, 9} {
				type row struct {
					addr          netip.AddrPort
					provider, key string
					port          uint16
					w             uint32
				}
				var (
					exists, opq bool
					rows        []row
				)
				for p, byKey := range model {
					for k, svcs := range byKey {
						for _, m := range svcs {
							if m.auth.Host != h || port != 0 && m.auth.Port != 0 && m.auth.Port != port {
								continue
							}
							exists, opq = true, opq || m.opaque
							for _, e := range m.eps {
								rows = append(rows, row{e.addr, p, k, m.auth.Port, e.w})
							}
						}
					}
				}
				// Service's order: Addr, Source, Key, then the port served.
				slices.SortFunc(rows, func(x, y row) int {
					if c := x.addr.Compare(y.addr); c != 0 {
						return c
					}
					if c := strings.Compare(x.provider, y.provider); c != 0 {
						return c
					}
					if c := strings.Compare(x.key, y.key); c != 0 {
						return c
					}
					return cmp.Compare(x.port, y.port)
				})
				want := []string{}
				for _, r := range rows {
					want = append(want, fmt.Sprintf("%s %s/%s w%d", r.addr, r.provider, r.key, r.w))
				}
				st := snap.Service(nil, discovery.Authority{Host: h, Port: port})
				got := []string{}
				for _, e := range st.Endpoints {
					got = append(got, fmt.Sprintf("%s %s/%s w%d", e.Addr, e.Source, e.Key, e.Weight))
				}
				if st.Exists != exists || st.Opaque != opq || !slices.Equal(got, want) {
					t.Fatalf("step %d: Service(%s:%d) = exists %v opaque %v %q\nwant exists %v opaque %v %q",
						step, h, port, st.Exists, st.Opaque, got, exists, opq, want)
				}
			}
		}
		wantStats := map[string]ProviderStats{}
		for p, byKey := range model {
			var ps ProviderStats
			for _, svcs := range byKey {
				ps.Keys++
				for _, m := range svcs {
					ps.Services++
					ps.Endpoints += len(m.eps)
				}
			}
			wantStats[p] = ps
			if got, want := s.Keys(p), slices.Sorted(maps.Keys(byKey)); !slices.Equal(got, want) {
				t.Fatalf("step %d: Keys(%s) = %q, want %q", step, p, got, want)
			}
		}
		if got := snap.Providers(); !maps.Equal(got, wantStats) {
			t.Fatalf("step %d: Providers = %+v, want %+v", step, got, wantStats)
		}
		for _, a := range addrPool {
			addr := netip.MustParseAddrPort(a)
			n := 0
			for _, byKey := range model {
				for _, svcs := range byKey {
					for _, m := range svcs {
						for _, e := range m.eps {
							if e.addr == addr {
								n++
							}
						}
					}
				}
			}
			if got := len(snap.EndpointsByAddr(nil, addr)); got != n {
				t.Fatalf("step %d: EndpointsByAddr(%s): %d rows, want %d", step, a, got, n)
			}
		}
	}
}

// The store applies discovery's rules and no others: it rejects a group
// exactly when discovery.ValidateGroup does, and then with ErrInvalid.
func TestApplyRejectsWhatValidateGroupRejects(t *testing.T) {
	hosts := []string{"web.demo", "Web.Demo.", "[::1]", "[fe80::1%eth0]", "", ".", "a..b", ".a", "a:b", "[10.0.0.1]", "a b", "a/b", "\u212aeb", strings.Repeat("a", discovery.MaxHostLen+1)}
	addrs := []netip.AddrPort{{}, netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.1:0"), netip.MustParseAddrPort("[fe80::1%eth0]:80"), netip.MustParseAddrPort("[fe80::1%a\x00]:80")}
	for _, key := range []string{"k", "", "k\x00"} {
		for _, h := range hosts {
			for _, a := range addrs {
				g := discovery.Group{Key: key, Services: []discovery.Service{{Authority: discovery.Authority{Host: h, Port: 80}, Endpoints: []discovery.Endpoint{{Addr: a}}}}}
				verr := discovery.ValidateGroup(&g)
				_, err := New().Apply("p", []discovery.Group{g})
				if (err == nil) != (verr == nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
					t.Errorf("key %q host %q addr %v: Apply: %v; ValidateGroup: %v", key, h, a, err, verr)
				}
			}
		}
	}
}

// A hand-over larger than txnWrites is written in several transactions,
// each a set of groups sharing no host, and ends as one transaction would.
func TestLargeApplyIsSplitByHost(t *testing.T) {
	defer func(n int) { txnWrites = n }(txnWrites)
	txnWrites = 1

	s := New()
	// "a" holds web; "b" will take it over in the same hand-over as "a"
	// gives it up: they must go in one transaction.
	if _, err := s.Apply("p", []discovery.Group{group("a", svc("web:80", ep("10.0.0.1:80")))}); err != nil {
		t.Fatal(err)
	}
	v0 := s.Snapshot().Service(nil, auth("web:80")).Version
	handover := []discovery.Group{
		{Key: "a"},
		group("b", svc("web:80", ep("10.0.0.2:80"))),
		group("c", svc("api:80", ep("10.0.0.3:80"))),
		group("d", svc("db:80", ep("10.0.0.4:80"))),
	}
	for i := 0; i < 70; i++ { // enough groups to be split whatever their size
		handover = append(handover, group(fmt.Sprintf("e%02d", i), svc(fmt.Sprintf("s%d:80", i), ep(fmt.Sprintf("10.0.1.%d:80", i+1)))))
	}
	plans, err := plan(handover)
	if err != nil {
		t.Fatal(err)
	}
	sets := s.independent("p", plans)
	if len(sets) != len(handover)-1 || len(sets[0]) != 2 || plans[sets[0][0]].key != "a" || plans[sets[0][1]].key != "b" {
		t.Fatalf("sets %v: want a and b together, every other group alone", sets)
	}
	changed, err := s.Apply("p", handover)
	if err != nil || !changed {
		t.Fatalf("Apply = %v, %v", changed, err)
	}
	sn := s.Snapshot()
	web := sn.Service(nil, auth("web:80"))
	if len(web.Endpoints) != 1 || web.Endpoints[0].Key != "b" || web.Endpoints[0].Addr.String() != "10.0.0.2:80" {
		t.Errorf("web = %+v", web.Endpoints)
	}
	// One transaction per set: the last host written is len(sets) versions on.
	if last := sn.Service(nil, auth("s69:80")).Version; last != v0+uint64(len(sets)) {
		t.Errorf("version %d after %d sets from %d", last, len(sets), v0)
	}
	if got := s.Keys("p"); len(got) != len(handover)-1 {
		t.Errorf("keys %v", got)
	}
	// The same hand-over again changes nothing, in no transaction.
	if changed, err := s.Apply("p", handover); err != nil || changed {
		t.Errorf("again: Apply = %v, %v", changed, err)
	}
}

// A service with more endpoints than Service gathers on the stack reads
// back whole and sorted.
func TestServiceReadsManyEndpoints(t *testing.T) {
	s := New()
	var eps []discovery.Endpoint
	for i := 40; i > 0; i-- {
		eps = append(eps, ep(fmt.Sprintf("10.0.0.%d:80", i)))
	}
	if _, err := s.Apply("p", []discovery.Group{group("k", svc("web:80", eps...))}); err != nil {
		t.Fatal(err)
	}
	got := s.Snapshot().Service(nil, auth("web:80")).Endpoints
	if len(got) != 40 {
		t.Fatalf("%d endpoints, want 40", len(got))
	}
	for i, e := range got {
		if want := fmt.Sprintf("10.0.0.%d:80", i+1); e.Addr.String() != want {
			t.Fatalf("endpoint %d is %s, want %s", i, e.Addr, want)
		}
	}
}
