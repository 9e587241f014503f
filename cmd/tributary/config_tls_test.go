package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/destination/tlsauth"
	"github.com/tributary-mesh/tributary/discovery"
)

const tlsConfig = `server:
  keepalive:
    time: 5s
  tls:
    cert_file: tls/tls.crt
    key_file: tls/tls.key
    ca_file: /etc/ca.crt
    admin: true
    trust_domains: [prod.example.org]
    authorize:
      destination:
        trust_domains: [partner.example.org]
        ids: ["spiffe://prod.example.org/ns/*/sa/proxy"]
      admin:
        ids:
          - spiffe://prod.example.org/ops/**
`

func TestParseServerTLSAndKeepalive(t *testing.T) {
	c, err := parseTestConfig([]byte(tlsConfig), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tc := c.TLS
	if tc == nil {
		t.Fatal("tls section not read")
	}
	if tc.CertFile != "tls/tls.crt" || tc.KeyFile != "tls/tls.key" || tc.CAFile != "/etc/ca.crt" || !tc.Admin {
		t.Errorf("files/admin: %+v", tc)
	}
	if time.Duration(tc.ReloadInterval) != tlsauth.DefaultReloadInterval {
		t.Errorf("reload_interval default: %v", tc.ReloadInterval)
	}
	if !slices.Equal(tc.TrustDomains, []string{"prod.example.org"}) ||
		!slices.Equal(tc.Authorize.Destination.TrustDomains, []string{"partner.example.org"}) ||
		!slices.Equal(tc.Authorize.Destination.IDs, []string{"spiffe://prod.example.org/ns/*/sa/proxy"}) ||
		!slices.Equal(tc.Authorize.Admin.IDs, []string{"spiffe://prod.example.org/ops/**"}) ||
		len(tc.Authorize.Registration.IDs)+len(tc.Authorize.Registration.TrustDomains) != 0 {
		t.Errorf("access lists: %+v", tc.Authorize)
	}
	// A keepalive key left out keeps its default.
	want := DefaultKeepalive()
	want.Time = discovery.Duration(5 * time.Second)
	if got := c.Server.KeepaliveSettings(); got != want {
		t.Errorf("keepalive %+v, want %+v", got, want)
	}
}

func TestServerTLSAndKeepaliveDefaults(t *testing.T) {
	c, err := parseTestConfig([]byte("server:\n  tls:\n  keepalive:\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS != nil {
		t.Errorf("an empty tls key turned TLS on: %+v", c.TLS)
	}
	if got := c.Server.KeepaliveSettings(); got != DefaultKeepalive() {
		t.Errorf("keepalive %+v", got)
	}
	d := DefaultKeepalive()
	if time.Duration(d.Time) != 30*time.Second || time.Duration(d.Timeout) != 10*time.Second || time.Duration(d.MinPingInterval) != 10*time.Second {
		t.Errorf("defaults changed: %+v", d)
	}
	c, err = parseTestConfig([]byte("server:\n  tls:\n    workload_api: unix:///run/spire/agent.sock\n    reload_interval: 5s\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.WorkloadAPI != "unix:///run/spire/agent.sock" || time.Duration(c.TLS.ReloadInterval) != 5*time.Second {
		t.Errorf("workload api: %+v", c.TLS)
	}
}

func TestServerTLSErrors(t *testing.T) {
	files := "    cert_file: a\n    key_file: b\n    ca_file: c\n"
	for _, tc := range []struct {
		name string
		yaml string
		want []string // each a substring of one error line
	}{
		{"empty section", "server:\n  tls: {}\n", []string{"c.yaml:2: server.tls.cert_file: required", "server.tls.key_file: required", "server.tls.ca_file: required"}},
		{"key missing", "server:\n  tls:\n    cert_file: a\n    ca_file: c\n", []string{"c.yaml:3: server.tls.key_file: required (or workload_api"}},
		{"both sources", "server:\n  tls:\n    workload_api: unix:///s\n" + files, []string{"c.yaml:3: server.tls.workload_api: use either workload_api or cert_file/key_file/ca_file"}},
		{"bad workload api", "server:\n  tls:\n    workload_api: /run/agent.sock\n", []string{"c.yaml:3: server.tls.workload_api:", "unix:///"}},
		{"unknown key", "server:\n  tls:\n    cert: a\n" + files, []string{"c.yaml:3: server.tls.cert: unknown key (valid keys: workload_api, cert_file"}},
		{"unknown API", "server:\n  tls:\n" + files + "    authorize:\n      tap: {ids: []}\n", []string{"c.yaml:7: server.tls.authorize.tap: unknown key (valid keys: destination, admin, registration, xds)"}},
		{"reload too often", "server:\n  tls:\n" + files + "    reload_interval: 0s\n", []string{"c.yaml:6: server.tls.reload_interval: 0s is too short"}},
		{"bad trust domain", "server:\n  tls:\n" + files + "    trust_domains:\n      - ok.example\n      - Bad_Domain\n", []string{"c.yaml:8: server.tls.trust_domains[1]:", `"Bad_Domain" is not a trust domain name`}},
		{"trust domain as an ID", "server:\n  tls:\n" + files + "    trust_domains: [spiffe://prod.example]\n", []string{"c.yaml:6: server.tls.trust_domains[0]:", "not a trust domain name"}},
		{"duplicate trust domain", "server:\n  tls:\n" + files + "    authorize:\n      destination:\n        trust_domains: [a.example, a.example]\n", []string{"c.yaml:8: server.tls.authorize.destination.trust_domains[1]:", "listed twice"}},
		{"bad pattern", "server:\n  tls:\n" + files + "    authorize:\n      registration:\n        ids:\n          - spiffe://prod.example/ns/*/sa/x\n          - spiffe://prod.example/web-*\n", []string{"c.yaml:10: server.tls.authorize.registration.ids[1]:", "a wildcard must be a whole segment"}},
		{"pattern naming a trust domain", "server:\n  tls:\n" + files + "    authorize:\n      destination: {ids: ['spiffe://prod.example']}\n", []string{"c.yaml:7: server.tls.authorize.destination.ids[0]:", "list it under trust_domains"}},
		{"admin list without admin TLS", "server:\n  tls:\n" + files + "    authorize:\n      admin: {ids: ['spiffe://prod.example/ops/**']}\n", []string{"c.yaml:7: server.tls.authorize.admin: has no effect without server.tls.admin: true"}},
		{"keepalive too short", "server:\n  keepalive:\n    time: 500ms\n", []string{"c.yaml:3: server.keepalive.time: 500ms is too short"}},
		{"keepalive timeout 0", "server:\n  keepalive:\n    timeout: 0s\n", []string{"c.yaml:3: server.keepalive.timeout: must be more than 0s"}},
		{"keepalive min ping 0", "server:\n  keepalive: {min_ping_interval: 0s}\n", []string{"c.yaml:2: server.keepalive.min_ping_interval: must be more than 0s"}},
		{"keepalive unknown key", "server:\n  keepalive:\n    interval: 1s\n", []string{"c.yaml:3: server.keepalive.interval: unknown key (valid keys: time, timeout, min_ping_interval)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseTestConfig([]byte(tc.yaml), "c.yaml")
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestServerStreamsSection(t *testing.T) {
	c, err := parseTestConfig([]byte("server:\n  streams:\n    send_timeout: 5s\n    new_per_second: 100\n    new_burst: 50\n    max: 1000\n    max_per_connection: 300\n    max_header_bytes: 8192\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Server.Streams; st == nil || st.SendTimeout != discovery.Duration(5*time.Second) || st.NewPerSecond != 100 || st.NewBurst != 50 || st.Max != 1000 ||
		st.MaxPerConnection != 300 || st.MaxHeaderBytes != 8192 {
		t.Fatalf("streams: %+v", c.Server.Streams)
	}
	// -1 lifts the stream bounds; 0 leaves the defaults to the server.
	c, err = parseTestConfig([]byte("server:\n  streams:\n    max: -1\n    max_per_connection: -1\n    max_header_bytes: 0\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Server.Streams; st.Max != -1 || st.MaxPerConnection != -1 || st.MaxHeaderBytes != 0 {
		t.Fatalf("streams: %+v", st)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"server:\n  streams:\n    new_per_second: -2\n", "c.yaml:3: server.streams.new_per_second"},
		{"server:\n  streams:\n    new_burst: -1\n", "c.yaml:3: server.streams.new_burst"},
		{"server:\n  streams:\n    max: -2\n", "c.yaml:3: server.streams.max"},
		{"server:\n  streams:\n    max_per_connection: -2\n", "c.yaml:3: server.streams.max_per_connection"},
		{"server:\n  streams:\n    max_header_bytes: 512\n", "c.yaml:3: server.streams.max_header_bytes"},
		{"server:\n  streams:\n    max_header_bytes: 16777217\n", "c.yaml:3: server.streams.max_header_bytes"},
		{"server:\n  streams:\n    max_header_bytes: -1\n", "c.yaml:3: server.streams.max_header_bytes"},
		{"server:\n  streams:\n    send_timeout: -1s\n", "c.yaml:3: server.streams.send_timeout"},
		{"server:\n  streams:\n    burst: 1\n", "c.yaml:3: server.streams.burst"},
	} {
		_, err := parseTestConfig([]byte(tc.yaml), "c.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %s", tc.yaml, err, tc.want)
		}
	}
}
