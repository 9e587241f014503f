package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/sources/kubernetes"
)

// GetProfile(ClusterIP:port) needs the server to ask every kubernetes
// source's cluster IPs: serve finds them among the built sources, in
// config order, and only them.
func TestSourceVIPsAreTheKubernetesSources(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "tributary.yaml")
	if err := os.WriteFile(cfg, []byte(`sources:
  - name: east
    kind: kubernetes
  - name: local
    kind: file
    paths: ["services/*.yaml"]
  - name: west
    kind: kubernetes
    cluster_domain: west.local
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	instances, err := c.BuildSources(nil)
	if err != nil {
		t.Fatal(err)
	}
	vips := sourceVIPs(instances)
	if len(vips) != 2 {
		t.Fatalf("%d lookups, want the 2 kubernetes sources", len(vips))
	}
	for i, name := range []string{"east", "west"} {
		var want any
		for _, in := range instances {
			if in.Config.Name == name {
				want = in.Source
			}
		}
		if _, ok := vips[i].(*kubernetes.Source); !ok || vips[i] != want {
			t.Errorf("lookup %d is %T, want source %s", i, vips[i], name)
		}
	}
}

// The policy API's opaque protocol follows the registry's service rows, as
// GetProfile's opaque_protocol does.
func TestOpaquePort(t *testing.T) {
	store := cache.New()
	db := discovery.Service{Authority: discovery.Authority{Host: "db.demo", Port: 5432}, Opaque: true,
		Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.9:5432")}}}
	if _, err := store.Apply("local", []discovery.Group{{Key: "db", Services: []discovery.Service{db, webDemo()}}}); err != nil {
		t.Fatal(err)
	}
	opaque := opaquePort(store, nil)
	if !opaque("db.demo", 5432) {
		t.Error("db.demo:5432 is not opaque")
	}
	if opaque("web.demo", 8080) || opaque("nowhere.demo", 80) {
		t.Error("web.demo:8080 or an unknown service is opaque")
	}
}
