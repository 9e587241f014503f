package file

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/tributary-mesh/tributary/discovery"
)

const validYAML = `# demo
services:
  - name: Web.Demo.
    port: 8080
    opaque: true
    endpoints:
      - address: 10.1.0.1:8080
        zone: zone-a
        weight: 100
        health: passing
        identity: spiffe://example.org/ns/demo/sa/web
        server_name: web.demo.example.org
        protocol: h2
        labels: {rack: r1, tier: 2}
      - address: "[::1]:8080"
        identity: web.demo.serviceaccount.identity.linkerd.cluster.local
        protocol: opaque
  - name: web.demo          # same host, any port: another service
    endpoints:
      - address: "[::ffff:10.1.0.9]:81"
        health: critical
  - name: empty.demo
    port: 80
    endpoints: []
  - name: bare.demo
    port: 81
`

const validJSON = `{
	"services": [
		{"name": "Web.Demo.", "port": 8080, "opaque": true, "endpoints": [
			{"address": "10.1.0.1:8080", "zone": "zone-a", "weight": 100, "health": "passing",
			 "identity": "spiffe://example.org/ns/demo/sa/web", "server_name": "web.demo.example.org",
			 "protocol": "h2", "labels": {"rack": "r1", "tier": 2}},
			{"address": "[::1]:8080", "identity": "web.demo.serviceaccount.identity.linkerd.cluster.local", "protocol": "opaque"}
		]},
		{"name": "web.demo", "endpoints": [{"address": "[::ffff:10.1.0.9]:81", "health": "critical"}]},
		{"name": "empty.demo", "port": 80, "endpoints": []},
		{"name": "bare.demo", "port": 81}
	]
}
`

func wantValid() []discovery.Service {
	return []discovery.Service{
		{
			Authority: discovery.Authority{Host: "web.demo", Port: 8080},
			Opaque:    true,
			Endpoints: []discovery.Endpoint{
				{
					Addr:     netip.MustParseAddrPort("10.1.0.1:8080"),
					Weight:   100,
					Zone:     "zone-a",
					Health:   discovery.HealthPassing,
					Identity: discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://example.org/ns/demo/sa/web", ServerName: "web.demo.example.org"},
					Protocol: discovery.ProtocolH2,
					Labels:   map[string]string{"rack": "r1", "tier": "2"},
				},
				{
					Addr: netip.MustParseAddrPort("[::1]:8080"),
					Identity: discovery.Identity{
						Kind:       discovery.IdentityDNS,
						Name:       "web.demo.serviceaccount.identity.linkerd.cluster.local",
						ServerName: "web.demo.serviceaccount.identity.linkerd.cluster.local",
					},
					Protocol: discovery.ProtocolOpaque,
				},
			},
		},
		{
			Authority: discovery.Authority{Host: "web.demo"},
			Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.1.0.9:81"), Health: discovery.HealthCritical}},
		},
		{Authority: discovery.Authority{Host: "empty.demo", Port: 80}, Endpoints: []discovery.Endpoint{}},
		{Authority: discovery.Authority{Host: "bare.demo", Port: 81}},
	}
}

func TestParseValid(t *testing.T) {
	for name, data := range map[string]string{"yaml": validYAML, "json": validJSON} {
		t.Run(name, func(t *testing.T) {
			got, err := Parse("svc."+name, []byte(data))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if want := wantValid(); !reflect.DeepEqual(got, want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for name, data := range map[string]string{
		"zero bytes":     "",
		"comments":       "# nothing yet\n",
		"empty list":     "services: []\n",
		"null services":  "services:\n",
		"empty mapping":  "{}\n",
		"null document":  "~\n",
		"document start": "---\n",
		"json":           `{"services": []}`,
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Parse("empty.yaml", []byte(data))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(got) != 0 {
				t.Errorf("Parse = %+v, want no services", got)
			}
		})
	}
}

// svcYAML wraps endpoint lines into a one-service file: the service is at
// line 2, its endpoints list at line 5, the first endpoint at line 6.
func svcYAML(endpoint string) string {
	return "services:\n  - name: web.demo\n    port: 8080\n    opaque: false\n    endpoints:\n" + endpoint
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		data string
		line int
		key  string // "" for syntax errors
		msg  string
	}{
		{"unknown top-level key", "servics: []\n", 1, "servics", "unknown key"},
		{"top level is a list", "- name: web.demo\n", 1, "", "must be a mapping"},
		{"services not a list", "services: {name: web}\n", 1, "services", "must be a list"},
		{"service not a mapping", "services:\n  - web.demo\n", 2, "services[0]", "must be a mapping"},
		{"unknown service key", "services:\n  - name: web.demo\n    prot: 80\n", 3, "services[0].prot", "unknown key"},
		{"missing name", "services:\n  - port: 80\n", 2, "services[0].name", "missing"},
		{"empty name", "services:\n  - name: ''\n", 2, "services[0].name", "empty host"},
		{"name with space", "services:\n  - name: web demo\n", 2, "services[0].name", "printable"},
		{"name with port", "services:\n  - name: web.demo:80\n", 2, "services[0].name", "port key"},
		{"name not a string", "services:\n  - name: [web]\n", 2, "services[0].name", "must be a string"},
		{"port too big", "services:\n  - name: web.demo\n    port: 70000\n", 3, "services[0].port", "1 to 65535"},
		{"port zero", "services:\n  - name: web.demo\n    port: 0\n", 3, "services[0].port", "1 to 65535"},
		{"port quoted", "services:\n  - name: web.demo\n    port: '80'\n", 3, "services[0].port", "1 to 65535"},
		{"opaque not bool", "services:\n  - name: web.demo\n    opaque: maybe\n", 3, "services[0].opaque", "true or false"},
		{"endpoints not a list", "services:\n  - name: web.demo\n    endpoints: 10.0.0.1:80\n", 3, "services[0].endpoints", "must be a list"},
		{"endpoint not a mapping", svcYAML("      - 10.0.0.1:80\n"), 6, "services[0].endpoints[0]", "must be a mapping"},
		{"duplicate service", "services:\n  - name: web.demo\n    port: 80\n  - name: WEB.demo\n    port: 80\n", 4, "services[1].name", "listed twice (first at line 2)"},
		{"unknown endpoint key", svcYAML("      - address: 10.0.0.1:80\n        zones: a\n"), 7, "services[0].endpoints[0].zones", "unknown key"},
		{"missing address", svcYAML("      - zone: a\n"), 6, "services[0].endpoints[0].address", "missing"},
		{"address without port", svcYAML("      - address: 10.0.0.1\n"), 6, "services[0].endpoints[0].address", "no port"},
		{"address is a name", svcYAML("      - address: web1:80\n"), 6, "services[0].endpoints[0].address", "not IP:port"},
		{"ipv6 without brackets", svcYAML("      - address: '::1:80'\n"), 6, "services[0].endpoints[0].address", "no port"},
		{"address port zero", svcYAML("      - address: 10.0.0.1:0\n"), 6, "services[0].endpoints[0].address", "port 0"},
		{"address unspecified", svcYAML("      - address: 0.0.0.0:80\n"), 6, "services[0].endpoints[0].address", "unspecified"},
		{"address with ipv6 zone", svcYAML("      - address: '[fe80::1%eth0]:80'\n"), 6, "services[0].endpoints[0].address", "zones"},
		{"duplicate address", svcYAML("      - address: 10.0.0.1:80\n      - address: 10.0.0.2:80\n      - address: 10.0.0.1:80\n"), 8, "services[0].endpoints[2].address", "listed twice in this service (first at line 6)"},
		{"duplicate mapped address", svcYAML("      - address: 10.0.0.1:80\n      - address: '[::ffff:10.0.0.1]:80'\n"), 7, "services[0].endpoints[1].address", "listed twice"},
		{"bad zone", svcYAML("      - address: 10.0.0.1:80\n        zone: \"a\\u0001\"\n"), 7, "services[0].endpoints[0].zone", "printable"},
		{"negative weight", svcYAML("      - address: 10.0.0.1:80\n        weight: -1\n"), 7, "services[0].endpoints[0].weight", "0 to 4294967295"},
		{"weight too big", svcYAML("      - address: 10.0.0.1:80\n        weight: 4294967296\n"), 7, "services[0].endpoints[0].weight", "0 to 4294967295"},
		{"bad health", svcYAML("      - address: 10.0.0.1:80\n        health: ok\n"), 7, "services[0].endpoints[0].health", "unknown health"},
		{"bad protocol", svcYAML("      - address: 10.0.0.1:80\n        protocol: http\n"), 7, "services[0].endpoints[0].protocol", "unknown protocol"},
		{"spiffe without server_name", svcYAML("      - address: 10.0.0.1:80\n        identity: spiffe://example.org/web\n"), 7, "services[0].endpoints[0].identity", "server_name"},
		{"server_name without identity", svcYAML("      - address: 10.0.0.1:80\n        server_name: web.example.org\n"), 7, "services[0].endpoints[0].server_name", "without identity"},
		{"dns identity with other server_name", svcYAML("      - address: 10.0.0.1:80\n        identity: web.demo.sa\n        server_name: other\n"), 8, "services[0].endpoints[0].server_name", "drop server_name"},
		{"identity other scheme", svcYAML("      - address: 10.0.0.1:80\n        identity: https://example.org\n"), 7, "services[0].endpoints[0].identity", "only spiffe"},
		{"identity with space", svcYAML("      - address: 10.0.0.1:80\n        identity: web demo\n"), 7, "services[0].endpoints[0].identity", "without spaces"},
		{"labels not a mapping", svcYAML("      - address: 10.0.0.1:80\n        labels: [a]\n"), 7, "services[0].endpoints[0].labels", "mapping"},
		{"reserved label zone", svcYAML("      - address: 10.0.0.1:80\n        labels:\n          rack: r1\n          zone: a\n"), 9, "services[0].endpoints[0].labels.zone", "reserved"},
		{"reserved label source", svcYAML("      - address: 10.0.0.1:80\n        labels: {source: x}\n"), 7, "services[0].endpoints[0].labels.source", "reserved"},
		{"bad label name", svcYAML("      - address: 10.0.0.1:80\n        labels: {app.kubernetes.io/name: x}\n"), 7, "services[0].endpoints[0].labels.app.kubernetes.io/name", "label names"},
		{"empty label value", svcYAML("      - address: 10.0.0.1:80\n        labels: {rack: ''}\n"), 7, "services[0].endpoints[0].labels.rack", "empty"},
		{"null label value", svcYAML("      - address: 10.0.0.1:80\n        labels:\n          rack:\n"), 8, "services[0].endpoints[0].labels.rack", "non-empty"},
		{"duplicate key", "services:\n  - name: web.demo\n    port: 80\n    port: 81\n", 4, "services[0].port", "duplicate key (first at line 3)"},
		{"merge key", "x: &x {port: 80}\nservices:\n  - <<: *x\n    name: web.demo\n", 1, "x", "unknown key"},
		{"merge key in service", "services:\n  - name: web.demo\n    <<: {port: 80}\n", 3, "services[0].<<", "merge keys"},
		{"syntax error", "services:\n  - name: web.demo\n    port: [80\n", 3, "", "syntax error"},
		{"syntax error on line 1", "services: [\n", 1, "", "syntax error"},
		{"mapping values on line 1", "services: a: b\n", 1, "", "syntax error"},
		{"tab indentation", "services:\n\t- name: web.demo\n", 2, "", "syntax error"},
		{"unknown alias", "services:\n  - name: *nope\n", 2, "", "unknown anchor"},
		{"unterminated string", "services:\n  - name: \"web\n", 2, "", "syntax error"},
		{"json trailing garbage", "{\"services\": []}\n}\n", 2, "", "syntax error"},
		{"second document", "services: []\n---\nservices: []\n", 2, "", "second YAML document"},
		{"control character", "services: []\n# \x01\n", 2, "", "control character"},
		{"invalid utf-8", "services: []\n\n# \xff\n", 3, "", "UTF-8"},
		{"json unknown key", "{\n  \"services\": [\n    {\"name\": \"web.demo\",\n     \"prot\": 80}\n  ]\n}\n", 4, "services[0].prot", "unknown key"},
		{"json bad address", "{\"services\": [{\"name\": \"web.demo\", \"endpoints\": [\n  {\"address\": \"10.0.0.1\"}]}]}\n", 2, "services[0].endpoints[0].address", "no port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const path = "/etc/tributary/svc.yaml"
			got, err := Parse(path, []byte(tt.data))
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", got)
			}
			if got != nil {
				t.Errorf("Parse returned services %+v with its error", got)
			}
			prefix := fmt.Sprintf("%s:%d: ", path, tt.line)
			if tt.key != "" {
				prefix += tt.key + ": "
			}
			if msg := err.Error(); !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, tt.msg) {
				t.Errorf("error %q\nwant prefix %q and %q in it", msg, prefix, tt.msg)
			}
			var pe *discovery.ConfigError
			if !errors.As(err, &pe) || pe.File != path || pe.Line != tt.line || pe.Key != tt.key {
				t.Errorf("errors.As(*discovery.ConfigError) = %+v, want file %s line %d key %q", pe, path, tt.line, tt.key)
			}
		})
	}
}

func TestParseReportsSeveralErrors(t *testing.T) {
	data := svcYAML("      - address: 10.0.0.1\n        health: ok\n      - address: 10.0.0.2:80\n        protocol: http\n")
	_, err := Parse("svc.yaml", []byte(data))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"svc.yaml:6: services[0].endpoints[0].address:",
		"svc.yaml:7: services[0].endpoints[0].health:",
		"svc.yaml:9: services[0].endpoints[1].protocol:",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestParseAliases(t *testing.T) {
	data := "common: &eps\n  - address: 10.0.0.1:80\n"
	if _, err := Parse("a.yaml", []byte(data+"services: []\n")); err == nil || !strings.Contains(err.Error(), "a.yaml:1: common: unknown key") {
		t.Errorf("a helper key at the top level: err = %v, want unknown key", err)
	}
	data = "services:\n  - name: a.demo\n    endpoints: &eps\n      - address: 10.0.0.1:80\n        labels: &l {rack: r1}\n" +
		"  - name: b.demo\n    endpoints: *eps\n"
	got, err := Parse("a.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[1].Endpoints) != 1 || got[1].Endpoints[0].Labels["rack"] != "r1" {
		t.Errorf("aliases not followed: %+v", got)
	}
}

func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	// Many services sharing one big endpoints list through an alias: a
	// small file, a lot of walking. The node budget must stop it.
	b.WriteString("services:\n  - name: s0.demo\n    endpoints: &e\n")
	for i := range 200 {
		fmt.Fprintf(&b, "      - address: 10.0.%d.%d:80\n", i/250, i%250+1)
	}
	for i := 1; i < 1000; i++ {
		fmt.Fprintf(&b, "  - {name: s%d.demo, endpoints: *e}\n", i)
	}
	_, err := Parse("bomb.yaml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "too many aliases") {
		t.Errorf("err = %v, want the alias budget to stop the walk", err)
	}
}

func TestParseLargeCompactFile(t *testing.T) {
	// The alias budget must not trip on a big file without aliases, even
	// written as tersely as JSON allows.
	var b strings.Builder
	b.WriteString(`{"services":[`)
	for s := range 5 {
		if s > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":"s%d","endpoints":[`, s)
		for i := range 1000 {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"address":"10.%d.%d.%d:1","labels":{"a":1,"b":2}}`, s, i/250, i%250+1)
		}
		b.WriteString("]}")
	}
	b.WriteString("]}")
	got, err := Parse("big.json", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 || len(got[4].Endpoints) != 1000 {
		t.Errorf("got %d services", len(got))
	}
}

func TestParseTooLarge(t *testing.T) {
	data := make([]byte, MaxFileSize+1)
	if _, err := Parse("big.yaml", data); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("err = %v, want too large", err)
	}
}

func TestExampleServicesFile(t *testing.T) {
	const path = "../../examples/services/demo.yaml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(path, data)
	if err != nil {
		t.Fatalf("the example does not parse: %v", err)
	}
	byName := map[string]discovery.Service{}
	for _, s := range got {
		byName[s.Authority.String()] = s
	}
	for name, n := range map[string]int{"web.demo:8080": 3, "api.demo:9000": 2, "empty.demo:80": 0} {
		s, ok := byName[name]
		if !ok || len(s.Endpoints) != n {
			t.Errorf("%s: got %+v, want %d endpoints", name, s, n)
		}
	}
	kinds := map[discovery.IdentityKind]bool{}
	for _, e := range byName["web.demo:8080"].Endpoints {
		kinds[e.Identity.Kind] = true
	}
	if !kinds[discovery.IdentitySPIFFE] || !kinds[discovery.IdentityDNS] {
		t.Errorf("web.demo should show a SPIFFE and a DNS-like identity: %+v", byName["web.demo:8080"].Endpoints)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{validYAML, validJSON, "", "services: []\n", svcYAML("      - address: 10.0.0.1:80\n"),
		"services:\n  - name: a\n    endpoints: &e [{address: '1.2.3.4:5'}]\n  - {name: b, endpoints: *e}\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		services, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error without the path: %v", err)
			}
			if services != nil {
				t.Fatalf("services with an error")
			}
			return
		}
		seen := map[discovery.Authority]bool{}
		for _, s := range services {
			if s.Authority.Host == "" || seen[s.Authority] {
				t.Fatalf("bad or duplicate authority %+v", s.Authority)
			}
			seen[s.Authority] = true
			addrs := map[netip.AddrPort]bool{}
			for _, e := range s.Endpoints {
				if !e.Addr.IsValid() || e.Addr.Port() == 0 || addrs[e.Addr] {
					t.Fatalf("bad or duplicate address %v", e.Addr)
				}
				addrs[e.Addr] = true
				if e.Identity.Kind == discovery.IdentitySPIFFE && e.Identity.ServerName == "" {
					t.Fatalf("SPIFFE identity without server name")
				}
				if _, ok := e.Labels["zone"]; ok {
					t.Fatalf("reserved label")
				}
			}
		}
	})
}
