//go:build integration

// Package health tests active health checking against the real tributary
// binary: file-source endpoints pointing at real TCP, HTTP and gRPC
// listeners on loopback that the tests stop, start and flip, and what a Get
// stream receives in consequence. It also holds BenchmarkHealthChecks.
package health

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// tcpTarget is a TCP listener on a fixed loopback address that accepts and
// closes connections; the test stops and starts it.
type tcpTarget struct {
	t    testing.TB
	Addr string
	mu   sync.Mutex
	ln   net.Listener
	done chan struct{}
}

func newTCPTarget(t testing.TB, addr string) *tcpTarget {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	tt := &tcpTarget{t: t, Addr: addr}
	tt.Start()
	t.Cleanup(tt.Stop)
	return tt
}

func (tt *tcpTarget) Start() {
	tt.t.Helper()
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", tt.Addr)
	if err != nil {
		tt.t.Fatal(err)
	}
	tt.ln, tt.Addr, tt.done = ln, ln.Addr().String(), make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}(tt.done)
}

func (tt *tcpTarget) Stop() {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if tt.ln == nil {
		return
	}
	tt.ln.Close()
	<-tt.done
	tt.ln = nil
}

// httpTarget answers /healthz with a status the test sets; in alternate
// mode it answers 200 and 500 by turns.
type httpTarget struct {
	Addr      string
	status    atomic.Int32
	alternate atomic.Bool
	requests  atomic.Int64
	srv       *http.Server
}

func newHTTPTarget(t testing.TB) *httpTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &httpTarget{Addr: ln.Addr().String()}
	h.status.Store(200)
	h.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := h.requests.Add(1)
		if r.URL.Path != "/healthz" {
			w.WriteHeader(404)
			return
		}
		code := int(h.status.Load())
		if h.alternate.Load() {
			code = 200
			if n%2 == 0 {
				code = 500
			}
		}
		w.WriteHeader(code)
	})}
	go h.srv.Serve(ln)
	t.Cleanup(func() { h.srv.Close() })
	return h
}

// grpcTarget is a gRPC server with the standard health service.
type grpcTarget struct {
	Addr   string
	Health *grpchealth.Server
}

func newGRPCTarget(t testing.TB) *grpcTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	g := &grpcTarget{Addr: ln.Addr().String(), Health: grpchealth.NewServer()}
	healthpb.RegisterHealthServer(srv, g.Health)
	g.Health.SetServingStatus("demo.Echo", healthpb.HealthCheckResponse_SERVING)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return g
}

// services renders a services file: entries "host:port=addr,addr".
func services(entries ...string) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for _, e := range entries {
		name, addrs, _ := strings.Cut(e, "=")
		host, port, _ := strings.Cut(name, ":")
		fmt.Fprintf(&b, "  - name: %s\n    port: %s\n    endpoints:\n", host, port)
		for _, a := range strings.Split(addrs, ",") {
			fmt.Fprintf(&b, "      - address: %q\n", a)
		}
	}
	return b.String()
}

// fastChecks is a health_check block that decides within a second.
const fastChecks = `    health_check:
      type: tcp
      interval: 100ms
      timeout: 500ms
      jitter: 0%
      healthy_threshold: 2
      unhealthy_threshold: 2
      hold_down: 0s
`

// start writes the services file and starts tributary with one file source
// "local" carrying extra (its health_check block and more) and the rest of
// the config after it.
func start(t *testing.T, svcFile, extra, rest string) (*harness.Server, string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "svc.yaml")
	harness.WriteAtomic(t, path, svcFile)
	cfg := "sources:\n  - name: local\n    kind: file\n    paths: [\"svc.yaml\"]\n" + extra + rest
	return harness.Start(t, dir, cfg), path
}

// metric returns the sum of the samples of the /metrics line(s) that start
// with prefix (a name, optionally with the start of its labels).
func metric(s *harness.Server, prefix string) float64 {
	_, body := s.HTTPGet("/metrics")
	sum := 0.0
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

func waitMetric(t *testing.T, s *harness.Server, prefix string, ok func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for !ok(metric(s, prefix)) {
		if time.Now().After(deadline) {
			t.Fatalf("metric %s never as expected: %v", prefix, metric(s, prefix))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// registryHealth returns the health /debug/registry shows for addr under authority.
func registryHealth(t *testing.T, s *harness.Server, authority, addr string) string {
	t.Helper()
	_, body := s.HTTPGet("/debug/registry?authority=" + authority)
	var reg struct {
		Services []struct {
			Endpoints []struct {
				Address string `json:"address"`
				Health  string `json:"health"`
			} `json:"endpoints"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(body), &reg); err != nil {
		t.Fatalf("/debug/registry: %v\n%s", err, body)
	}
	for _, svc := range reg.Services {
		for _, e := range svc.Endpoints {
			if e.Address == addr {
				return e.Health
			}
		}
	}
	return "absent"
}

func waitRegistryHealth(t *testing.T, s *harness.Server, authority, addr, want string) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for registryHealth(t, s, authority, addr) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s in /debug/registry: %s, want %s", addr, registryHealth(t, s, authority, addr), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTCPEvictionAndReadmission(t *testing.T) {
	a, b, c := newTCPTarget(t, ""), newTCPTarget(t, ""), newTCPTarget(t, "")
	s, _ := start(t, services("web.demo:8080="+a.Addr+","+b.Addr+","+c.Addr), fastChecks, "")
	web := s.Get("web.demo:8080")
	if got := web.Next(); got != list("add", a.Addr, b.Addr, c.Addr) {
		t.Fatalf("first message %s", got)
	}
	waitRegistryHealth(t, s, "web.demo:8080", b.Addr, "passing")

	b.Stop() // fall: evicted after two failed connects
	if got := web.Next(); got != "remove:"+b.Addr {
		t.Fatalf("after stop: %s", got)
	}
	if h := registryHealth(t, s, "web.demo:8080", b.Addr); h != "critical" {
		t.Fatalf("registry shows %s for the stopped endpoint", h)
	}
	waitMetric(t, s, `tributary_endpoints_by_health{health="critical",source="local"}`, func(v float64) bool { return v == 1 })
	if v := metric(s, `tributary_health_checks_total{result="fail",source="local",type="tcp"}`); v < 2 {
		t.Fatalf("failed checks counted: %v", v)
	}

	b.Start() // rise: readmitted after two good connects
	if got := web.Next(); got != "add:"+b.Addr {
		t.Fatalf("after start: %s", got)
	}
	waitMetric(t, s, `tributary_endpoints_by_health{health="passing",source="local"}`, func(v float64) bool { return v == 3 })
}

func TestHTTPAndGRPCChecksWithOverrides(t *testing.T) {
	h1, h2 := newHTTPTarget(t), newHTTPTarget(t)
	g := newGRPCTarget(t)
	g2 := newGRPCTarget(t)
	tcp := newTCPTarget(t, "")
	extra := `    health_check:
      type: http
      path: /healthz
      expected_status: 200-299
      interval: 100ms
      timeout: 500ms
      jitter: 0%
      healthy_threshold: 2
      unhealthy_threshold: 2
      hold_down: 0s
      services:
        "rpc.demo:9000": {type: grpc, service: demo.Echo}
        "db.demo": {type: tcp}
`
	s, _ := start(t, services("web.demo:80="+h1.Addr+","+h2.Addr, "rpc.demo:9000="+g.Addr+","+g2.Addr, "db.demo:5432="+tcp.Addr), extra,
		"health:\n  panic_threshold: 0%\n")
	web, rpc, db := s.Get("web.demo:80"), s.Get("rpc.demo:9000"), s.Get("db.demo:5432")
	web.Next()
	rpc.Next()
	db.Next()

	h1.status.Store(503)
	if got := web.Next(); got != "remove:"+h1.Addr {
		t.Fatalf("http 503: %s", got)
	}
	h1.status.Store(204)
	if got := web.Next(); got != "add:"+h1.Addr {
		t.Fatalf("http 204: %s", got)
	}

	g.Health.SetServingStatus("demo.Echo", healthpb.HealthCheckResponse_NOT_SERVING)
	if got := rpc.Next(); got != "remove:"+g.Addr {
		t.Fatalf("grpc NOT_SERVING: %s", got)
	}
	g.Health.SetServingStatus("demo.Echo", healthpb.HealthCheckResponse_SERVING)
	if got := rpc.Next(); got != "add:"+g.Addr {
		t.Fatalf("grpc SERVING: %s", got)
	}

	// The override makes db a TCP check: its HTTP-less listener passes, and fails when stopped.
	waitRegistryHealth(t, s, "db.demo:5432", tcp.Addr, "passing")
	tcp.Stop()
	if got := db.Next(); got != "none:true" { // panic_threshold 0%: nothing left to serve
		t.Fatalf("db stopped: %s", got)
	}
	if v := metric(s, `tributary_health_checks_total{result="pass",source="local",type="grpc"}`); v == 0 {
		t.Fatal("no grpc checks counted")
	}
}

func TestAlternatingTargetDoesNotFlap(t *testing.T) {
	flappy, steady := newHTTPTarget(t), newHTTPTarget(t)
	flappy.alternate.Store(true)
	extra := strings.Replace(fastChecks, "type: tcp", "type: http\n      path: /healthz\n      initial_health: passing", 1)
	s, _ := start(t, services("web.demo:80="+flappy.Addr+","+steady.Addr), extra, "")
	web := s.Get("web.demo:80")
	if got := web.Next(); got != list("add", flappy.Addr, steady.Addr) {
		t.Fatal(got)
	}
	// Let the alternating target be checked many times over.
	start := flappy.requests.Load()
	deadline := time.Now().Add(harness.WaitFor)
	for flappy.requests.Load() < start+20 {
		if time.Now().After(deadline) {
			t.Fatal("the alternating target is not being checked")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The next thing the stream sees is the steady target's eviction:
	// nothing was sent for the alternating one in between.
	steady.status.Store(500)
	if got := web.Next(); got != "remove:"+steady.Addr {
		t.Fatalf("want the steady target's removal first, got %s", got)
	}
	if v := metric(s, `tributary_health_transitions_total{source="local"`); v != 1 {
		t.Fatalf("%v verdict changes, want only the steady target's", v)
	}
}

func TestPanicThresholdServesEverything(t *testing.T) {
	var ts []*tcpTarget
	var addrs []string
	for range 4 {
		tt := newTCPTarget(t, "")
		ts = append(ts, tt)
		addrs = append(addrs, tt.Addr)
	}
	s, _ := start(t, services("web.demo:80="+strings.Join(addrs, ","), "api.demo:80="+strings.Join(addrs, ",")), fastChecks,
		"federation:\n  - authority: api.demo:80\n    panic_threshold: 0%\n")
	web, api := s.Get("web.demo:80"), s.Get("api.demo:80")
	web.Next()
	api.Next()
	for _, tt := range ts {
		waitRegistryHealth(t, s, "web.demo:80", tt.Addr, "passing")
	}
	ts[0].Stop() // 3 of 4 serving
	if got := web.Next(); got != "remove:"+addrs[0] {
		t.Fatal(got)
	}
	ts[1].Stop() // 2 of 4: exactly 50%, not below
	if got := web.Next(); got != "remove:"+addrs[1] {
		t.Fatal(got)
	}
	for _, want := range []string{"remove:" + addrs[0], "remove:" + addrs[1]} {
		if got := api.Next(); got != want {
			t.Fatalf("api: %s, want %s", got, want)
		}
	}
	// 1 of 4: panic, everything is served again (addrs[2] was still served).
	ts[2].Stop()
	if got := web.Next(); got != list("add", addrs[0], addrs[1]) {
		t.Fatalf("panic: %s", got)
	}
	// api.demo has a rule with panic_threshold 0%: it evicts down to one.
	if got := api.Next(); got != "remove:"+addrs[2] {
		t.Fatalf("api without panic: %s", got)
	}
	ts[0].Start() // 2 of 4: out of panic, the failing ones evicted
	if got := web.Next(); got != list("remove", addrs[1], addrs[2]) {
		t.Fatalf("out of panic: %s", got)
	}
}

func TestFlappingEndpointIsHeldDown(t *testing.T) {
	a, b := newTCPTarget(t, ""), newTCPTarget(t, "")
	extra := strings.Replace(fastChecks, "hold_down: 0s", "hold_down: 4s\n      max_hold_down: 20s", 1)
	s, _ := start(t, services("web.demo:80="+a.Addr+","+b.Addr), extra, "health:\n  panic_threshold: 0%\n")
	web := s.Get("web.demo:80")
	web.Next()
	waitRegistryHealth(t, s, "web.demo:80", a.Addr, "passing")
	a.Stop()
	if got := web.Next(); got != "remove:"+a.Addr {
		t.Fatal(got)
	}
	a.Start()
	if got := web.Next(); got != "add:"+a.Addr { // readmitted: no flap history yet
		t.Fatal(got)
	}
	a.Stop() // falls again soon after its readmission: a flap
	if got := web.Next(); got != "remove:"+a.Addr {
		t.Fatal(got)
	}
	waitMetric(t, s, `tributary_health_held_down{source="local"}`, func(v float64) bool { return v == 1 })
	a.Start()
	// Its checks pass (failures stop being counted), but it stays out for the hold-down.
	fails := `tributary_health_checks_total{result="fail",source="local"`
	for last, same := metric(s, fails), 0; same < 3; {
		time.Sleep(150 * time.Millisecond)
		if v := metric(s, fails); v == last {
			same++
		} else {
			last, same = v, 0
		}
	}
	if h := registryHealth(t, s, "web.demo:80", a.Addr); h != "critical" {
		t.Fatalf("readmitted during its hold-down: %s", h)
	}
	if got := web.Next(); got != "add:"+a.Addr {
		t.Fatal(got)
	}
	if v := metric(s, `tributary_health_held_down{source="local"}`); v != 0 {
		t.Fatalf("still held down after readmission: %v", v)
	}
}

// TestChecksOnlyWhereConfigured: a source without health_check is not
// checked; its endpoints' health is the source's.
func TestChecksOnlyWhereConfigured(t *testing.T) {
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "a.yaml"), services("web.demo:80=127.0.0.1:1"))
	s := harness.Start(t, dir, "sources:\n  - name: plain\n    kind: file\n    paths: [a.yaml]\n")
	if got := s.Get("web.demo:80").Next(); got != "add:127.0.0.1:1" {
		t.Fatal(got)
	}
	if h := registryHealth(t, s, "web.demo:80", "127.0.0.1:1"); h != "unknown" {
		t.Fatalf("health %s", h)
	}
	if v := metric(s, "tributary_health_checks_total"); v != 0 {
		t.Fatalf("%v checks ran", v)
	}
}

// list renders addresses as the harness does, sorted as the server sends them.
func list(op string, addrs ...string) string {
	sorted := slices.Clone(addrs)
	slices.SortFunc(sorted, func(a, b string) int {
		return netip.MustParseAddrPort(a).Compare(netip.MustParseAddrPort(b))
	})
	return op + ":" + strings.Join(sorted, ",")
}
