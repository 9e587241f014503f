package health

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tributary-mesh/tributary/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait: a hang guard, never a timing claim.
const wait = 10 * time.Second

// recSink records what the checker hands on.
type recSink struct {
	mu    sync.Mutex
	calls []string
	last  map[string]discovery.Group
	woken chan struct{}
}

func newRecSink() *recSink {
	return &recSink{last: map[string]discovery.Group{}, woken: make(chan struct{}, 1)}
}

func (r *recSink) add(op string, gs []discovery.Group) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if op == "replace" {
		clear(r.last)
	}
	keys := make([]string, len(gs))
	for i, g := range gs {
		keys[i] = g.Key
		r.last[g.Key] = g
	}
	r.calls = append(r.calls, op+"("+strings.Join(keys, ",")+")")
	signal(r.woken)
}

func (r *recSink) Update(gs ...discovery.Group) { r.add("update", gs) }
func (r *recSink) Replace(gs []discovery.Group) { r.add("replace", gs) }
func (r *recSink) Healthy()                     { r.add("healthy", nil) }
func (r *recSink) Failed(err error)             { r.add("failed", nil) }

func (r *recSink) callCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// health renders the endpoints of a key as "addr=health ...".
func (r *recSink) health(key string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	for _, s := range r.last[key].Services {
		for _, e := range s.Endpoints {
			parts = append(parts, e.Addr.String()+"="+e.Health.String())
		}
	}
	return strings.Join(parts, " ")
}

// waitHealth waits until key renders as want.
func (r *recSink) waitHealth(t *testing.T, key, want string) {
	t.Helper()
	deadline := time.After(wait)
	for r.health(key) != want {
		select {
		case <-r.woken:
		case <-deadline:
			t.Fatalf("%s: %q, want %q", key, r.health(key), want)
		}
	}
}

// fakeProbes decides each address's result and counts probes.
type fakeProbes struct {
	mu       sync.Mutex
	down     map[netip.AddrPort]bool
	flip     map[netip.AddrPort]bool // alternate pass/fail per probe
	count    map[netip.AddrPort]int
	inFlight atomic.Int64
	maxIn    atomic.Int64
	delay    time.Duration
}

func newFakeProbes() *fakeProbes {
	return &fakeProbes{down: map[netip.AddrPort]bool{}, flip: map[netip.AddrPort]bool{}, count: map[netip.AddrPort]int{}}
}

func (f *fakeProbes) probe(ctx context.Context, hc *Check, addr netip.AddrPort) error {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxIn.Load()
		if n <= m || f.maxIn.CompareAndSwap(m, n) {
			break
		}
	}
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count[addr]++
	bad := f.down[addr]
	if f.flip[addr] {
		bad = f.count[addr]%2 == 0
	}
	if bad {
		return errors.New("down")
	}
	return nil
}

func (f *fakeProbes) set(addr string, down bool) {
	f.mu.Lock()
	f.down[netip.MustParseAddrPort(addr)] = down
	f.mu.Unlock()
}

func (f *fakeProbes) probes(addr string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count[netip.MustParseAddrPort(addr)]
}

func (f *fakeProbes) waitProbes(t *testing.T, addr string, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for f.probes(addr) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s probed %d times, want %d", addr, f.probes(addr), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func fast(mod func(*Check)) *Check {
	hc := DefaultCheck()
	hc.Interval, hc.Timeout, hc.Jitter = 2*time.Millisecond, time.Second, 0
	hc.HealthyThreshold, hc.UnhealthyThreshold = 2, 2
	hc.HoldDown = 0
	if mod != nil {
		mod(&hc)
	}
	return &hc
}

func grp(key, host string, port uint16, addrs ...string) discovery.Group {
	svc := discovery.Service{Authority: discovery.Authority{Host: host, Port: port}}
	for _, a := range addrs {
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: netip.MustParseAddrPort(a)})
	}
	return discovery.Group{Key: key, Services: []discovery.Service{svc}}
}

// fixture is a checker with one wrapped source.
type fixture struct {
	c      *Checker
	sink   discovery.Sink
	rec    *recSink
	probes *fakeProbes
	reg    *prometheus.Registry
	start  func()
}

func newFixture(t *testing.T, cfg *Checks, workers int) *fixture {
	t.Helper()
	f := &fixture{rec: newRecSink(), probes: newFakeProbes(), reg: prometheus.NewRegistry()}
	f.c = New(Options{Workers: workers, Sources: map[string]*Checks{"src": cfg}, Probe: f.probes.probe, Registerer: f.reg})
	f.sink = f.c.WrapSink(discovery.SourceConfig{Name: "src"}, f.rec)
	var once sync.Once
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	f.start = func() { once.Do(func() { go func() { defer close(done); f.c.Run(ctx) }() }) }
	t.Cleanup(func() {
		cancel()
		f.start() // so that done closes
		<-done
	})
	return f
}

func TestUpdatesPassAtOnceAndVerdictsFollow(t *testing.T) {
	f := newFixture(t, &Checks{Default: fast(nil)}, 8)
	// Before the checker even runs, the update is handed on, unknown.
	f.sink.Replace([]discovery.Group{grp("k", "web", 80, "10.0.0.1:80", "10.0.0.2:80")})
	if got := f.rec.health("k"); got != "10.0.0.1:80=unknown 10.0.0.2:80=unknown" {
		t.Fatalf("first hand-over %q", got)
	}
	f.probes.set("10.0.0.2:80", true)
	f.start()
	f.rec.waitHealth(t, "k", "10.0.0.1:80=passing 10.0.0.2:80=critical")

	// Fall after two failures, rise after two successes.
	f.probes.set("10.0.0.1:80", true)
	f.rec.waitHealth(t, "k", "10.0.0.1:80=critical 10.0.0.2:80=critical")
	f.probes.set("10.0.0.1:80", false)
	f.probes.set("10.0.0.2:80", false)
	f.rec.waitHealth(t, "k", "10.0.0.1:80=passing 10.0.0.2:80=passing")

	// A source update keeps known verdicts and starts the new address unknown.
	f.sink.Update(grp("k", "web", 80, "10.0.0.2:80", "10.0.0.3:80"))
	if got := f.rec.health("k"); got != "10.0.0.2:80=passing 10.0.0.3:80=unknown" {
		t.Fatalf("after update %q", got)
	}
	f.rec.waitHealth(t, "k", "10.0.0.2:80=passing 10.0.0.3:80=passing")

	// Metrics: checks counted, endpoints by health, transitions.
	if n := metric(t, f.reg, "tributary_health_checks_total", "result", "fail"); n < 2 {
		t.Errorf("failed checks counted: %v", n)
	}
	for h, want := range map[string]float64{"passing": 2, "critical": 0, "unknown": 0, "warning": 0} {
		if n := metric(t, f.reg, "tributary_endpoints_by_health", "health", h); n != want {
			t.Errorf("endpoints %s: %v, want %v", h, n, want)
		}
	}
	if n := metric(t, f.reg, "tributary_health_transitions_total", "to", "critical"); n != 2 {
		t.Errorf("transitions to critical: %v", n)
	}
	if n := metric(t, f.reg, "tributary_health_targets", "source", "src"); n != 2 {
		t.Errorf("targets: %v", n)
	}
}

// metric sums the values of a gathered metric family over the series
// that have label=value.
func metric(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return sum
}

func TestAlternatingTargetNeverFlaps(t *testing.T) {
	f := newFixture(t, &Checks{Default: fast(func(hc *Check) { hc.InitialHealth = discovery.HealthPassing })}, 8)
	f.probes.flip[netip.MustParseAddrPort("10.0.0.1:80")] = true
	f.sink.Replace([]discovery.Group{grp("k", "web", 80, "10.0.0.1:80")})
	f.start()
	f.probes.waitProbes(t, "10.0.0.1:80", 40)
	if n := f.rec.callCount(); n != 1 {
		t.Fatalf("%d hand-overs for an alternating target, want only the first: %v", n, f.rec.calls)
	}
	if got := f.rec.health("k"); got != "10.0.0.1:80=passing" {
		t.Fatal(got)
	}
}

func TestSharedAddressProbedOnceAndGroupsFollow(t *testing.T) {
	f := newFixture(t, &Checks{Default: fast(nil)}, 8)
	f.sink.Replace([]discovery.Group{
		grp("a", "web", 80, "10.0.0.1:80"),
		grp("b", "web-alias", 80, "10.0.0.1:80", "10.0.0.2:80"),
	})
	s := f.sink.(*sourceSink)
	s.mu.Lock()
	n := len(s.targets)
	s.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d targets for 2 distinct addresses", n)
	}
	f.probes.set("10.0.0.1:80", true)
	f.start()
	f.rec.waitHealth(t, "a", "10.0.0.1:80=critical")
	f.rec.waitHealth(t, "b", "10.0.0.1:80=critical 10.0.0.2:80=passing")

	// Withdrawing a drops only its hold; b keeps the target.
	f.sink.Update(discovery.Group{Key: "a"})
	s.mu.Lock()
	n = len(s.targets)
	s.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d targets after withdrawing a", n)
	}
	// Replace without b: every target is gone and off the schedule.
	f.sink.Replace(nil)
	s.mu.Lock()
	n = len(s.targets)
	s.mu.Unlock()
	f.c.mu.Lock()
	q := 0
	for _, tg := range f.c.queue {
		if !tg.gone {
			q++
		}
	}
	f.c.mu.Unlock()
	if n != 0 || q != 0 {
		t.Fatalf("%d targets, %d queued after the source withdrew everything", n, q)
	}
}

func TestOverridesAndSourceHealth(t *testing.T) {
	def := fast(nil)
	none := fast(func(hc *Check) { hc.Type = CheckNone })
	port := fast(func(hc *Check) { hc.Port = 9901 })
	cfg := &Checks{Default: def, Services: map[discovery.Authority]*Check{
		{Host: "off"}: none, {Host: "admin", Port: 80}: port,
	}}
	f := newFixture(t, cfg, 8)
	off := grp("off", "off", 80, "10.0.0.1:80")
	off.Services[0].Endpoints[0].Health = discovery.HealthWarning
	src := grp("src", "web", 80, "10.0.0.3:80", "10.0.0.4:80")
	src.Services[0].Endpoints[0].Health = discovery.HealthCritical // the source's word stands
	src.Services[0].Endpoints[1].Health = discovery.HealthWarning
	f.sink.Replace([]discovery.Group{off, grp("adm", "admin", 80, "10.0.0.2:80"), src})
	f.probes.set("10.0.0.2:9901", true)
	f.start()
	f.rec.waitHealth(t, "adm", "10.0.0.2:80=critical")
	f.rec.waitHealth(t, "src", "10.0.0.3:80=critical 10.0.0.4:80=warning")
	f.probes.waitProbes(t, "10.0.0.3:80", 3)
	if f.probes.probes("10.0.0.2:80") != 0 || f.probes.probes("10.0.0.1:80") != 0 {
		t.Fatal("probed the endpoint port instead of the check's, or a type: none service")
	}
	if got := f.rec.health("off"); got != "10.0.0.1:80=warning" {
		t.Fatalf("unchecked service changed: %s", got)
	}
	// Sources' calls pass through.
	f.sink.Healthy()
	f.sink.Failed(errors.New("x"))
	f.rec.mu.Lock()
	tail := slices.Clone(f.rec.calls[len(f.rec.calls)-2:])
	f.rec.mu.Unlock()
	if !slices.Equal(tail, []string{"healthy()", "failed()"}) {
		t.Fatalf("calls %v", tail)
	}
}

func TestBoundedConcurrencyAtScale(t *testing.T) {
	const n = 10000
	f := newFixture(t, &Checks{Default: fast(func(hc *Check) { hc.Interval = 50 * time.Millisecond })}, 16)
	f.probes.delay = 100 * time.Microsecond
	var groups []discovery.Group
	for i := 0; i < n/100; i++ {
		var addrs []string
		for j := 0; j < 100; j++ {
			addrs = append(addrs, fmt.Sprintf("10.%d.%d.1:80", i, j))
		}
		groups = append(groups, grp(fmt.Sprintf("k%03d", i), fmt.Sprintf("svc%d", i), 80, addrs...))
	}
	f.sink.Replace(groups)
	f.start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		f.probes.mu.Lock()
		probed := len(f.probes.count)
		f.probes.mu.Unlock()
		if probed == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d addresses probed", probed, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if m := f.probes.maxIn.Load(); m > 16 {
		t.Fatalf("%d checks in flight, the bound is 16", m)
	}
	f.rec.waitHealth(t, "k000", expectPassing(0))
}

func expectPassing(i int) string {
	var parts []string
	for j := 0; j < 100; j++ {
		parts = append(parts, fmt.Sprintf("10.%d.%d.1:80=passing", i, j))
	}
	return strings.Join(parts, " ")
}

// healthSink is a recSink that also takes UpdateHealth, as the manager's sinks do.
type healthSink struct{ *recSink }

func (h healthSink) UpdateHealth(gs ...discovery.Group) { h.add("health", gs) }

func TestFlipsAreHealthUpdates(t *testing.T) {
	rec := newRecSink()
	probes := newFakeProbes()
	c := New(Options{Probe: probes.probe})
	sink := c.Wrap("src", &Checks{Default: fast(nil)}, healthSink{rec})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	sink.Update(grp("k", "web", 80, "10.0.0.1:80"))
	rec.waitHealth(t, "k", "10.0.0.1:80=passing")
	rec.mu.Lock()
	calls := slices.Clone(rec.calls)
	rec.mu.Unlock()
	if !slices.Equal(calls, []string{"update(k)", "health(k)"}) {
		t.Fatalf("calls %v: the source's update, then the checker's as a health update", calls)
	}
}

func TestFlipWithoutEffectIsNotHandedOver(t *testing.T) {
	f := newFixture(t, &Checks{Default: fast(nil)}, 8)
	g := grp("k", "web", 80, "10.0.0.1:80")
	g.Services[0].Endpoints[0].Health = discovery.HealthCritical // the source's word: critical whatever the check says
	f.sink.Replace([]discovery.Group{g})
	f.start()
	f.probes.waitProbes(t, "10.0.0.1:80", 5) // its verdict went unknown → passing at the first
	if n := f.rec.callCount(); n != 1 {
		t.Fatalf("%d hand-overs, want only the first: %v", n, f.rec.calls)
	}
}
