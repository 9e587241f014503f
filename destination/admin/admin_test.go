package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

func setup(t *testing.T) (*httptest.Server, *Handler, chan struct{}, *[]discovery.SourceStatus) {
	t.Helper()
	store := cache.New()
	_, err := store.Apply("east", []discovery.Group{{Key: "f1", Services: []discovery.Service{{
		Authority: discovery.Authority{Host: "web.demo", Port: 8080},
		Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Zone: "z", Health: discovery.HealthCritical}},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	statuses := &[]discovery.SourceStatus{{Name: "east", Kind: "file", Synced: true, Stale: true, LastError: "f1:3: bad"}}
	reg := prometheus.NewRegistry()
	status := func() []discovery.SourceStatus { return *statuses }
	reg.MustRegister(NewSourceCollector(status, store))
	synced := make(chan struct{})
	h := New(Options{Store: store, Status: status, Gatherer: reg, Synced: synced, Version: "test"})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, h, synced, statuses
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestReadyzFollowsSyncAndDrain(t *testing.T) {
	srv, h, synced, _ := setup(t)
	if code, body := get(t, srv.URL+"/readyz"); code != 503 || !strings.Contains(body, "waiting for sources") {
		t.Fatalf("before sync: %d %s", code, body)
	}
	close(synced)
	code, body := get(t, srv.URL+"/readyz")
	if code != 200 || !strings.Contains(body, "source east (file): synced, stale: f1:3: bad") {
		t.Fatalf("after sync: %d %s", code, body)
	}
	h.SetDraining()
	if code, _ := get(t, srv.URL+"/readyz"); code != 503 {
		t.Fatalf("draining: %d", code)
	}
	if code, _ := get(t, srv.URL+"/healthz"); code != 200 {
		t.Fatalf("healthz: %d", code)
	}
}

func TestDebugRegistryShowsProvenanceAndHealth(t *testing.T) {
	srv, _, _, _ := setup(t)
	_, body := get(t, srv.URL+"/debug/registry")
	var reg RegistryJSON
	if err := json.Unmarshal([]byte(body), &reg); err != nil {
		t.Fatal(err, body)
	}
	if len(reg.Services) != 1 || len(reg.Services[0].Endpoints) != 1 {
		t.Fatalf("%+v", reg)
	}
	e := reg.Services[0].Endpoints[0]
	if e.Source != "east" || e.Key != "f1" || e.Health != "critical" || !e.Stale || e.Address != "10.0.0.1:8080" {
		t.Fatalf("endpoint %+v", e)
	}
	_, body = get(t, srv.URL+"/debug/registry?authority=other:1")
	if err := json.Unmarshal([]byte(body), &reg); err != nil || len(reg.Services) != 0 {
		t.Fatalf("filtered: %v %s", err, body)
	}
}

func TestMetricsAndStatusPage(t *testing.T) {
	srv, _, _, _ := setup(t)
	_, body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`tributary_source_stale{kind="file",source="east"} 1`,
		`tributary_source_up{kind="file",source="east"} 0`,
		`tributary_source_endpoints{kind="file",source="east"} 1`,
		`tributary_source_synced{kind="file",source="east"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	code, page := get(t, srv.URL+"/")
	if code != 200 || !strings.Contains(page, `<script src="/ui/app.js" defer></script>`) {
		t.Fatalf("status page %d:\n%s", code, page)
	}
	if code, _ := get(t, srv.URL+"/debug/pprof/"); code != 404 {
		t.Errorf("pprof must be off by default, got %d", code)
	}
}
