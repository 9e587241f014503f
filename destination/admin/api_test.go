package admin

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination/served"
	"github.com/tributary-mesh/tributary/discovery"
)

func getAPI[T any](t *testing.T, url string, wantCode int) T {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != wantCode {
		t.Fatalf("%s: %d, want %d", url, resp.StatusCode, wantCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: content type %q", url, ct)
	}
	var v T
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAPISourcesStates(t *testing.T) {
	srv, _, synced, statuses := setup(t)
	close(synced)
	failed := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	*statuses = append(*statuses,
		discovery.SourceStatus{Name: "a-new", Kind: "consul"},
		discovery.SourceStatus{Name: "b-down", Kind: "etcd", LastError: "dial: refused", LastErrorTime: failed},
		discovery.SourceStatus{Name: "c-ok", Kind: "file", Synced: true})
	v := getAPI[SourcesAPI](t, srv.URL+"/api/v1/sources", 200)
	got := map[string]SourceAPI{}
	for _, s := range v.Sources {
		got[s.Name] = s
	}
	if !v.Ready || v.Version != "test" || len(v.Sources) != 4 || v.Sources[0].Name != "a-new" {
		t.Fatalf("%+v", v)
	}
	for name, want := range map[string]string{"east": StateStale, "a-new": StateSyncing, "b-down": StateFailing, "c-ok": StateSynced} {
		if got[name].State != want {
			t.Errorf("%s: state %q, want %q", name, got[name].State, want)
		}
	}
	if e := got["east"]; e.Endpoints != 1 || e.Services != 1 || e.Keys != 1 || e.LastError != "f1:3: bad" {
		t.Errorf("east: %+v", e)
	}
	if !got["b-down"].LastErrorTime.Equal(failed) {
		t.Errorf("last error time %v", got["b-down"].LastErrorTime)
	}
	if v.Panicking != nil {
		t.Errorf("panicking without a tracker: %v", v.Panicking)
	}

	// With a tracker: at most 100 listed, all counted.
	var panics []served.Panic
	for i := range 150 {
		panics = append(panics, served.Panic{Authority: discovery.Authority{Host: fmt.Sprintf("s%03d.demo", i), Port: 80}, Serving: 0, Addresses: 1})
	}
	h := New(Options{Store: cache.New(), Gatherer: prometheus.NewRegistry(), Panicking: func() []served.Panic { return panics }})
	p := getAPI[SourcesAPI](t, newServer(t, h)+"/api/v1/sources", 200)
	if len(p.Panicking) != maxPanicking || p.PanickingTotal != 150 || p.Panicking[0].Authority != "s000.demo:80" {
		t.Errorf("panicking: %d listed, total %d", len(p.Panicking), p.PanickingTotal)
	}
}

func manyServices(t testing.TB, n int) *cache.Store {
	t.Helper()
	store := cache.New()
	groups := make([]discovery.Group, 0, n)
	for i := range n {
		a := discovery.Authority{Host: fmt.Sprintf("svc-%06d.demo", i), Port: 8080}
		h := discovery.HealthPassing
		if i%10 == 0 {
			h = discovery.HealthCritical
		}
		groups = append(groups, discovery.Group{Key: a.Host, Services: []discovery.Service{{Authority: a, Endpoints: []discovery.Endpoint{
			{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 8080), Health: h},
			{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 8080), Health: discovery.HealthPassing},
		}}}})
	}
	if _, err := store.Apply("bench", groups); err != nil {
		t.Fatal(err)
	}
	// A second source asserts one of them too: listed once, with both.
	if _, err := store.Apply("other", []discovery.Group{{Key: "x", Services: []discovery.Service{{Authority: discovery.Authority{Host: "svc-000007.demo", Port: 8080},
		Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("12.0.0.7:8080")}}}}}}); err != nil {
		t.Fatal(err)
	}
	return store
}

func TestAPIServicesSearchAndPages(t *testing.T) {
	h := New(Options{Store: manyServices(t, 1000), Gatherer: prometheus.NewRegistry()})
	srv := newServer(t, h)
	v := getAPI[ServicesAPI](t, srv+"/api/v1/services?limit=10&offset=5", 200)
	if v.Total != 1000 || len(v.Services) != 10 || v.Services[0].Authority != "svc-000005.demo:8080" {
		t.Fatalf("page: total %d, %d services, first %+v", v.Total, len(v.Services), v.Services)
	}
	s7 := v.Services[2]
	if s7.Authority != "svc-000007.demo:8080" || strings.Join(s7.Sources, ",") != "bench,other" || s7.Endpoints != 3 || s7.BySource["bench"] != 2 || s7.BySource["other"] != 1 {
		t.Fatalf("svc 7: %+v", s7)
	}
	// Search is a case-insensitive substring of host:port.
	v = getAPI[ServicesAPI](t, srv+"/api/v1/services?q=SVC-0001", 200)
	if v.Total != 100 || len(v.Services) != defaultLimit || v.Services[0].Authority != "svc-000100.demo:8080" {
		t.Fatalf("search: total %d first %+v", v.Total, v.Services[0])
	}
	// svc-000100 has one critical endpoint of two: evicted, not panic.
	if s := v.Services[0]; s.Served != 1 || s.ByHealth["critical"] != 1 || s.ByHealth["passing"] != 1 || s.Panic {
		t.Fatalf("svc 100: %+v", s)
	}
	v = getAPI[ServicesAPI](t, srv+"/api/v1/services?q=nothing-like-it", 200)
	if v.Total != 0 || v.Services == nil || len(v.Services) != 0 {
		t.Fatalf("no match: %+v", v)
	}
	v = getAPI[ServicesAPI](t, srv+"/api/v1/services?offset=995", 200)
	if len(v.Services) != 5 {
		t.Fatalf("last page: %d", len(v.Services))
	}
	for _, bad := range []string{"limit=-1", "limit=x", "offset=-3", "limit=100000", "q=" + strings.Repeat("a", 300)} {
		e := getAPI[ErrorAPI](t, srv+"/api/v1/services?"+bad, 400)
		if e.Error == "" {
			t.Errorf("%s: no error message", bad)
		}
	}
	getAPI[ErrorAPI](t, srv+"/api/v2/services", 404)
	getAPI[ErrorAPI](t, srv+"/api/v1/services?sort=size", 400)
	resp, err := http.Post(srv+"/api/v1/services", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}

	// The largest first: svc-000007 has a third endpoint from "other".
	v = getAPI[ServicesAPI](t, srv+"/api/v1/services?sort=endpoints&limit=2", 200)
	if v.Total != 1000 || v.Sort != SortEndpoints || len(v.Services) != 2 || v.Services[0].Authority != "svc-000007.demo:8080" ||
		strings.Join(v.Services[0].Sources, ",") != "bench,other" || v.Services[1].Authority != "svc-000000.demo:8080" {
		t.Fatalf("largest: %+v", v)
	}
}

func newServer(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestAPIServicesCostAtScale logs what a search and a page cost in a large
// registry (not asserted: timings are noisy): 10,000 services, or 100,000
// with TRIBUTARY_SCALE=100000.
func TestAPIServicesCostAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a large registry")
	}
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("TRIBUTARY_SCALE")); err == nil && v > 0 {
		n = v
	}
	h := New(Options{Store: manyServices(t, n), Gatherer: prometheus.NewRegistry()})
	for _, q := range []string{"", "svc-09999", "no-such"} {
		start := time.Now()
		const runs = 5
		var v ServicesAPI
		for range runs {
			v = h.Services(q, n/2, 50)
		}
		if q == "" && (v.Total != n || len(v.Services) != 50) {
			t.Fatalf("total %d, page %d", v.Total, len(v.Services))
		}
		t.Logf("%d services, q=%q offset=%d limit=50: total %d, %v per request", n, q, n/2, v.Total, time.Since(start)/runs)
	}
	// sort=endpoints, as `tributary status` asks for it: the first request,
	// then the next ones (the registry unchanged, then one host changed).
	for i, change := range []bool{false, false, true} {
		if change {
			if _, err := h.opts.Store.Apply("other", []discovery.Group{{Key: "y", Services: []discovery.Service{{Authority: discovery.Authority{Host: "svc-000008.demo", Port: 8080},
				Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("12.0.0.8:8080")}}}}}}); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		v := h.LargestServices("", 0, 10)
		if v.Total != n || len(v.Services) != 10 || v.Services[0].Authority != "svc-000007.demo:8080" {
			t.Fatalf("largest: total %d, first %+v", v.Total, v.Services[:min(1, len(v.Services))])
		}
		t.Logf("%d services, sort=endpoints limit=10, request %d (one host changed: %v): %v", n, i+1, change, time.Since(start))
	}
}

func TestAPIServiceExplains(t *testing.T) {
	store := cache.New()
	web := discovery.Authority{Host: "web.demo", Port: 8080}
	ep := func(a string, h discovery.Health, zone string, hints ...string) discovery.Endpoint {
		return discovery.Endpoint{Addr: netip.MustParseAddrPort(a), Health: h, Zone: zone, ForZones: hints,
			Labels: map[string]string{"note": "<script>alert(1)</script>"}}
	}
	if _, err := store.Apply("k8s", []discovery.Group{{Key: "s", Services: []discovery.Service{{Authority: web, Endpoints: []discovery.Endpoint{
		ep("10.0.0.1:8080", discovery.HealthPassing, "z1", "z1"),
		ep("10.0.0.2:8080", discovery.HealthPassing, "z2", "z2"),
		ep("10.0.0.3:8080", discovery.HealthCritical, "z2", "z2"),
	}}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Apply("file", []discovery.Group{{Key: "f", Services: []discovery.Service{{Authority: web, Endpoints: []discovery.Endpoint{
		ep("10.0.0.1:8080", discovery.HealthPassing, "z1", "z1"),
	}}}}}); err != nil {
		t.Fatal(err)
	}
	fed, err := discovery.NewFederation(nil, map[string]int{"k8s": 10})
	if err != nil {
		t.Fatal(err)
	}
	status := func() []discovery.SourceStatus {
		return []discovery.SourceStatus{{Name: "k8s", Synced: true}, {Name: "file", Synced: true, Stale: true}}
	}
	checked := func(source string, a discovery.Authority) string {
		if source == "k8s" && a == web {
			return "tcp"
		}
		return ""
	}
	srv := newServer(t, New(Options{Store: store, Federation: fed, Status: status, Gatherer: prometheus.NewRegistry(), HealthCheck: checked}))

	v := getAPI[ServiceAPI](t, srv+"/api/v1/services/web.demo:8080?zone=z1", 200)
	if !v.Exists || v.Served != 1 || !v.ZoneHints || v.Panic || strings.Join(v.Zones, ",") != "z1,z2" || len(v.Endpoints) != 4 {
		t.Fatalf("%+v", v)
	}
	reasons := map[string]string{}
	for _, e := range v.Endpoints {
		reasons[e.Address+"/"+e.Source] = e.Reason
	}
	want := map[string]string{
		"10.0.0.1:8080/k8s":  "served",
		"10.0.0.1:8080/file": "duplicate",
		"10.0.0.2:8080/k8s":  "zone_hint",
		"10.0.0.3:8080/k8s":  "critical",
	}
	for k, r := range want {
		if reasons[k] != r {
			t.Errorf("%s: %q, want %q (%v)", k, reasons[k], r, reasons)
		}
	}
	if e := v.Endpoints[0]; !e.Served || e.Labels["note"] != "<script>alert(1)</script>" {
		t.Errorf("first endpoint %+v", e)
	}
	for _, e := range v.Endpoints {
		if e.Source == "file" && (!e.Stale || e.WinnerSource != "k8s" || !strings.Contains(e.Why, "stale") || e.HealthFrom != "source") {
			t.Errorf("file's endpoint: %+v", e)
		}
		if e.Address == "10.0.0.3:8080" && (e.HealthFrom != "check:tcp" || !strings.Contains(e.Why, "its active tcp health check fails")) {
			t.Errorf("the checked critical endpoint: %+v", e)
		}
	}
	// Without a zone, hints do not apply.
	v = getAPI[ServiceAPI](t, srv+"/api/v1/services/web.demo:8080", 200)
	if v.Served != 2 || v.ZoneHints {
		t.Fatalf("no zone: %+v", v)
	}
	v = getAPI[ServiceAPI](t, srv+"/api/v1/services/nope.demo:1", 200)
	if v.Exists || v.Served != 0 || len(v.Endpoints) != 0 {
		t.Fatalf("unknown: %+v", v)
	}
	for _, bad := range []string{"bad%20host:80", "web.demo:99999", "a..b"} {
		if e := getAPI[ErrorAPI](t, srv+"/api/v1/services/"+bad, 400); !strings.Contains(e.Error, "invalid authority") {
			t.Errorf("%s: %q", bad, e.Error)
		}
	}
}

func TestStatusPageHeaders(t *testing.T) {
	srv, _, _, _ := setup(t)
	for _, path := range []string{"/", "/ui/app.js", "/ui/app.css"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Security-Policy") != ContentSecurityPolicy ||
			resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: %d %v", path, resp.StatusCode, resp.Header)
		}
	}
	if !strings.Contains(ContentSecurityPolicy, "script-src 'self'") || strings.Contains(ContentSecurityPolicy, "unsafe") {
		t.Errorf("CSP %q", ContentSecurityPolicy)
	}
	// No inline script and no innerHTML in the page's own files.
	for _, f := range []string{"ui/index.html", "ui/app.js"} {
		b, err := uiFiles.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "innerHTML") || strings.Contains(string(b), "<script>") {
			t.Errorf("%s has innerHTML or an inline script", f)
		}
	}
}

// fakeChecks is a CheckReader with fixed states, by "source address".
type fakeChecks map[string]discovery.CheckState

func (f fakeChecks) CheckState(source string, _ discovery.Authority, addr netip.AddrPort) (discovery.CheckState, bool) {
	st, ok := f[source+" "+addr.String()]
	return st, ok
}

// TestAPIServiceCheckFailure: a checked critical endpoint says which check
// failed, with its error, the failures in a row and when, in its check
// object and in its why; a passing one carries its check without a why;
// a critical one whose check passes blames its source.
func TestAPIServiceCheckFailure(t *testing.T) {
	store := cache.New()
	web := discovery.Authority{Host: "web.demo", Port: 8080}
	eps := []discovery.Endpoint{
		{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Health: discovery.HealthPassing},
		{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Health: discovery.HealthCritical},
		{Addr: netip.MustParseAddrPort("10.0.0.3:8080"), Health: discovery.HealthCritical},
		{Addr: netip.MustParseAddrPort("10.0.0.4:8080"), Health: discovery.HealthPassing},
	}
	if _, err := store.Apply("k8s", []discovery.Group{{Key: "s", Services: []discovery.Service{{Authority: web, Endpoints: eps}}}}); err != nil {
		t.Fatal(err)
	}
	failed := time.Date(2026, 12, 6, 18, 0, 0, 0, time.UTC)
	checks := fakeChecks{
		"k8s 10.0.0.1:8080": {Type: "tcp", Target: eps[0].Addr, Verdict: discovery.HealthPassing, LastCheck: failed.Add(time.Minute), ConsecutiveSuccesses: 4},
		"k8s 10.0.0.2:8080": {Type: "tcp", Target: netip.MustParseAddrPort("10.0.0.2:9000"), Verdict: discovery.HealthCritical, LastCheck: failed,
			LastError: "dial tcp 10.0.0.2:9000: connect: connection refused", LastErrorTime: failed, ConsecutiveFailures: 3},
		"k8s 10.0.0.3:8080": {Type: "tcp", Target: eps[2].Addr, Verdict: discovery.HealthPassing, LastCheck: failed},
	}
	checked := func(string, discovery.Authority) string { return "tcp" }
	srv := newServer(t, New(Options{Store: store, Gatherer: prometheus.NewRegistry(), HealthCheck: checked, Checks: checks}))
	v := getAPI[ServiceAPI](t, srv+"/api/v1/services/web.demo:8080", 200)
	by := map[string]EndpointAPI{}
	for _, e := range v.Endpoints {
		by[e.Address] = e
	}
	if c := by["10.0.0.1:8080"].Check; c == nil || c.Verdict != "passing" || c.ConsecutiveSuccesses != 4 || c.LastError != "" || strings.Contains(by["10.0.0.1:8080"].Why, "fails") {
		t.Errorf("passing endpoint: %+v %+v", by["10.0.0.1:8080"], c)
	}
	e := by["10.0.0.2:8080"]
	if c := e.Check; c == nil || c.Type != "tcp" || c.Target != "10.0.0.2:9000" || c.Verdict != "critical" || c.ConsecutiveFailures != 3 ||
		!c.LastErrorTime.Equal(failed) || c.LastError != "dial tcp 10.0.0.2:9000: connect: connection refused" {
		t.Errorf("failing endpoint's check: %+v", c)
	}
	for _, want := range []string{"evicted: health is critical", "tcp health check of 10.0.0.2:9000 fails: dial tcp 10.0.0.2:9000: connect: connection refused", "3 failures in a row", "2026-12-06T18:00:00Z"} {
		if !strings.Contains(e.Why, want) {
			t.Errorf("why %q lacks %q", e.Why, want)
		}
	}
	if e := by["10.0.0.3:8080"]; e.Check == nil || !strings.Contains(e.Why, "its source reports it critical (its active tcp check says passing)") {
		t.Errorf("critical by its source: %+v", e)
	}
	if e := by["10.0.0.4:8080"]; e.Check != nil || e.HealthFrom != "check:tcp" {
		t.Errorf("no check state yet: %+v", e)
	}
	// In the raw JSON, an endpoint without a check state has no check field.
	_, body := get(t, srv+"/api/v1/services/web.demo:8080")
	if n := strings.Count(body, `"check":`); n != 3 {
		t.Errorf("%d check objects, want 3:\n%s", n, body)
	}
}

// TestLargestServicesFollowChanges: sort=endpoints, whose counts are kept
// from one request to the next, answers what a full read of the registry
// answers — order, ties by name, totals, pages, q, aliases, several
// sources, port-less assertions — after every change of a random series.
func TestLargestServicesFollowChanges(t *testing.T) {
	store := cache.New()
	fed, err := discovery.NewFederation([]discovery.FederationRule{{
		Authority: discovery.Authority{Host: "h1.demo", Port: 80},
		Aliases:   []discovery.Authority{{Host: "H5.demo", Port: 80}},
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := New(Options{Store: store, Federation: fed, Gatherer: prometheus.NewRegistry()})
	rng := rand.New(rand.NewPCG(1, 2))
	// reference reads every authority's endpoints, as sort=endpoints did.
	reference := func(q string, offset, limit int) []string {
		snap := store.Snapshot()
		type row struct {
			a string
			n int
		}
		var rows []row
		seen := map[discovery.Authority]bool{}
		snap.EachAuthority(func(a discovery.Authority, _ string) bool {
			if seen[a] || !strings.Contains(a.String(), q) {
				return true
			}
			seen[a] = true
			r := row{a: a.String()}
			for _, m := range fed.Members(a) {
				r.n += len(snap.Service(nil, m).Endpoints)
			}
			rows = append(rows, r)
			return true
		})
		slices.SortStableFunc(rows, func(x, y row) int { return y.n - x.n })
		out := []string{fmt.Sprint(len(rows))}
		for _, r := range rows[min(offset, len(rows)):min(offset+limit, len(rows))] {
			out = append(out, fmt.Sprintf("%s=%d", r.a, r.n))
		}
		return out
	}
	got := func(q string, offset, limit int) []string {
		v := h.LargestServices(q, offset, limit)
		out := []string{fmt.Sprint(v.Total)}
		for _, s := range v.Services {
			out = append(out, fmt.Sprintf("%s=%d", s.Authority, s.Endpoints))
		}
		return out
	}
	for step := range 300 {
		source := []string{"a", "b"}[rng.IntN(2)]
		key := fmt.Sprintf("k%d", rng.IntN(6))
		var svcs []discovery.Service
		for range rng.IntN(3) {
			a := discovery.Authority{Host: fmt.Sprintf("h%d.demo", rng.IntN(8)), Port: uint16([]int{0, 80, 81}[rng.IntN(3)])}
			svc := discovery.Service{Authority: a}
			for range rng.IntN(5) {
				svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(200))}), 80)})
			}
			if !slices.ContainsFunc(svcs, func(s discovery.Service) bool { return s.Authority == a }) {
				svcs = append(svcs, svc)
			}
		}
		if _, err := store.Apply(source, []discovery.Group{{Key: key, Services: svcs}}); err != nil {
			t.Fatal(err)
		}
		q := []string{"", "h1", ":81", "nothing"}[rng.IntN(4)]
		offset, limit := rng.IntN(4), rng.IntN(6)
		if w, g := reference(q, offset, limit), got(q, offset, limit); !slices.Equal(w, g) {
			t.Fatalf("step %d, q=%q offset=%d limit=%d:\n got %v\nwant %v", step, q, offset, limit, g, w)
		}
	}
}

// checksByAuthority is a CheckReader that knows endpoints under the exact
// authority they were asserted under, as the health checker does.
type checksByAuthority map[discovery.Authority]discovery.CheckState

func (f checksByAuthority) CheckState(_ string, a discovery.Authority, _ netip.AddrPort) (discovery.CheckState, bool) {
	st, ok := f[a]
	return st, ok
}

// TestAPIServiceCheckAuthority: the check of an endpoint is looked up
// under the authority its source asserted it under — the port's when the
// view is asked without a port, the port-less one for a port-less
// assertion asked with a port.
func TestAPIServiceCheckAuthority(t *testing.T) {
	store := cache.New()
	web := discovery.Authority{Host: "web.demo", Port: 8080}
	api := discovery.Authority{Host: "api.demo"}
	if _, err := store.Apply("k8s", []discovery.Group{{Key: "s", Services: []discovery.Service{
		{Authority: web, Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Health: discovery.HealthCritical}}},
		{Authority: api, Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.2:9000"), Health: discovery.HealthCritical}}},
	}}}); err != nil {
		t.Fatal(err)
	}
	checks := checksByAuthority{
		web: {Type: "tcp", Target: netip.MustParseAddrPort("10.0.0.1:8080"), Verdict: discovery.HealthCritical, LastError: "web refused", ConsecutiveFailures: 2},
		api: {Type: "http", Target: netip.MustParseAddrPort("10.0.0.2:9000"), Verdict: discovery.HealthCritical, LastError: "api said 503", ConsecutiveFailures: 2},
	}
	checkType := func(_ string, a discovery.Authority) string { return checks[a].Type }
	srv := newServer(t, New(Options{Store: store, Gatherer: prometheus.NewRegistry(), HealthCheck: checkType, Checks: checks}))
	for path, want := range map[string]string{
		"/api/v1/services/web.demo":      "check:tcp web refused",
		"/api/v1/services/api.demo:9000": "check:http api said 503",
	} {
		v := getAPI[ServiceAPI](t, srv+path, 200)
		if len(v.Endpoints) != 1 {
			t.Fatalf("%s: %+v", path, v)
		}
		e := v.Endpoints[0]
		got := e.HealthFrom
		if e.Check != nil {
			got += " " + e.Check.LastError
		}
		if got != want || !strings.Contains(e.Why, want[strings.Index(want, " ")+1:]) {
			t.Errorf("%s: %q (why %q), want %q", path, got, e.Why, want)
		}
	}
}
