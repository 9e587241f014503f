package discovery

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const testKind = "test-kind-x"

// testKindSource is what the test kind builds: its decoded config and context.
type testKindSource struct {
	Paths    []string `yaml:"paths"`
	Interval Duration `yaml:"interval"`
	bc       BuildContext
}

func (s *testKindSource) Run(ctx context.Context, _ Sink) { <-ctx.Done() }

func init() {
	Register(Kind{Name: testKind, New: func(node *yaml.Node, bc BuildContext) (Source, error) {
		s := &testKindSource{bc: bc}
		if err := DecodeStrict(node, s); err != nil {
			return nil, err
		}
		if len(s.Paths) == 0 {
			return nil, errors.New("paths: at least one path is required")
		}
		return s, nil
	}})
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

func TestParseConfigFull(t *testing.T) {
	c, err := ParseConfig([]byte(fullConfig), "conf/tributary.yaml")
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	// The server section is kept for its owner (cmd/tributary), at its place.
	if c.Server.Path != "server" || c.Server.File != "conf/tributary.yaml" || c.Server.Line() != 3 || c.Server.Node == nil {
		t.Errorf("server section = %+v", c.Server)
	}
	if c.File != "conf/tributary.yaml" || c.BaseDir != "conf" {
		t.Errorf("File %q BaseDir %q", c.File, c.BaseDir)
	}
	if len(c.Sources) != 2 {
		t.Fatalf("sources: %+v", c.Sources)
	}
	s0, s1 := c.Sources[0], c.Sources[1]
	if s0.Name != "east" || s0.Kind != testKind || s0.Priority != 10 || time.Duration(s0.StaleAfter) != 5*time.Minute || s0.Line != 9 {
		t.Errorf("source 0 = %+v", s0)
	}
	if s1.Name != "west/dc2" || s1.Priority != 0 || s1.StaleAfter != 0 || s1.Line != 15 {
		t.Errorf("source 1 = %+v", s1)
	}
	// Node holds the kind's keys only.
	var own map[string]any
	if err := s0.Node.Decode(&own); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(own, map[string]any{"paths": []any{"east.yaml"}, "interval": "30s"}) {
		t.Errorf("source 0 node = %v", own)
	}

	want := []FederationRule{
		{
			Authority: Authority{"web.demo", 8080},
			Aliases:   []Authority{{"web.service.dc1.consul", 80}, {"web.prod.svc.cluster.local", 8080}},
			Failover:  []Tier{{Sources: []string{"east"}, MinHealthy: 2}, {Sources: []string{"west/dc2"}, MinHealthy: 1}},
			Line:      19,
		},
		{Authority: Authority{"api.demo", 0}, Aliases: []Authority{{"api.legacy", 0}}, Line: 25},
	}
	if !reflect.DeepEqual(c.Federation, want) {
		t.Errorf("federation = %+v\nwant %+v", c.Federation, want)
	}

	insts, err := c.BuildSources(nil)
	if err != nil {
		t.Fatalf("BuildSources: %v", err)
	}
	if len(insts) != 2 || insts[0].Config.Name != "east" {
		t.Fatalf("instances = %+v", insts)
	}
	src := insts[0].Source.(*testKindSource)
	if !reflect.DeepEqual(src.Paths, []string{"east.yaml"}) || time.Duration(src.Interval) != 30*time.Second {
		t.Errorf("built source = %+v", src)
	}
	if src.bc.Name != "east" || src.bc.BaseDir != "conf" || src.bc.Logger == nil {
		t.Errorf("build context = %+v", src.bc)
	}

	f, err := c.BuildFederation()
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Members(Authority{"api.demo", 9000}); !reflect.DeepEqual(got, []Authority{{"api.demo", 9000}, {"api.legacy", 9000}}) {
		t.Errorf("members = %v", got)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	for _, src := range []string{"", "# nothing\n", "sources: []\n", "server:\nsources:\nfederation:\n"} {
		c, err := ParseConfig([]byte(src), "")
		if err != nil {
			t.Errorf("%q: %v", src, err)
			continue
		}
		if c.Server.Node != nil || c.Health.Node != nil || c.PanicThreshold != DefaultPanicThreshold || len(c.Sources) != 0 || len(c.Federation) != 0 || c.BaseDir != "" {
			t.Errorf("%q: %+v", src, c)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	src := func(s string) string { return "sources:\n  - name: east\n    kind: test-kind-x\n    paths: [a]\n" + s }
	// each want: substrings the error must contain, in this order within one line
	cases := []struct {
		name string
		yaml string
		want [][]string
	}{
		{"unknown top-level key", "server: {}\nsorces: []\n", [][]string{{"c.yaml:2: sorces: unknown key (valid keys: server, sources, federation, health, dns, xds)"}}},
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
		{"unknown guard key", src("    deletion_guard: {share: 10%}\n"), [][]string{{"c.yaml:5: sources[0].deletion_guard.share: unknown key"}}},
		{"negative min_endpoints", src("    deletion_guard:\n      min_endpoints: -1\n"), [][]string{{"c.yaml:6: sources[0].deletion_guard.min_endpoints:", "negative"}}},
		{"yaml syntax", "server:\n  listen: [\n", [][]string{{"c.yaml:", "did not find expected"}}},
		{"two documents", "server: {}\n---\nsources: []\n", [][]string{{"c.yaml:2:", "more than one YAML document"}}},
		{"not a mapping", "- a\n", [][]string{{"c.yaml:1: a config must be a mapping"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.yaml), "c.yaml")
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

func TestParseConfigHealthAndGuard(t *testing.T) {
	cfg := `health:
  panic_threshold: 25%
  max_concurrent_checks: 64
sources:
  - name: plain
    kind: test-kind-x
    paths: [a]
  - name: checked
    kind: test-kind-x
    paths: [b]
    stale_after: 1m
    deletion_guard:
      max_withdraw: 80%
      confirm_for: 5s
      min_endpoints: 2
    health_check:
      type: http
      interval: 5s
      timeout: 1s
      jitter: 20%
      healthy_threshold: 1
      unhealthy_threshold: 4
      initial_health: critical
      hold_down: 10s
      max_hold_down: 1m
      port: 8081
      path: /healthz?full=1
      host: web.internal
      expected_status: 200-299, 418
      services:
        "db.demo:5432": {type: tcp, port: 0}
        grpc.demo: {type: grpc, service: demo.Echo, interval: 2s}
        off.demo:80: {type: none}
federation:
  - authority: web.demo:80
    panic_threshold: 0%
  - authority: api.demo:80
`
	c, err := ParseConfig([]byte(cfg), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.PanicThreshold != 0.25 || c.Health.Path != "health" || c.Health.Line() != 2 {
		t.Errorf("health = %v %+v", c.PanicThreshold, c.Health)
	}
	plain, checked := c.Sources[0], c.Sources[1]
	if plain.HealthCheck.Node != nil || plain.DeletionGuard != DefaultDeletionGuard() {
		t.Errorf("plain source = %+v", plain)
	}
	if g := checked.DeletionGuard; g != (DeletionGuard{MaxWithdraw: 0.8, ConfirmFor: 5 * time.Second, MinEndpoints: 2}) || !g.Enabled() {
		t.Errorf("guard = %+v", g)
	}
	var own map[string]any
	if err := checked.Node.Decode(&own); err != nil || !reflect.DeepEqual(own, map[string]any{"paths": []any{"b"}}) {
		t.Errorf("kind keys = %v %v", own, err)
	}
	// The health_check block is discovery/health's, kept with its place.
	if hc := checked.HealthCheck; hc.Path != "sources[1].health_check" || hc.Line() != 17 || hc.Node == nil {
		t.Errorf("health_check section = %+v", hc)
	}
	if p := c.Federation[0].PanicThreshold; p == nil || *p != 0 {
		t.Errorf("rule panic threshold = %v", p)
	}
	if c.Federation[1].PanicThreshold != nil {
		t.Error("rule without panic_threshold should inherit")
	}
	f, err := c.BuildFederation()
	if err != nil {
		t.Fatal(err)
	}
	if f.PanicThreshold(Authority{"web.demo", 80}) != 0 || f.PanicThreshold(Authority{"api.demo", 80}) != 0.25 || f.PanicThreshold(Authority{"x", 1}) != 0.25 {
		t.Error("federation panic thresholds")
	}

	// No health section is the default panic threshold.
	c, err = ParseConfig([]byte("sources:\n  - name: a\n    kind: test-kind-x\n    health_check: {}\n    deletion_guard: {confirm_for: 0s}\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Sources[0].DeletionGuard.Enabled() {
		t.Error("confirm_for: 0s should turn the guard off")
	}
	if c.PanicThreshold != DefaultPanicThreshold || c.Health.Node != nil {
		t.Errorf("default health = %v %+v", c.PanicThreshold, c.Health)
	}
}

func TestPercent(t *testing.T) {
	for in, want := range map[string]float64{"50%": 0.5, "0%": 0, "100%": 1, "12.5%": 0.125, " 7 %": 0.07} {
		var p Percent
		if err := yaml.Unmarshal([]byte(strconvQuote(in)), &p); err != nil || float64(p) != want {
			t.Errorf("%q: %v %v", in, float64(p), err)
		}
	}
	for _, in := range []string{"50", "0.5", "-1%", "101%", "NaN%", "x%", "[1]"} {
		var p Percent
		if err := yaml.Unmarshal([]byte(in), &p); err == nil {
			t.Errorf("%q accepted as %v", in, p)
		}
	}
	if Percent(0.125).String() != "12.5%" {
		t.Error(Percent(0.125).String())
	}
}

func strconvQuote(s string) string { return "'" + s + "'" }

func TestParseConfigAliasesAllowed(t *testing.T) {
	// A portless alias takes the rule's port, so a rule for another port of
	// its host is no conflict; nor is a bare rule aliasing a port of its own host.
	cfg := "federation:\n  - authority: web:80\n    aliases: [api]\n  - authority: api:81\n  - authority: db\n    aliases: [db:5432, other:1]\n  - authority: other:2\n"
	c, err := ParseConfig([]byte(cfg), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Federation) != 4 {
		t.Errorf("rules = %+v", c.Federation)
	}
}

func TestBuildSourcesWrapsKindErrors(t *testing.T) {
	cfg := "sources:\n" +
		"  - name: good\n    kind: test-kind-x\n    paths: [a]\n" + // lines 2-4
		"  - name: typo\n    kind: test-kind-x\n    paths: [a]\n    pathz: [b]\n" + // lines 5-8
		"  - name: empty\n    kind: test-kind-x\n    interval: 1s\n" + // lines 9-11
		"  - name: badtype\n    kind: test-kind-x\n    paths: [a]\n    interval: soon\n" // lines 12-15
	c, err := ParseConfig([]byte(cfg), "c.yaml")
	if err != nil {
		t.Fatalf("ParseConfig (kind keys are not its business): %v", err)
	}
	insts, err := c.BuildSources(slog.New(slog.DiscardHandler))
	if err == nil || insts != nil {
		t.Fatalf("BuildSources = %v, %v", insts, err)
	}
	want := []string{
		"c.yaml:8: sources[1].pathz: unknown key (valid keys: paths, interval)",
		`c.yaml:9: sources[2]: test-kind-x source "empty": paths: at least one path is required`,
		`c.yaml:15: sources[3].interval: invalid duration "soon"`,
	}
	got := strings.Split(err.Error(), "\n")
	if len(got) != len(want) {
		t.Fatalf("got:\n%v", err)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("error %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
	for _, ce := range configErrors(t, err) {
		if ce.File != "c.yaml" {
			t.Errorf("File = %q", ce.File)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tributary.yaml")
	if err := os.WriteFile(path, []byte(fullConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	c, err := LoadConfig("tributary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.File != "tributary.yaml" || !filepath.IsAbs(c.BaseDir) {
		t.Errorf("File %q BaseDir %q", c.File, c.BaseDir)
	}
	if want, _ := filepath.EvalSymlinks(dir); c.BaseDir != dir && c.BaseDir != want {
		t.Errorf("BaseDir = %q, want %q", c.BaseDir, dir)
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(path, []byte("server:\n  nope: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The server section's owner decodes it; its errors name the file too.
	strictServer := func(c *Config) error {
		var s struct {
			Listen string `yaml:"listen"`
		}
		return c.Server.Decode(&s)
	}
	if _, err := LoadConfig(path, strictServer); err == nil || !strings.HasPrefix(err.Error(), path+":2: server.nope:") {
		t.Errorf("error = %v", err)
	}
}

// TestConfigSyntaxErrorLine: yaml.v3 prints a parser error's line 0-based;
// the config names the 1-based line, as the services file parser does.
func TestConfigSyntaxErrorLine(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"server:\n  listen: a\n  admin: [b\nsources: []\n", "c.yaml:3: did not find expected ',' or ']'"},
		{"x:\n  - a\n  b: c\n", "c.yaml:2: did not find expected '-' indicator"},
		{"a: 1\n b: 2\n", "c.yaml:2: mapping values are not allowed in this context"}, // a scanner error: 1-based already
	} {
		_, err := ParseConfig([]byte(tc.yaml), "c.yaml")
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: got %v, want %s", tc.yaml, err, tc.want)
		}
	}
}
