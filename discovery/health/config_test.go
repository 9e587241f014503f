package health

import (
	"context"
	"reflect"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

const testKind = "test-kind-x"

type testKindSource struct{}

func (testKindSource) Run(ctx context.Context, _ discovery.Sink) { <-ctx.Done() }

func init() {
	discovery.Register(discovery.Kind{Name: testKind, New: func(*yaml.Node, discovery.BuildContext) (discovery.Source, error) {
		return testKindSource{}, nil
	}})
}

// parse parses a config with the checker's sections decoded.
func parse(t *testing.T, src string) *Config {
	t.Helper()
	var h Config
	if _, err := discovery.ParseConfig([]byte(src), "c.yaml", h.Decode); err != nil {
		t.Fatal(err)
	}
	return &h
}

func TestDecodeConfig(t *testing.T) {
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
	h := parse(t, cfg)
	if h.MaxConcurrentChecks != 64 || len(h.Sources) != 1 || h.Sources["plain"] != nil {
		t.Errorf("config = %+v", h)
	}
	hc := h.Sources["checked"]
	want := Check{
		Type: CheckHTTP, Interval: 5 * time.Second, Timeout: time.Second, Jitter: 0.2,
		HealthyThreshold: 1, UnhealthyThreshold: 4, InitialHealth: discovery.HealthCritical,
		HoldDown: 10 * time.Second, MaxHoldDown: time.Minute, Port: 8081,
		Path: "/healthz?full=1", Host: "web.internal", ExpectedStatus: []StatusRange{{200, 299}, {418, 418}},
	}
	if !reflect.DeepEqual(*hc.Default, want) {
		t.Errorf("default check = %+v\nwant %+v", *hc.Default, want)
	}
	db := want
	db.Type, db.Port = CheckTCP, 0
	grpcCheck := want
	grpcCheck.Type, grpcCheck.Service, grpcCheck.Interval = CheckGRPC, "demo.Echo", 2*time.Second
	off := want
	off.Type = CheckNone
	for a, w := range map[discovery.Authority]Check{
		{Host: "db.demo", Port: 5432}: db, {Host: "grpc.demo", Port: 9000}: grpcCheck, {Host: "grpc.demo", Port: 0}: grpcCheck,
		{Host: "off.demo", Port: 80}: off, {Host: "off.demo", Port: 81}: want, {Host: "web.demo", Port: 80}: want,
	} {
		if got := hc.For(a); !reflect.DeepEqual(*got, w) {
			t.Errorf("For(%s) = %+v\nwant %+v", a, *got, w)
		}
	}
	if hc.For(discovery.Authority{Host: "x", Port: 1}) != hc.Default {
		t.Error("For of an authority without override is not the default check itself")
	}
	if !hc.Default.StatusOK(204) || !hc.Default.StatusOK(418) || hc.Default.StatusOK(301) {
		t.Error("StatusOK")
	}

	// An empty health_check block is every default; no health section is the default bound.
	h = parse(t, "sources:\n  - name: a\n    kind: test-kind-x\n    health_check: {}\n  - name: b\n    kind: test-kind-x\n    health_check:\n")
	if hc := h.Sources["a"]; hc == nil || !reflect.DeepEqual(*hc.Default, DefaultCheck()) || hc.Services != nil {
		t.Errorf("empty health_check = %+v", hc)
	}
	if _, ok := h.Sources["b"]; ok || h.MaxConcurrentChecks != DefaultMaxConcurrentChecks {
		t.Errorf("null health_check or default bound: %+v", h)
	}
}
