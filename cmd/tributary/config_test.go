package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/destination/tlsauth"
	"github.com/tributary-mesh/tributary/discovery"
)

const testKind = "test-kind-x"

// testKindSource is a kind for config tests: it wants paths.
type testKindSource struct {
	Paths    []string           `yaml:"paths"`
	Interval discovery.Duration `yaml:"interval"`
}

func (s *testKindSource) Run(ctx context.Context, _ discovery.Sink) { <-ctx.Done() }

func init() {
	discovery.Register(discovery.Kind{Name: testKind, New: func(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
		s := &testKindSource{}
		if err := discovery.DecodeStrict(node, s); err != nil {
			return nil, err
		}
		if len(s.Paths) == 0 {
			return nil, errors.New("paths: at least one path is required")
		}
		return s, nil
	}})
}

// parseTestConfig parses a config as loadConfig does, from bytes.
func parseTestConfig(data []byte, file string) (*config, error) {
	c := &config{}
	core, err := discovery.ParseConfig(data, file, c.decodeServer, c.Checks.Decode)
	if err != nil {
		return nil, err
	}
	c.Config = core
	return c, nil
}

// configErrors returns the ConfigErrors of an errors.Join tree, failing on anything else.
func configErrors(t *testing.T, err error) []*discovery.ConfigError {
	t.Helper()
	var out []*discovery.ConfigError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				walk(c)
			}
			return
		}
		ce, ok := e.(*discovery.ConfigError)
		if !ok {
			t.Fatalf("error %T (%v) is not a *discovery.ConfigError", e, e)
		}
		out = append(out, ce)
	}
	walk(err)
	return out
}

const fullConfig = `# a full config
server:
  listen: 0.0.0.0:8086
  admin: 127.0.0.1:9990
  startup_timeout: 1500ms
  log_level: debug
  log_format: json
sources:
  - name: east
    kind: test-kind-x
    priority: 10
    stale_after: 5m
    paths: [east.yaml]
    interval: 30s
  - name: west/dc2
    kind: test-kind-x
    paths: [/abs/west.yaml]
federation:
  - authority: Web.Demo:8080
    aliases: [web.service.dc1.consul:80, web.prod.svc.cluster.local:8080]
    failover:
      - sources: [east]
        min_healthy: 2
      - sources: [west/dc2]
  - authority: api.demo
    aliases: [api.legacy]
`

func TestParseServerConfig(t *testing.T) {
	c, err := parseTestConfig([]byte(fullConfig), "conf/tributary.yaml")
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	wantServer := ServerConfig{
		Listen: "0.0.0.0:8086", Admin: "127.0.0.1:9990",
		StartupTimeout: discovery.Duration(1500 * time.Millisecond), ShutdownTimeout: discovery.Duration(10 * time.Second),
		LogLevel: "debug", LogFormat: "json", MemoryLimitRatio: 0.9,
	}
	if !reflect.DeepEqual(c.Server, wantServer) {
		t.Errorf("server = %+v, want %+v", c.Server, wantServer)
	}
	if c.Server.SlogLevel() != slog.LevelDebug {
		t.Errorf("SlogLevel = %v", c.Server.SlogLevel())
	}
	if len(c.Sources) != 2 || c.TLS != nil || c.Checks.MaxConcurrentChecks != 512 {
		t.Errorf("other sections: %+v %+v %+v", c.Sources, c.TLS, c.Checks)
	}
}

func TestParseServerConfigDefaults(t *testing.T) {
	for _, src := range []string{"", "# nothing\n", "sources: []\n", "server:\nsources:\nfederation:\n"} {
		c, err := parseTestConfig([]byte(src), "")
		if err != nil {
			t.Errorf("%q: %v", src, err)
			continue
		}
		if !reflect.DeepEqual(c.Server, DefaultServerConfig()) {
			t.Errorf("%q: %+v", src, c.Server)
		}
	}
	d := DefaultServerConfig()
	if d.Listen != "127.0.0.1:8086" || d.Admin != "127.0.0.1:9996" || time.Duration(d.StartupTimeout) != 2*time.Second ||
		time.Duration(d.ShutdownTimeout) != 10*time.Second || d.LogLevel != "info" || d.LogFormat != "text" {
		t.Errorf("defaults = %+v", d)
	}
	// A partial server section keeps the other defaults.
	c, err := parseTestConfig([]byte("server:\n  log_level: warn\n"), "")
	if err != nil || c.Server.LogLevel != "warn" || c.Server.Listen != d.Listen || c.Server.SlogLevel() != slog.LevelWarn {
		t.Errorf("partial server: %+v %v", c, err)
	}
}

// TestConfigErrors is the whole file's errors, as tributary check reports
// them: the core's and every section owner's, sorted by line.
func TestConfigErrors(t *testing.T) {
	src := func(s string) string { return "sources:\n  - name: east\n    kind: test-kind-x\n    paths: [a]\n" + s }
	// each want: substrings the error must contain, in this order within one line
	cases := []struct {
		name string
		yaml string
		want [][]string
	}{
		{"unknown top-level key", "server: {}\nsorces: []\n", [][]string{{"c.yaml:2: sorces: unknown key (valid keys: server, sources, federation, health, dns, xds)"}}},
		{"unknown server key", "server:\n  listen: :1\n  lissen: :2\n", [][]string{{"c.yaml:3: server.lissen: unknown key"}}},
		{"duplicate server key", "server:\n  listen: :1\n  listen: :2\n", [][]string{{"c.yaml:3: server.listen: duplicate key (first at line 2)"}}},
		{"listen not host:port", "server:\n  listen: localhost\n", [][]string{{"c.yaml:2: server.listen:", "must be host:port"}}},
		{"admin port not numeric", "server:\n  admin: localhost:http\n", [][]string{{"c.yaml:2: server.admin:", "not a number"}}},
		{"listen equals admin", "server:\n  listen: :9000\n  admin: :9000\n", [][]string{{"c.yaml:3: server.admin:", "also server.listen"}}},
		{"startup timeout 3s", "server:\n  startup_timeout: 3s\n", [][]string{{"c.yaml:2: server.startup_timeout:", "less than 3s"}}},
		{"bad duration", "server:\n  shutdown_timeout: ten\n", [][]string{{"c.yaml:2: server.shutdown_timeout:", `invalid duration "ten"`}}},
		{"negative duration", "server:\n  shutdown_timeout: -1s\n", [][]string{{"c.yaml:2: server.shutdown_timeout:", "negative"}}},
		{"bad log level", "server:\n  log_level: loud\n", [][]string{{"c.yaml:2: server.log_level:", `"loud"`}}},
		{"bad log format", "server:\n  log_format: xml\n", [][]string{{"c.yaml:2: server.log_format:", `"xml"`}}},
		{"sources not a list", "sources: {a: 1}\n", [][]string{{"c.yaml:1: sources: want a list"}}},
		{"source not a mapping", "sources:\n  - east\n", [][]string{{"c.yaml:2: sources[0]: a source must be a mapping"}}},
		{"missing name", "sources:\n  - kind: test-kind-x\n", [][]string{{"c.yaml:2: sources[0].name: required"}}},
		{"bad name", "sources:\n  - name: East\n    kind: test-kind-x\n", [][]string{{"c.yaml:2: sources[0].name:", "not a valid source name"}}},
		{"duplicate names", src("  - name: east\n    kind: test-kind-x\n"), [][]string{{"c.yaml:5: sources[1].name:", `duplicate source name "east" (first at line 2)`}}},
		{"missing kind", "sources:\n  - name: a\n", [][]string{{"c.yaml:2: sources[0].kind: required", testKind}}},
		{"unknown kind", "sources:\n  - name: a\n    kind: nope\n", [][]string{{"c.yaml:3: sources[0].kind:", `unknown kind "nope"`, "known kinds:", testKind}}},
		{"bad priority", "sources:\n  - name: a\n    kind: test-kind-x\n    priority: high\n", [][]string{{"c.yaml:4: sources[0].priority:", "cannot unmarshal !!str `high` into int"}}},
		{"bad stale_after", "sources:\n  - name: a\n    kind: test-kind-x\n    stale_after: 1x\n", [][]string{{"c.yaml:4: sources[0].stale_after:", "invalid duration"}}},
		{"rule without authority", src("federation:\n  - aliases: [a:1]\n"), [][]string{{"c.yaml:6: federation[0].authority: required"}}},
		{"bad authority", src("federation:\n  - authority: 'web:0'\n"), [][]string{{"c.yaml:6: federation[0].authority:", "invalid authority"}}},
		{"unknown rule key", src("federation:\n  - authority: web:80\n    alias: [x:80]\n"), [][]string{{"c.yaml:7: federation[0].alias: unknown key"}}},
		{"duplicate rules", src("federation:\n  - authority: web:80\n  - authority: WEB:80\n"), [][]string{{"c.yaml:7: federation[1].authority:", "a second rule for web:80 (first at line 6)"}}},
		{"bad alias", src("federation:\n  - authority: web:80\n    aliases:\n      - ok:80\n      - 'bad host:80'\n"), [][]string{{"c.yaml:9: federation[0].aliases[1]:", "invalid authority"}}},
		{"alias is own authority", src("federation:\n  - authority: web:80\n    aliases: [web:80]\n"), [][]string{{"c.yaml:7: federation[0].aliases[0]:", "own authority"}}},
		{"rule and alias", src("federation:\n  - authority: web:80\n    aliases: [api:80]\n  - authority: api:80\n"), [][]string{{"c.yaml:7: federation[0].aliases[0]:", "api:80 is also matched by the federation rule for api:80 (line 8)"}}},
		{"alias matched by a bare-host rule", src("federation:\n  - authority: web:80\n    aliases: [api:9000]\n  - authority: api\n"), [][]string{{"c.yaml:7: federation[0].aliases[0]:", "api:9000 is also matched by the federation rule for api (line 8)"}}},
		{"portless alias under a bare rule", src("federation:\n  - authority: web\n    aliases: [api]\n  - authority: api:81\n"), [][]string{{"c.yaml:7: federation[0].aliases[0]:", "rule for api:81"}}},
		{"unknown tier source", src("federation:\n  - authority: web:80\n    failover:\n      - sources: [east, nowhere]\n"), [][]string{{"c.yaml:8: federation[0].failover[0].sources[1]:", `unknown source "nowhere"`}}},
		{"source in two tiers", src("federation:\n  - authority: web:80\n    failover:\n      - sources: [east]\n      - sources:\n          - east\n"), [][]string{{"c.yaml:10: federation[0].failover[1].sources[0]:", "already in failover[0]"}}},
		{"min_healthy 0", src("federation:\n  - authority: web:80\n    failover:\n      - sources: [east]\n        min_healthy: 0\n"), [][]string{{"c.yaml:9: federation[0].failover[0].min_healthy:", "at least 1"}}},
		{"empty tier", src("federation:\n  - authority: web:80\n    failover:\n      - min_healthy: 2\n"), [][]string{{"c.yaml:8: federation[0].failover[0].sources:", "at least one source"}}},
		{"bad panic threshold", "health:\n  panic_threshold: 0.5\n", [][]string{{"c.yaml:2: health.panic_threshold:", "followed by %"}}},
		{"panic threshold over 100%", src("federation:\n  - authority: web:80\n    panic_threshold: 120%\n"), [][]string{{"c.yaml:7: federation[0].panic_threshold:", "from 0% to 100%"}}},
		{"max_concurrent_checks 0", "health:\n  max_concurrent_checks: 0\n", [][]string{{"c.yaml:2: health.max_concurrent_checks:", "from 1 to 100000"}}},
		{"unknown guard key", src("    deletion_guard: {share: 10%}\n"), [][]string{{"c.yaml:5: sources[0].deletion_guard.share: unknown key"}}},
		{"negative min_endpoints", src("    deletion_guard:\n      min_endpoints: -1\n"), [][]string{{"c.yaml:6: sources[0].deletion_guard.min_endpoints:", "negative"}}},
		{"unknown check type", src("    health_check:\n      type: icmp\n"), [][]string{{"c.yaml:6: sources[0].health_check.type:", `unknown check type "icmp"`}}},
		{"unknown check key", src("    health_check:\n      interval: 1s\n      fall: 3\n"), [][]string{{"c.yaml:7: sources[0].health_check.fall: unknown key"}}},
		{"timeout 0", src("    health_check:\n      interval: 1s\n      timeout: 0s\n"), [][]string{{"c.yaml:7: sources[0].health_check.timeout:", "must be positive"}}},
		{"threshold 0", src("    health_check:\n      healthy_threshold: 0\n"), [][]string{{"c.yaml:6: sources[0].health_check.healthy_threshold:", "from 1 to 100"}}},
		{"path on tcp", src("    health_check:\n      path: /x\n"), [][]string{{"c.yaml:6: sources[0].health_check.path:", "applies to http checks only"}}},
		{"bad path", src("    health_check:\n      type: http\n      path: healthz\n"), [][]string{{"c.yaml:7: sources[0].health_check.path:", "must start with /"}}},
		{"bad status", src("    health_check:\n      type: http\n      expected_status: 200-abc\n"), [][]string{{"c.yaml:7: sources[0].health_check.expected_status:", "status codes"}}},
		{"bad initial", src("    health_check:\n      initial_health: warning\n"), [][]string{{"c.yaml:6: sources[0].health_check.initial_health:", `"warning"`}}},
		{"hold-down order", src("    health_check:\n      hold_down: 1m\n      max_hold_down: 30s\n"), [][]string{{"c.yaml:7: sources[0].health_check.max_hold_down:", "shorter than hold_down"}}},
		{"bad override authority", src("    health_check:\n      services:\n        'web:0': {type: tcp}\n"), [][]string{{"c.yaml:7: sources[0].health_check.services[\"web:0\"]:", "invalid authority"}}},
		{"duplicate override", src("    health_check:\n      services:\n        web:80: {type: tcp}\n        WEB:80: {type: none}\n"), [][]string{{"c.yaml:8: sources[0].health_check.services[\"WEB:80\"]:", "a second override for web:80"}}},
		{"override key checked", src("    health_check:\n      services:\n        web:80: {type: grpc, path: /x}\n"), [][]string{{"c.yaml:7: sources[0].health_check.services[\"web:80\"].path:", "applies to http checks only"}}},
		{"unknown override key", src("    health_check:\n      services:\n        web:80: {tipe: grpc}\n"), [][]string{{"c.yaml:7: sources[0].health_check.services[\"web:80\"].tipe: unknown key"}}},
		{"yaml syntax", "server:\n  listen: [\n", [][]string{{"c.yaml:", "did not find expected"}}},
		{"two documents", "server: {}\n---\nsources: []\n", [][]string{{"c.yaml:2:", "more than one YAML document"}}},
		{"not a mapping", "- a\n", [][]string{{"c.yaml:1: a config must be a mapping"}}},
		{
			"several together",
			"server:\n  startup_timeout: 5s\n  log_level: x\nsources:\n  - name: a\n    kind: nope\n  - name: a\n    kind: test-kind-x\nbogus: 1\n",
			[][]string{
				{"c.yaml:2: server.startup_timeout:"},
				{"c.yaml:3: server.log_level:"},
				{"c.yaml:6: sources[0].kind:", "unknown kind"},
				{"c.yaml:7: sources[1].name:", "duplicate"},
				{"c.yaml:9: bogus: unknown key"},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseTestConfig([]byte(tc.yaml), "c.yaml")
			if err == nil {
				t.Fatalf("no error; config %+v", c)
			}
			if c != nil {
				t.Error("a config came back with the error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(lines), len(tc.want), err)
			}
			for i, parts := range tc.want {
				rest := lines[i]
				for _, p := range parts {
					j := strings.Index(rest, p)
					if j < 0 {
						t.Errorf("error %q: missing %q (in order)", lines[i], p)
						break
					}
					rest = rest[j+len(p):]
				}
			}
			for _, ce := range configErrors(t, err) {
				if ce.File != "c.yaml" {
					t.Errorf("%v: File = %q", ce, ce.File)
				}
			}
		})
	}
}

// FuzzParseConfig: the whole config, every section decoded by its owner,
// never panics; a refusal is a list of file:line errors and no config; an
// accepted config keeps the promises of the server and server.tls
// sections (valid addresses and levels, a TLS section with exactly one
// credential source and valid access lists); parsing is deterministic.
// discovery's FuzzParseConfig holds the core's promises.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"", "server: {}\n", tlsConfig, fullConfig,
		"server:\n  listen: 127.0.0.1:8086\n  admin: 127.0.0.1:9996\n  startup_timeout: 2s\n  keepalive: {time: 1s, timeout: 1s, min_ping_interval: 1s}\n",
		"server:\n  tls:\n    workload_api: unix:///run/spire/agent.sock\n    authorize:\n      registration: {ids: ['spiffe://a.example/x/**']}\n",
		"sources:\n  - name: east\n    kind: " + testKind + "\n    paths: [a]\n  - name: west\n    kind: " + testKind + "\n    paths: [b]\n" +
			"federation:\n  - authority: web:80\n    aliases: [web.consul:80]\n    failover:\n      - sources: [east]\n        min_healthy: 2\n      - sources: [west]\n",
		"base: &b {listen: ':1'}\nserver:\n  <<: *b\n",
		"sources:\n  - &s {name: a, kind: " + testKind + ", paths: [x]}\n  - *s\n",
		"server: [1, 2]\n", "--- \n...\n", "a: &a [*a]\n", "server:\n  tls:\n  keepalive:\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseTestConfig(data, "fuzz.yaml")
		if err != nil {
			if c != nil {
				t.Fatal("a config with an error")
			}
			for _, ce := range configErrors(t, err) {
				if ce.File != "fuzz.yaml" || ce.Line < 0 || ce.Err == nil || ce.Err.Error() == "" {
					t.Fatalf("error without its place or message: %#v", ce)
				}
			}
			return
		}
		checkServerConfig(t, c)
		again, err := parseTestConfig(data, "fuzz.yaml")
		if err != nil || !reflect.DeepEqual(c.Server, again.Server) || !reflect.DeepEqual(c.TLS, again.TLS) || !reflect.DeepEqual(c.Checks, again.Checks) {
			t.Fatalf("parsing twice differs: %v", err)
		}
	})
}

func checkServerConfig(t *testing.T, c *config) {
	t.Helper()
	s := c.Server
	for _, a := range []string{s.Listen, s.Admin} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			t.Fatalf("address %q accepted: %v", a, err)
		}
	}
	if time.Duration(s.StartupTimeout) >= maxStartupTimeout || s.StartupTimeout < 0 || s.ShutdownTimeout < 0 {
		t.Fatalf("timeouts accepted: %v %v", s.StartupTimeout, s.ShutdownTimeout)
	}
	if !strings.Contains(" debug info warn error ", " "+s.LogLevel+" ") || (s.LogFormat != "text" && s.LogFormat != "json") {
		t.Fatalf("log settings accepted: %q %q", s.LogLevel, s.LogFormat)
	}
	if k := s.KeepaliveSettings(); time.Duration(k.Time) < time.Second || k.Timeout <= 0 || k.MinPingInterval <= 0 {
		t.Fatalf("keepalive accepted: %+v", k)
	}
	if tc := c.TLS; tc != nil {
		files := tc.CertFile != "" && tc.KeyFile != "" && tc.CAFile != ""
		if (tc.WorkloadAPI != "") == files || (tc.WorkloadAPI != "" && tc.CertFile+tc.KeyFile+tc.CAFile != "") {
			t.Fatalf("tls with no single credential source accepted: %+v", tc)
		}
		if time.Duration(tc.ReloadInterval) < time.Second {
			t.Fatalf("reload_interval accepted: %v", tc.ReloadInterval)
		}
		for _, a := range []tlsauth.APIAccess{{TrustDomains: tc.TrustDomains}, tc.Authorize.Destination, tc.Authorize.Admin, tc.Authorize.Registration} {
			for _, td := range a.TrustDomains {
				if _, err := spiffeid.TrustDomainFromString(td); err != nil {
					t.Fatalf("trust domain %q accepted: %v", td, err)
				}
			}
			for _, id := range a.IDs {
				if err := tlsauth.CheckSPIFFEIDPattern(id); err != nil {
					t.Fatalf("ID pattern %q accepted: %v", id, err)
				}
			}
		}
		if !tc.Admin && (len(tc.Authorize.Admin.IDs) > 0 || len(tc.Authorize.Admin.TrustDomains) > 0) {
			t.Fatal("an admin access list without admin TLS accepted")
		}
	}
}

func TestInboundPolicyConfig(t *testing.T) {
	c, err := parseTestConfig([]byte("server:\n  inbound_policy:\n    default: deny\n    ports: {8080: all-authenticated}\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Server.InboundPolicy.Mode(8080); got != "all-authenticated" {
		t.Errorf("port 8080: %q", got)
	}
	if got := c.Server.InboundPolicy.Mode(80); got != "deny" {
		t.Errorf("port 80: %q", got)
	}
	for _, bad := range []string{
		"server:\n  inbound_policy: {default: allow}\n",
		"server:\n  inbound_policy: {ports: {80: open}}\n",
		"server:\n  inbound_policy: {ports: {0: deny}}\n",
		"server:\n  inbound_policy: {ports: {70000: deny}}\n",
		"server:\n  inbound_policy: {zz: 1}\n",
	} {
		if _, err := parseTestConfig([]byte(bad), "c.yaml"); err == nil {
			t.Errorf("%q accepted", bad)
		} else if !strings.Contains(err.Error(), "inbound_policy") && !strings.Contains(err.Error(), "zz") {
			t.Logf("%q: %v", bad, err)
		}
	}
}
