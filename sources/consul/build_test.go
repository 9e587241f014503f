package consul

import (
	"math"
	"reflect"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/tributary-mesh/tributary/discovery"
)

// testBuilder validates a config (YAML text of the kind's keys) into a
// builder for dc1 with a known trust domain.
func testBuilder(t *testing.T, text string) *builder {
	t.Helper()
	src, err := parse(t, "address: 127.0.0.1:1\n"+text)
	if err != nil {
		t.Fatal(err)
	}
	return &builder{s: src.(*Source).s, trustDomains: map[string]string{"dc1": "td.consul"}}
}

func check(id, status string) *api.HealthCheck {
	return &api.HealthCheck{CheckID: id, Status: status}
}

func TestHealthFromChecks(t *testing.T) {
	lenient := testBuilder(t, "")
	strict := testBuilder(t, "warning_is_healthy: false")
	for _, tc := range []struct {
		name           string
		checks         api.HealthChecks
		lenient, stric discovery.Health
	}{
		{"no checks", nil, discovery.HealthUnknown, discovery.HealthUnknown},
		{"passing", api.HealthChecks{check("serfHealth", "passing"), check("service:web", "passing")}, discovery.HealthPassing, discovery.HealthPassing},
		{"warning", api.HealthChecks{check("serfHealth", "passing"), check("service:web", "warning")}, discovery.HealthWarning, discovery.HealthCritical},
		{"critical beats warning", api.HealthChecks{check("a", "warning"), check("b", "critical")}, discovery.HealthCritical, discovery.HealthCritical},
		{"node check critical", api.HealthChecks{check("serfHealth", "critical"), check("service:web", "passing")}, discovery.HealthCritical, discovery.HealthCritical},
		{"service maintenance", api.HealthChecks{check("_service_maintenance:web-1", "critical")}, discovery.HealthCritical, discovery.HealthCritical},
		{"node maintenance", api.HealthChecks{check("_node_maintenance", "critical")}, discovery.HealthCritical, discovery.HealthCritical},
		{"maintenance status", api.HealthChecks{check("x", "maintenance")}, discovery.HealthCritical, discovery.HealthCritical},
		{"unknown status", api.HealthChecks{check("x", "bogus")}, discovery.HealthCritical, discovery.HealthCritical},
		{"nil check", api.HealthChecks{nil, check("x", "passing")}, discovery.HealthPassing, discovery.HealthPassing},
	} {
		if got := lenient.health(tc.checks); got != tc.lenient {
			t.Errorf("%s, warning_is_healthy: %v, want %v", tc.name, got, tc.lenient)
		}
		if got := strict.health(tc.checks); got != tc.stric {
			t.Errorf("%s, warning_is_healthy false: %v, want %v", tc.name, got, tc.stric)
		}
	}
}

func TestWeights(t *testing.T) {
	for _, tc := range []struct {
		w    api.AgentWeights
		h    discovery.Health
		want uint32
	}{
		{api.AgentWeights{Passing: 1, Warning: 1}, discovery.HealthPassing, 10000},
		{api.AgentWeights{Passing: 3, Warning: 1}, discovery.HealthPassing, 30000},
		{api.AgentWeights{Passing: 3, Warning: 2}, discovery.HealthWarning, 20000},
		{api.AgentWeights{Passing: 3, Warning: 0}, discovery.HealthWarning, 1},
		{api.AgentWeights{}, discovery.HealthPassing, 10000},
		{api.AgentWeights{}, discovery.HealthWarning, 10000},
		{api.AgentWeights{Passing: -4}, discovery.HealthPassing, 10000},
		{api.AgentWeights{Passing: math.MaxInt32}, discovery.HealthPassing, math.MaxUint32},
		{api.AgentWeights{Passing: 2, Warning: 1}, discovery.HealthUnknown, 20000},
	} {
		if got := weight(tc.w, tc.h); got != tc.want {
			t.Errorf("weight(%+v, %v) = %d, want %d", tc.w, tc.h, got, tc.want)
		}
	}
}

func entry(node, nodeAddr string, svc api.AgentService, checks ...*api.HealthCheck) *api.ServiceEntry {
	if svc.Weights == (api.AgentWeights{}) {
		svc.Weights = api.AgentWeights{Passing: 1, Warning: 1}
	}
	return &api.ServiceEntry{Node: &api.Node{Node: node, Address: nodeAddr, Meta: map[string]string{"zone": "node-zone"}}, Service: &svc, Checks: checks}
}

func TestBuildEndpoints(t *testing.T) {
	b := testBuilder(t, "zone: {node_meta: zone, service_meta: az}")
	g, problems := b.build("dc1", "web", []*api.ServiceEntry{
		// service address wins over node address
		entry("n1", "10.0.0.1", api.AgentService{ID: "web-1", Service: "web", Address: "10.9.0.1", Port: 80, Tags: []string{"v1", "v1"}, Meta: map[string]string{"az": "svc-zone"}}, check("c", "passing")),
		// node address when the service has none; IPv4-mapped IPv6 unmapped
		entry("n2", "::ffff:10.0.0.2", api.AgentService{ID: "web-2", Service: "web", Port: 80, Tags: []string{"v2", "has.dot"}}, check("c", "warning")),
		// IPv6
		entry("n3", "fd00::3", api.AgentService{ID: "web-3", Service: "web", Port: 8080}, check("c", "critical")),
		// the same address twice: the healthier registration wins
		entry("n1", "10.0.0.1", api.AgentService{ID: "web-4", Service: "web", Address: "10.9.0.1", Port: 80}, check("c", "critical")),
		// rejected
		entry("n5", "host.example", api.AgentService{ID: "web-5", Service: "web", Port: 80}),
		entry("n6", "", api.AgentService{ID: "web-6", Service: "web", Port: 80}),
		entry("n7", "10.0.0.7", api.AgentService{ID: "web-7", Service: "web", Port: 70000}),
		entry("n8", "fe80::1%eth0", api.AgentService{ID: "web-8", Service: "web", Port: 80}),
		nil,
	})
	if got := describe(g); !reflect.DeepEqual(got, []string{
		"v1.web.service.dc1.consul=10.9.0.1:80(passing)",
		"v2.web.service.dc1.consul=10.0.0.2:80(warning)",
		"web.service.dc1.consul=10.0.0.2:80(warning),10.9.0.1:80(passing),[fd00::3]:8080(critical)",
	}) {
		t.Errorf("services: %v", got)
	}
	if g.Key != "dc1/web" {
		t.Errorf("key %q", g.Key)
	}
	if len(problems) != 5 {
		t.Errorf("problems: %v", problems)
	}
	eps := map[string]discovery.Endpoint{}
	for _, e := range g.Services[2].Endpoints {
		eps[e.Addr.String()] = e
	}
	if e := eps["10.9.0.1:80"]; e.Zone != "svc-zone" || e.Weight != 10000 ||
		!reflect.DeepEqual(e.Labels, map[string]string{"consul_service": "web", "consul_dc": "dc1", "consul_node": "n1"}) {
		t.Errorf("web-1: %+v", e)
	}
	if e := eps["10.0.0.2:80"]; e.Zone != "node-zone" {
		t.Errorf("web-2 zone %q, want the node's", e.Zone)
	}
	if e := eps["10.9.0.1:80"]; e.Identity.Kind != discovery.IdentityNone {
		t.Errorf("a plain service got an identity: %+v", e.Identity)
	}
}

func TestBuildWithdrawsAServiceWithoutInstances(t *testing.T) {
	if g, _ := testBuilder(t, "").build("dc1", "web", nil); len(g.Services) != 0 || g.Key != "dc1/web" {
		t.Errorf("no instances: %+v", g)
	}
	// With an instance filter Consul may have hidden instances of a service
	// that exists: exists, no endpoints.
	g, _ := testBuilder(t, "instance_filter: 'Service.Port == 1'").build("dc1", "web", nil)
	if got := describe(g); !reflect.DeepEqual(got, []string{"web.service.dc1.consul="}) {
		t.Errorf("filtered: %v", got)
	}
}

func TestNamingTemplatesAndSubsets(t *testing.T) {
	entries := []*api.ServiceEntry{
		entry("n1", "10.0.0.1", api.AgentService{ID: "a", Service: "web", Port: 80, Tags: []string{"v1", "blue"}}),
		entry("n2", "10.0.0.2", api.AgentService{ID: "b", Service: "web", Port: 8080, Tags: []string{"v2"}}),
	}
	for _, tc := range []struct {
		config string
		want   []string
	}{
		{"naming: {tag_subsets: []}", []string{"web.service.dc1.consul=10.0.0.1:80(unknown),10.0.0.2:8080(unknown)"}},
		{"naming: {tag_subsets: [v2, green]}", []string{
			"v2.web.service.dc1.consul=10.0.0.2:8080(unknown)",
			"web.service.dc1.consul=10.0.0.1:80(unknown),10.0.0.2:8080(unknown)",
		}},
		// The port in the name: one authority per port, and no
		// port-less "exists" entry.
		{`naming: {authority: "{{.Service}}.{{.Datacenter}}.internal:{{.Port}}", tag_authority: "{{.Service}}-{{.Tag}}.{{.Datacenter}}.internal"}`, []string{
			"web-blue.dc1.internal=10.0.0.1:80(unknown)",
			"web-v1.dc1.internal=10.0.0.1:80(unknown)",
			"web-v2.dc1.internal=10.0.0.2:8080(unknown)",
			"web.dc1.internal:80=10.0.0.1:80(unknown)",
			"web.dc1.internal:8080=10.0.0.2:8080(unknown)",
		}},
		{`namespace: team-a
naming: {authority: "{{.Service}}.{{.Namespace}}.{{.Partition}}.consul", tag_subsets: []}`, []string{
			"web.team-a.default.consul=10.0.0.1:80(unknown),10.0.0.2:8080(unknown)",
		}},
	} {
		g, _ := testBuilder(t, tc.config).build("dc1", "web", entries)
		if got := describe(g); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %v\nwant %v", tc.config, got, tc.want)
		}
	}
}

func TestConnectIdentityFormat(t *testing.T) {
	for _, tc := range []struct {
		td, ns, ap, dc, svc string
		id, sni             string
		ok                  bool
	}{
		{"td.consul", "", "", "dc1", "web", "spiffe://td.consul/ns/default/dc/dc1/svc/web", "web.default.dc1.internal.td.consul", true},
		{"td.consul", "team", "default", "dc2", "pay", "spiffe://td.consul/ns/team/dc/dc2/svc/pay", "pay.team.dc2.internal.td.consul", true},
		{"td.consul", "team", "east", "dc2", "pay", "spiffe://td.consul/ap/east/ns/team/dc/dc2/svc/pay", "pay.team.east.dc2.internal-v1.td.consul", true},
		{"TD.Consul", "", "", "dc1", "web", "", "", false},
		{"td.consul", "", "", "dc1", "we b", "", "", false},
	} {
		id, sni, ok := connectIdentity(tc.td, tc.ns, tc.ap, tc.dc, tc.svc)
		if id != tc.id || sni != tc.sni || ok != tc.ok {
			t.Errorf("connectIdentity(%q, %q, %q, %q, %q) = %q %q %v, want %q %q %v", tc.td, tc.ns, tc.ap, tc.dc, tc.svc, id, sni, ok, tc.id, tc.sni, tc.ok)
		}
		if ok {
			if _, err := discovery.ParseIdentity(id, sni); err != nil {
				t.Errorf("%s: %v", id, err)
			}
		}
	}
	// Without a trust domain for the datacenter: no identity, never a guess.
	b := testBuilder(t, "")
	native := &api.AgentService{Service: "web", Connect: &api.AgentServiceConnect{Native: true}}
	if id := b.identity("dc9", native); id.Kind != discovery.IdentityNone {
		t.Errorf("unknown trust domain gave %+v", id)
	}
	if id := b.identity("dc1", native); id.Name != "spiffe://td.consul/ns/default/dc/dc1/svc/web" {
		t.Errorf("native: %+v", id)
	}
}
