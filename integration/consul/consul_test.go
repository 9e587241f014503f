//go:build integration

// Package consul runs the real tributary binary against real Consul
// agents (v1.16.3, dev mode on loopback; harness.Peer builds the binary
// once) and checks what a Get stream receives as services, checks and
// agents change. Each test starts its own agents (about 0.3 s each), so no
// test depends on what another registered.
package consul

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// expect checks the stream's next update.
func expect(t *testing.T, st *harness.Stream, want string) {
	t.Helper()
	if got := st.Next(); got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// settle reads updates until the stream's set holds exactly want (and, for
// an empty want, the service is gone or empty as exists says), and returns
// the updates read. For changes whose hand-overs may be split or merged
// depending on timing.
func settle(t *testing.T, st *harness.Stream, want ...string) []string {
	t.Helper()
	var seen []string
	for {
		var have []string
		for a := range st.Set.Addrs {
			have = append(have, a.String())
		}
		slices.Sort(have)
		slices.Sort(want)
		if st.Set.Started && slices.Equal(have, want) && (len(want) > 0 || len(seen) > 0) {
			return seen
		}
		seen = append(seen, st.Next())
	}
}

func TestConsulInstancesHealthAndMaintenance(t *testing.T) {
	a := startAgent(t, agentOptions{})
	a.registerService(t, &api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "10.1.0.1", Port: 80, Tags: []string{"v1"}, Check: ttlCheck("passing")})
	// No panic threshold: this test is about which instances the source
	// marks critical, and the threshold would serve all when all are.
	s := harness.Start(t, t.TempDir(), "health: {panic_threshold: 0%}\nsources:\n"+
		consulSource("consul", a.HTTPAddr())+
		consulSource("strict", a.HTTPAddr(), "warning_is_healthy: false",
			`naming: {authority: "{{.Service}}.strict.{{.Datacenter}}.consul", tag_subsets: []}`))

	web := s.Get("web.service.dc1.consul:80")
	expect(t, web, "add:10.1.0.1:80")
	strict := s.Get("web.strict.dc1.consul:80")
	expect(t, strict, "add:10.1.0.1:80")

	// A new instance: add.
	a.registerService(t, &api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "10.1.0.2", Port: 80, Tags: []string{"v2"}, Check: ttlCheck("passing")})
	expect(t, web, "add:10.1.0.2:80")
	expect(t, strict, "add:10.1.0.2:80")

	// Its check goes critical: removed; passing again: added.
	a.setTTL(t, "web-1", api.HealthCritical)
	expect(t, web, "remove:10.1.0.1:80")
	expect(t, strict, "remove:10.1.0.1:80")
	a.setTTL(t, "web-1", api.HealthPassing)
	expect(t, web, "add:10.1.0.1:80")
	expect(t, strict, "add:10.1.0.1:80")

	// Warning: served by default (as Consul's DNS does), evicted where
	// warning_is_healthy is false.
	a.setTTL(t, "web-1", api.HealthWarning)
	expect(t, strict, "remove:10.1.0.1:80")
	a.setTTL(t, "web-1", api.HealthPassing)
	expect(t, strict, "add:10.1.0.1:80")

	// Service maintenance evicts; the default stream's next update proves
	// the warning above sent it nothing.
	if err := a.Client.Agent().EnableServiceMaintenance("web-2", "test"); err != nil {
		t.Fatal(err)
	}
	expect(t, web, "remove:10.1.0.2:80")
	expect(t, strict, "remove:10.1.0.2:80")
	if err := a.Client.Agent().DisableServiceMaintenance("web-2"); err != nil {
		t.Fatal(err)
	}
	expect(t, web, "add:10.1.0.2:80")
	expect(t, strict, "add:10.1.0.2:80")

	// Node maintenance evicts every instance on the node.
	if err := a.Client.Agent().EnableNodeMaintenance("test"); err != nil {
		t.Fatal(err)
	}
	expect(t, web, "none:true")
	expect(t, strict, "none:true")
	if err := a.Client.Agent().DisableNodeMaintenance(); err != nil {
		t.Fatal(err)
	}
	expect(t, web, "add:10.1.0.1:80,10.1.0.2:80")
	expect(t, strict, "add:10.1.0.1:80,10.1.0.2:80")

	// Tag subsets: <tag>.<service>.service.<dc>.consul, any port.
	v2 := s.Get("v2.web.service.dc1.consul:8080")
	expect(t, v2, "add:10.1.0.2:80")
	v1 := s.Get("v1.web.service.dc1.consul:80")
	expect(t, v1, "add:10.1.0.1:80")

	// Deregistering an instance removes it (and its tag's subset); the
	// last one withdraws the service: unknown again.
	if err := a.Client.Agent().ServiceDeregister("web-1"); err != nil {
		t.Fatal(err)
	}
	expect(t, web, "remove:10.1.0.1:80")
	expect(t, v1, "none:false")
	if err := a.Client.Agent().ServiceDeregister("web-2"); err != nil {
		t.Fatal(err)
	}
	expect(t, web, "none:false")
	expect(t, v2, "none:false")
	// The strict stream was not read between the two deregistrations: its
	// source may see them in one answer and withdraw the service at once.
	settle(t, strict)
	if strict.Set.Exists {
		t.Fatal("strict: the service still exists after its last instance left")
	}
}

func TestConsulWeightsZonesLabelsAndIdentity(t *testing.T) {
	a := startAgent(t, agentOptions{HCL: []string{`node_meta { zone = "zone-a" }`}})
	roots, _, err := a.Client.Connect().CARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	td := roots.TrustDomain
	a.registerService(t, &api.AgentServiceRegistration{
		ID: "pay-1", Name: "pay", Address: "10.2.0.1", Port: 8443, Meta: map[string]string{"zone": "zone-b"},
		Weights: &api.AgentWeights{Passing: 3, Warning: 1}, Connect: &api.AgentServiceConnect{Native: true}, Check: ttlCheck("passing"),
	})
	a.registerService(t, &api.AgentServiceRegistration{ID: "shop-1", Name: "shop", Address: "10.2.0.2", Port: 8080})
	// A sidecar proxy registered on its own (no checks: nothing listens).
	a.registerService(t, &api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: "shop-1-sidecar", Name: "shop-sidecar-proxy", Address: "10.2.0.2", Port: 21000,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "shop", DestinationServiceID: "shop-1"},
	})
	s := harness.Start(t, t.TempDir(), "sources:\n"+
		consulSource("consul", a.HTTPAddr(), "zone: {node_meta: zone, service_meta: zone}")+
		consulSource("mesh", a.HTTPAddr(), "connect_endpoints: true",
			`naming: {authority: "{{.Service}}.mesh.{{.Datacenter}}.consul", tag_subsets: []}`))

	pay := s.Get("pay.service.dc1.consul:8443")
	expect(t, pay, "add:10.2.0.1:8443")
	wa := pay.Set.Addrs[mustAddr("10.2.0.1:8443")]
	labels := wa.GetMetricLabels()
	if wa.GetWeight() != 30000 || labels["zone"] != "zone-b" || labels["consul_service"] != "pay" ||
		labels["consul_dc"] != "dc1" || labels["consul_node"] != "dc1-node" || labels["source"] != "consul" {
		t.Errorf("pay endpoint: weight %d labels %v", wa.GetWeight(), labels)
	}
	wantID := "spiffe://" + td + "/ns/default/dc/dc1/svc/pay"
	if id := wa.GetTlsIdentity(); id.GetUriLikeIdentity().GetUri() != wantID || id.GetServerName().GetName() != "pay.default.dc1.internal."+td {
		t.Errorf("pay identity %v, want %s", id, wantID)
	}

	// Warning: Weights.Warning applies.
	a.setTTL(t, "pay-1", api.HealthWarning)
	expect(t, pay, "add:10.2.0.1:8443")
	if w := pay.Set.Addrs[mustAddr("10.2.0.1:8443")].GetWeight(); w != 10000 {
		t.Errorf("weight while warning %d, want 10000", w)
	}

	// A plain service: the node's zone, no identity.
	shop := s.Get("shop.service.dc1.consul:8080")
	expect(t, shop, "add:10.2.0.2:8080")
	wa = shop.Set.Addrs[mustAddr("10.2.0.2:8080")]
	if wa.GetTlsIdentity() != nil || wa.GetMetricLabels()["zone"] != "zone-a" {
		t.Errorf("shop endpoint: identity %v, zone %q", wa.GetTlsIdentity(), wa.GetMetricLabels()["zone"])
	}
	// Its sidecar presents shop's identity.
	sidecar := s.Get("shop-sidecar-proxy.service.dc1.consul:21000")
	expect(t, sidecar, "add:10.2.0.2:21000")
	if uri := sidecar.Set.Addrs[mustAddr("10.2.0.2:21000")].GetTlsIdentity().GetUriLikeIdentity().GetUri(); uri != "spiffe://"+td+"/ns/default/dc/dc1/svc/shop" {
		t.Errorf("sidecar identity %q", uri)
	}
	// connect_endpoints: shop is served at its sidecar, with shop's identity.
	mesh := s.Get("shop.mesh.dc1.consul:8080")
	expect(t, mesh, "add:10.2.0.2:21000")
	if uri := mesh.Set.Addrs[mustAddr("10.2.0.2:21000")].GetTlsIdentity().GetUriLikeIdentity().GetUri(); uri != "spiffe://"+td+"/ns/default/dc/dc1/svc/shop" {
		t.Errorf("mesh identity %q", uri)
	}
}

func TestConsulTwoDatacenters(t *testing.T) {
	dc1 := startAgent(t, agentOptions{DC: "dc1"})
	dc2 := startAgent(t, agentOptions{DC: "dc2"})
	if err := dc2.Client.Agent().Join(dc1.SerfWANAddr(), true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dc1 sees dc2 over the WAN", func() bool {
		dcs, err := dc1.Client.Catalog().Datacenters()
		return err == nil && slices.Contains(dcs, "dc2")
	})
	dc1.catalogRegister(t, "ext-1", "10.1.0.1", &api.AgentService{ID: "web-1", Service: "web", Port: 80})
	dc2.catalogRegister(t, "ext-2", "10.2.0.1", &api.AgentService{ID: "web-1", Service: "web", Port: 80})
	// Both datacenters through dc1's agent; one name for both.
	s := harness.Start(t, t.TempDir(), "sources:\n"+
		consulSource("consul", dc1.HTTPAddr(), "datacenters: [dc1, dc2]")+`federation:
  - authority: web.service.consul
    aliases: [web.service.dc1.consul, web.service.dc2.consul]
`)
	both := s.Get("web.service.consul:80")
	expect(t, both, "add:10.1.0.1:80,10.2.0.1:80")
	only2 := s.Get("web.service.dc2.consul:80")
	expect(t, only2, "add:10.2.0.1:80")
	if l := only2.Set.Addrs[mustAddr("10.2.0.1:80")].GetMetricLabels()["consul_dc"]; l != "dc2" {
		t.Errorf("consul_dc label %q", l)
	}
	// A change in dc2 reaches both names.
	dc2.catalogRegister(t, "ext-3", "10.2.0.2", &api.AgentService{ID: "web-2", Service: "web", Port: 80})
	expect(t, only2, "add:10.2.0.2:80")
	expect(t, both, "add:10.2.0.2:80")
	dc2.catalogDeregister(t, "ext-2", "web-1")
	expect(t, only2, "remove:10.2.0.1:80")
	expect(t, both, "remove:10.2.0.1:80")
}

func TestConsulACLTokenAndTLS(t *testing.T) {
	dir := t.TempDir()
	c := makeCerts(t, dir)
	a := startAgent(t, agentOptions{HTTPS: true, Token: "root-token", HCL: []string{
		`acl { enabled = true, default_policy = "deny", tokens { initial_management = "root-token", agent = "root-token" } }`,
		fmt.Sprintf(`tls { defaults { ca_file = %q, cert_file = %q, key_file = %q } https { verify_incoming = true } }`, c.CA, c.ServerCert, c.ServerKey),
	}})
	policy, _, err := a.Client.ACL().PolicyCreate(&api.ACLPolicy{Name: "discovery", Rules: `service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := a.Client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "consul.token"), []byte(token.SecretID+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.catalogRegister(t, "ext-1", "10.4.0.1", &api.AgentService{ID: "web-1", Service: "web", Port: 80})

	s := harness.Start(t, dir, "sources:\n"+
		consulSource("token", a.HTTPAddr(), "token_file: consul.token")+
		consulSource("anonymous", a.HTTPAddr(), `naming: {authority: "{{.Service}}.anonymous.{{.Datacenter}}.consul"}`)+
		consulSource("tls", "https://"+a.HTTPSAddr(), "token_file: consul.token",
			"tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client-key.pem, server_name: server.dc1.consul}",
			`naming: {authority: "{{.Service}}.tls.{{.Datacenter}}.consul"}`))

	expect(t, s.Get("web.service.dc1.consul:80"), "add:10.4.0.1:80")
	expect(t, s.Get("web.tls.dc1.consul:80"), "add:10.4.0.1:80")
	// Without a token, default-deny ACLs hide the service: unknown, with a
	// warning that says why.
	expect(t, s.Get("web.anonymous.dc1.consul:80"), "none:false")
	s.WaitLog("no ACL token is configured and Consul's default ACL policy is deny")
}

func TestConsulAgentOutageKeepsStateThenReconciles(t *testing.T) {
	// A server with a data directory: a restart keeps the catalog, as a
	// production server's does. The outage is 5 s: with a 1 s backoff cap
	// the source fails and retries several times meanwhile — the behaviour
	// does not depend on how long the outage lasts.
	const outage = 5 * time.Second
	a := startAgent(t, agentOptions{Persistent: true})
	a.catalogRegister(t, "ext-1", "10.3.0.1", &api.AgentService{ID: "shop-1", Service: "shop", Port: 80})
	a.catalogRegister(t, "ext-2", "10.3.0.2", &api.AgentService{ID: "shop-2", Service: "shop", Port: 80})
	a.catalogRegister(t, "ext-1", "10.3.0.1", &api.AgentService{ID: "cart-1", Service: "cart", Port: 80})
	s := harness.Start(t, t.TempDir(), "sources:\n"+consulSource("consul", a.HTTPAddr()))
	shop := s.Get("shop.service.dc1.consul:80")
	expect(t, shop, "add:10.3.0.1:80,10.3.0.2:80")
	cart := s.Get("cart.service.dc1.consul:80")
	expect(t, cart, "add:10.3.0.1:80")

	a.Stop()
	stopped := time.Now()
	waitFor(t, "the source marked stale", func() bool { return status(t, s, "consul").Stale })
	// Stale is kept: still served, to new streams too.
	expect(t, s.Get("shop.service.dc1.consul:80"), "add:10.3.0.1:80,10.3.0.2:80")
	_, reg := s.HTTPGet("/debug/registry?authority=cart.service.dc1.consul")
	if !strings.Contains(reg, "10.3.0.1:80") {
		t.Errorf("registry lost cart during the outage: %s", reg)
	}
	time.Sleep(time.Until(stopped.Add(outage)))
	st := status(t, s, "consul")
	if !st.Stale || st.Errors < 3 || st.LastError == "" {
		t.Errorf("after %v down: %+v, want stale with several errors", outage, st)
	}

	// Back, and changed: cart deregistered, shop-1 gone, shop-3 new.
	a.Start()
	a.catalogDeregister(t, "ext-1", "cart-1")
	a.catalogDeregister(t, "ext-1", "shop-1")
	a.catalogRegister(t, "ext-3", "10.3.0.3", &api.AgentService{ID: "shop-3", Service: "shop", Port: 80})
	expect(t, cart, "none:false")
	for _, u := range settle(t, shop, "10.3.0.2:80", "10.3.0.3:80") {
		if strings.HasPrefix(u, "none:") || strings.Contains(u, "10.3.0.2") {
			t.Errorf("shop flapped while reconciling: %s", u)
		}
	}
	waitFor(t, "the source healthy again", func() bool { return !status(t, s, "consul").Stale })
}

func mustAddr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestConsulMalformedInstanceIsRejectedSiblingsApply: an instance that
// cannot become an endpoint (a host name as its address) is left out and
// counted; the valid instance of the same service is served.
func TestConsulMalformedInstanceIsRejectedSiblingsApply(t *testing.T) {
	a := startAgent(t, agentOptions{})
	a.registerService(t, &api.AgentServiceRegistration{ID: "db-1", Name: "db", Address: "10.3.0.1", Port: 5432})
	a.registerService(t, &api.AgentServiceRegistration{ID: "db-2", Name: "db", Address: "db-2.example.internal", Port: 5432})
	s := harness.Start(t, t.TempDir(), "sources:\n"+consulSource("consul", a.HTTPAddr()))
	db := s.Get("db.service.dc1.consul:5432")
	expect(t, db, "add:10.3.0.1:5432")
	waitFor(t, "the rejected-objects metric", func() bool {
		_, body := s.HTTPGet("/metrics")
		return strings.Contains(body, `tributary_source_rejected_objects_total{kind="consul",source="consul"} 1`)
	})
}
