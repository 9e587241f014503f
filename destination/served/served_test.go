package served

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var web = discovery.Authority{Host: "web.demo", Port: 8080}

// syncBuffer is a log sink safe for the tracker's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// value reads a counter or gauge.
func value(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return m.Counter.GetValue()
}

func group(key string, a discovery.Authority, health ...discovery.Health) discovery.Group {
	svc := discovery.Service{Authority: a}
	for i, h := range health {
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080), Health: h})
	}
	return discovery.Group{Key: key, Services: []discovery.Service{svc}}
}

func newTracker(t *testing.T, store *cache.Store, fed *discovery.Federation) (*Tracker, *prometheus.Registry, *syncBuffer) {
	t.Helper()
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	tr := New(Options{Store: store, Federation: fed, Registerer: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	return tr, reg, &logs
}

func apply(t *testing.T, store *cache.Store, source string, g discovery.Group) {
	t.Helper()
	if _, err := store.Apply(source, []discovery.Group{g}); err != nil {
		t.Fatal(err)
	}
}

const (
	P = discovery.HealthPassing
	C = discovery.HealthCritical
)

func TestPanicEnterAndLeave(t *testing.T) {
	store := cache.New()
	fed, err := discovery.NewFederation(nil, nil) // the default threshold, 0.5
	if err != nil {
		t.Fatal(err)
	}
	tr, _, logs := newTracker(t, store, fed)
	apply(t, store, "file", group("f", web, P, P, P, P))
	tr.Pass(nil)
	if got := value(t, tr.panicActive); got != 0 {
		t.Fatalf("panic_active %v with every endpoint passing", got)
	}

	// One of four critical: evicted, no panic.
	apply(t, store, "file", group("f", web, P, P, P, C))
	tr.Pass(nil)
	if got := value(t, tr.evictions.WithLabelValues("file")); got != 1 {
		t.Fatalf("evictions %v, want 1", got)
	}
	if !strings.Contains(logs.String(), `level=INFO msg="endpoint critical: evicted" authority=web.demo:8080 address=10.0.0.4:8080 source=file`) {
		t.Fatalf("no eviction log:\n%s", logs)
	}

	// Three of four critical: panic.
	apply(t, store, "file", group("f", web, P, C, C, C))
	tr.Pass(nil)
	if got := value(t, tr.panicActive); got != 1 {
		t.Fatalf("panic_active %v, want 1", got)
	}
	if got := value(t, tr.transitions.WithLabelValues("enter")); got != 1 {
		t.Fatalf("enter transitions %v", got)
	}
	if p := tr.Panicking(); len(p) != 1 || p[0].Authority != web || p[0].Serving != 1 || p[0].Addresses != 4 {
		t.Fatalf("Panicking: %+v", p)
	}
	// In panic nothing is evicted: the critical ones are served.
	if got := value(t, tr.evictions.WithLabelValues("file")); got != 1 {
		t.Fatalf("evictions %v in panic, want still 1", got)
	}
	if !strings.Contains(logs.String(), `level=INFO msg="panic threshold: serving every endpoint, critical ones too" authority=web.demo:8080 serving=1 addresses=4 threshold=0.5`) {
		t.Fatalf("no panic log:\n%s", logs)
	}

	// Recovery: panic left, then the two still critical are evicted anew.
	apply(t, store, "file", group("f", web, P, P, C, C))
	tr.Pass(nil)
	if got := value(t, tr.panicActive); got != 0 {
		t.Fatalf("panic_active %v after recovery", got)
	}
	if got := value(t, tr.transitions.WithLabelValues("leave")); got != 1 {
		t.Fatalf("leave transitions %v", got)
	}
	if got := value(t, tr.evictions.WithLabelValues("file")); got != 3 {
		t.Fatalf("evictions %v, want 3", got)
	}
	if !strings.Contains(logs.String(), `msg="panic threshold: left; critical endpoints are evicted again" authority=web.demo:8080 serving=2 addresses=4`) {
		t.Fatalf("no leave log:\n%s", logs)
	}

	// The service goes away entirely: the tracker forgets it.
	if _, err := store.Apply("file", []discovery.Group{{Key: "f"}}); err != nil {
		t.Fatal(err)
	}
	tr.Pass(nil)
	if len(tr.state) != 0 || len(tr.byHost) != 0 {
		t.Fatalf("state kept for a withdrawn service: %v %v", tr.state, tr.byHost)
	}
	if !strings.Contains(logs.String(), `msg="evicted endpoint no longer evicted" authority=web.demo:8080 address=10.0.0.3:8080`) {
		t.Fatalf("no restore log:\n%s", logs)
	}
}

// An alias's change re-evaluates the rule's authority.
func TestAliasChangeReevaluatesRule(t *testing.T) {
	store := cache.New()
	alias := discovery.Authority{Host: "web.consul", Port: 8080}
	fed, err := discovery.NewFederation([]discovery.FederationRule{{Authority: web, Aliases: []discovery.Authority{alias}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr, _, _ := newTracker(t, store, fed)
	apply(t, store, "file", group("f", web, C))
	apply(t, store, "consul", group("c", alias, P))
	tr.Pass(nil)
	if got := value(t, tr.panicActive); got != 0 {
		t.Fatalf("panic with one of two serving: %v", got)
	}
	apply(t, store, "consul", group("c", alias, C))
	if n := tr.Pass(nil); n != 1 {
		t.Fatalf("the alias's change: %d hosts changed", n)
	}
	// web.demo:8080 and its alias share 10.0.0.1:8080, critical in both now.
	if p := tr.Panicking(); len(p) != 2 || p[1].Authority != web || p[1].Serving != 0 {
		t.Fatalf("Panicking: %+v", p)
	}
}

func TestRunFollowsTheStore(t *testing.T) {
	store := cache.New()
	fed, err := discovery.NewFederation(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr, reg, _ := newTracker(t, store, fed)
	tr.interval = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	apply(t, store, "file", group("f", web, C, C, P))
	for {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "tributary_panic_active" && mf.GetMetric()[0].GetGauge().GetValue() == 1 {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPassCostAtScale measures a pass after one change in a large
// registry (logged, not asserted: timings are noisy): 10,000 services, or
// 100,000 with TRIBUTARY_SCALE=100000.
func TestPassCostAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a large registry")
	}
	store := cache.New()
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("TRIBUTARY_SCALE")); err == nil && v > 0 {
		n = v
	}
	groups := make([]discovery.Group, 0, n)
	for i := range n {
		a := discovery.Authority{Host: fmt.Sprintf("svc-%06d.demo", i), Port: 8080}
		groups = append(groups, discovery.Group{Key: a.Host, Services: []discovery.Service{{Authority: a, Endpoints: []discovery.Endpoint{
			{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 8080), Health: P},
		}}}})
	}
	if _, err := store.Apply("bench", groups); err != nil {
		t.Fatal(err)
	}
	tr, _, _ := newTracker(t, store, nil)
	start := time.Now()
	if got := tr.Pass(nil); got != n {
		t.Fatalf("first pass saw %d hosts change", got)
	}
	first := time.Since(start)
	apply(t, store, "bench", group("svc-000042.demo", discovery.Authority{Host: "svc-000042.demo", Port: 8080}, C, P))
	start = time.Now()
	if got := tr.Pass(nil); got != 1 {
		t.Fatalf("a pass after one change saw %d hosts change", got)
	}
	t.Logf("%d services: first pass %v, a pass after one change %v", n, first, time.Since(start))
}
