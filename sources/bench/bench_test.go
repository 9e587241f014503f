package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The recording sink is shared by every source's tests; fakeSink is local
// so these tests can add helpers to it.
type call = sinktest.Call

type fakeSink struct{ *sinktest.Sink }

func newFakeSink() *fakeSink { return &fakeSink{sinktest.New(100000)} }

// wait bounds every wait for the source: a hang guard, never a timing claim.
const wait = 10 * time.Second

// fakeClock is the source's clock in tests; the test moves it.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// fixture is a source running on a fake clock and a ticker the test drives.
type fixture struct {
	t       *testing.T
	src     *Source
	sink    *fakeSink
	clock   *fakeClock
	tick    chan time.Time
	mu      sync.Mutex
	periods []time.Duration // every ticker started
	stops   int             // tickers stopped
	stop    func()
	// state is the replay of every hand-over: service key -> endpoints.
	state map[string][]discovery.Endpoint
	// The control API, which the tests use to read the loop's state.
	addrs  chan net.Addr
	base   string
	client *http.Client
}

// newFixture builds a source on cfg; unless cfg names one, its control API
// listens on a free loopback port.
func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	if cfg.Control == "" {
		cfg.Control = "127.0.0.1:0"
	}
	src, err := NewSource(cfg, discovery.BuildContext{Name: "bench"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{
		t: t, src: src, sink: newFakeSink(),
		clock:  &fakeClock{t: time.Unix(1_700_000_000, 0)},
		tick:   make(chan time.Time),
		state:  map[string][]discovery.Endpoint{},
		addrs:  make(chan net.Addr, 1),
		client: &http.Client{Timeout: wait},
	}
	t.Cleanup(f.client.CloseIdleConnections)
	src.onListen = func(a net.Addr) { f.addrs <- a }
	src.now = f.clock.Now
	src.newTicker = func(d time.Duration) (<-chan time.Time, func()) {
		f.mu.Lock()
		f.periods = append(f.periods, d)
		f.mu.Unlock()
		return f.tick, func() {
			f.mu.Lock()
			f.stops++
			f.mu.Unlock()
		}
	}
	return f
}

// start runs the source until the test ends (or f.stop is called).
func (f *fixture) start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.src.Run(ctx, f.sink)
	}()
	var once sync.Once
	f.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(wait):
				f.t.Error("Run did not return after cancel")
			}
		})
	}
	f.t.Cleanup(f.stop)
}

func (f *fixture) next() call {
	f.t.Helper()
	select {
	case c := <-f.sink.Calls:
		if c.Op == "update" || c.Op == "replace" {
			for _, g := range c.Groups {
				f.state[g.Key] = g.Services[0].Endpoints
			}
		}
		return c
	case <-time.After(wait):
		f.t.Fatal("no Sink call")
		return call{}
	}
}

// expectNoCall checks that nothing was handed over; callers first make the
// source pass through its loop (a tick it ignores, a control call), so
// anything it would have sent is already in the channel.
func (f *fixture) expectNoCall() {
	f.t.Helper()
	select {
	case c := <-f.sink.Calls:
		f.t.Fatalf("unexpected Sink call %s with %d groups", c.Op, len(c.Groups))
	default:
	}
}

// tickAt moves the clock by d and delivers one tick. It first waits for
// the churn's ticker: the churn's start time is read from the clock just
// before, and moving the clock earlier would move the start.
func (f *fixture) tickAt(d time.Duration) {
	f.t.Helper()
	for deadline := time.Now().Add(wait); ; time.Sleep(time.Millisecond) {
		if periods, _ := f.tickers(); len(periods) > 0 {
			break
		}
		if time.Now().After(deadline) {
			f.t.Fatal("the source started no ticker (is churn running?)")
		}
	}
	now := f.clock.Add(d)
	select {
	case f.tick <- now:
	case <-time.After(wait):
		f.t.Fatal("the source does not take a tick (is churn running?)")
	}
}

func (f *fixture) tickers() (periods []time.Duration, stops int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.periods), f.stops
}

func seqOf(t *testing.T, e discovery.Endpoint) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(e.Labels[LabelSeq], 10, 64)
	if err != nil {
		t.Fatalf("endpoint %v: bench_seq label %q: %v", e.Addr, e.Labels[LabelSeq], err)
	}
	return v
}

func tsOf(t *testing.T, e discovery.Endpoint) int64 {
	t.Helper()
	v, err := strconv.ParseInt(e.Labels[LabelTS], 10, 64)
	if err != nil {
		t.Fatalf("endpoint %v: bench_ts label %q: %v", e.Addr, e.Labels[LabelTS], err)
	}
	return v
}

func smallConfig() Config {
	cfg := DefaultConfig()
	cfg.Services, cfg.Endpoints = 5, 4
	return cfg
}

func TestNewFromConfig(t *testing.T) {
	k, ok := discovery.LookupKind(KindName)
	if !ok {
		t.Fatal("kind not registered")
	}
	tests := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, c Config, auths []discovery.Authority)
	}{
		{name: "defaults", yaml: "{}", check: func(t *testing.T, c Config, auths []discovery.Authority) {
			if c != DefaultConfig() {
				t.Errorf("config %+v, want the defaults %+v", c, DefaultConfig())
			}
			if len(auths) != DefaultServices || auths[7] != (discovery.Authority{Host: "svc-7.bench", Port: 8080}) {
				t.Errorf("%d authorities, auths[7] = %v", len(auths), auths[7])
			}
		}},
		{name: "every key", yaml: `
services: 3
endpoints: 2
host: "Api-%d.Bench"
rate: 2.5
weight_changes: 1
seed: 42
tick: 2ms
start_after: 1s
duration: 30s
paused: true
control: "127.0.0.1:0"`, check: func(t *testing.T, c Config, auths []discovery.Authority) {
			want := Config{Services: 3, Endpoints: 2, Host: "Api-%d.Bench", Rate: 2.5, WeightChanges: 1, Seed: 42,
				Tick: 2 * time.Millisecond, StartAfter: time.Second, Duration: 30 * time.Second, Paused: true, Control: "127.0.0.1:0"}
			if c != want {
				t.Errorf("config %+v, want %+v", c, want)
			}
			if !slices.Equal(auths, []discovery.Authority{{Host: "api-0.bench"}, {Host: "api-1.bench"}, {Host: "api-2.bench"}}) {
				t.Errorf("authorities %v (lower case, port 0 = any port)", auths)
			}
		}},
		{name: "no services", yaml: "services: 0", check: func(t *testing.T, c Config, auths []discovery.Authority) {
			if len(auths) != 0 {
				t.Errorf("authorities %v", auths)
			}
		}},
		{name: "ipv6 control", yaml: "control: '[::1]:9997'", check: func(*testing.T, Config, []discovery.Authority) {}},
		{name: "localhost control", yaml: "control: localhost:9997", check: func(*testing.T, Config, []discovery.Authority) {}},
		{name: "unknown key", yaml: "services: 3\nrates: 5", wantErr: "line 2: rates:"},
		{name: "not a mapping", yaml: "[1, 2]", wantErr: "want a mapping"},
		{name: "wrong type", yaml: "services: many", wantErr: "line 1: services:"},
		{name: "negative services", yaml: "services: -1", wantErr: "line 1: services: -1: want 0 to 1000000"},
		{name: "too many endpoints", yaml: "services: 1000\nendpoints: 100000", wantErr: "line 2: endpoints: services x endpoints = 100000000"},
		{name: "negative rate", yaml: "rate: -5", wantErr: "line 1: rate: -5"},
		{name: "nan rate", yaml: "rate: .nan", wantErr: "line 1: rate: NaN"},
		{name: "rate without endpoints", yaml: "endpoints: 0\nrate: 5", wantErr: "line 2: rate: churn needs at least one endpoint"},
		{name: "weight fraction", yaml: "weight_changes: 1.5", wantErr: "line 1: weight_changes: 1.5: want a fraction"},
		{name: "tick zero", yaml: "tick: 0s", wantErr: "line 1: tick: 0s: want 100µs to 1s"},
		{name: "tick long", yaml: "\ntick: 10s", wantErr: "line 2: tick: 10s"},
		{name: "bad duration", yaml: "duration: soon", wantErr: "line 1: duration: invalid duration"},
		{name: "host without verb", yaml: "host: svc.bench:80", wantErr: "line 1: host: \"svc.bench:80\": want exactly one %d"},
		{name: "host with two verbs", yaml: "host: svc-%d-%d.bench", wantErr: "want exactly one %d"},
		{name: "host with another verb", yaml: "host: svc-%s.bench", wantErr: "the only verb allowed is one %d"},
		{name: "host not an authority", yaml: "host: 'svc %d'", wantErr: "line 1: host: service 0: invalid authority"},
		{name: "host bad port", yaml: "host: 'svc-%d:0'", wantErr: "port must be a number"},
		{name: "control outside loopback", yaml: "control: 0.0.0.0:9997", wantErr: "line 1: control: \"0.0.0.0:9997\": must be a loopback address"},
		{name: "control not host:port", yaml: "control: 9997", wantErr: "line 1: control: \"9997\": address 9997: missing port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var node yaml.Node
			if err := yaml.Unmarshal([]byte(tt.yaml), &node); err != nil {
				t.Fatal(err)
			}
			src, err := k.New(node.Content[0], discovery.BuildContext{Name: "bench"})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := src.(*Source)
			tt.check(t, s.Config(), s.auths)
		})
	}
}

func TestTickFor(t *testing.T) {
	c := DefaultConfig()
	for _, tt := range []struct {
		rate float64
		want time.Duration
	}{
		{0, 50 * time.Millisecond}, {1, 50 * time.Millisecond}, {200, 5 * time.Millisecond},
		{5000, time.Millisecond}, {100000, time.Millisecond},
	} {
		if got := c.tickFor(tt.rate); got != tt.want {
			t.Errorf("tickFor(%v) = %v, want %v", tt.rate, got, tt.want)
		}
	}
	c.Tick = 3 * time.Millisecond
	if got := c.tickFor(5000); got != c.Tick {
		t.Errorf("an explicit tick is kept: %v", got)
	}
}

func TestRunInitialState(t *testing.T) {
	f := newFixture(t, smallConfig())
	f.start()
	c := f.next()
	if c.Op != "replace" || len(c.Groups) != 5 {
		t.Fatalf("first call %s with %d groups, want replace with one group per service", c.Op, len(c.Groups))
	}
	seen := map[netip.AddrPort]bool{}
	for i, g := range c.Groups {
		want := fmt.Sprintf("svc-%d.bench:8080", i)
		if g.Key != want || len(g.Services) != 1 || g.Services[0].Authority.String() != want {
			t.Fatalf("group %d: key %q, services %+v; want one service %s keyed by it", i, g.Key, g.Services, want)
		}
		eps := g.Services[0].Endpoints
		if len(eps) != 4 {
			t.Fatalf("%s: %d endpoints, want 4", want, len(eps))
		}
		for _, e := range eps {
			if seen[e.Addr] || !e.Addr.IsValid() || e.Addr.Port() == 0 {
				t.Errorf("%s: address %v is invalid or not unique", want, e.Addr)
			}
			seen[e.Addr] = true
			if seqOf(t, e) != 0 || tsOf(t, e) != f.clock.Now().UnixNano() || e.Weight != discovery.DefaultWeight || e.Health != discovery.HealthPassing {
				t.Errorf("%s: initial endpoint %+v", want, e)
			}
		}
	}
	f.stop()
	f.expectNoCall()
	if periods, _ := f.tickers(); len(periods) != 0 {
		t.Errorf("tickers %v started without churn", periods)
	}
}

func TestRunEmpty(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Services = 0
	f := newFixture(t, cfg)
	f.start()
	if c := f.next(); c.Op != "replace" || len(c.Groups) != 0 {
		t.Fatalf("got %s with %d groups, want an empty Replace (synced, nothing known)", c.Op, len(c.Groups))
	}
}

// TestRunChurn checks the rate, the stamps, that each hand-over carries
// whole groups with exactly the changed endpoints differing, and that
// handed-over slices are never modified afterwards.
func TestRunChurn(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 100 // auto tick: 10ms
	f := newFixture(t, cfg)
	f.start()
	initial := f.next()
	frozen := deepCopy(initial.Groups)
	last := map[string][]discovery.Endpoint{}
	for _, g := range frozen {
		last[g.Key] = g.Services[0].Endpoints
	}

	var seq uint64
	replaced, reweighted := 0, 0
	for range 100 {
		f.tickAt(10 * time.Millisecond)
		c := f.next()
		if c.Op != "update" {
			t.Fatalf("got %s, want update", c.Op)
		}
		now := f.clock.Now().UnixNano()
		changed := 0
		for _, g := range deepCopy(c.Groups) {
			eps := g.Services[0].Endpoints
			if len(eps) != cfg.Endpoints {
				t.Fatalf("%s: %d endpoints handed over, want the whole group (%d)", g.Key, len(eps), cfg.Endpoints)
			}
			prev := last[g.Key]
			for j, e := range eps {
				if e.Equal(&prev[j]) {
					continue
				}
				changed++
				seq++
				if s := seqOf(t, e); s != seq || tsOf(t, e) != now {
					t.Errorf("changed endpoint seq %d ts %d, want seq %d ts %d", s, tsOf(t, e), seq, now)
				}
				switch {
				case e.Addr != prev[j].Addr && e.Weight == prev[j].Weight:
					replaced++
				case e.Addr == prev[j].Addr && e.Weight != prev[j].Weight:
					reweighted++
				default:
					t.Errorf("a change must replace the address or change the weight: %+v -> %+v", prev[j], e)
				}
			}
			last[g.Key] = eps
		}
		if changed != 1 {
			t.Fatalf("tick handed over %d changes, want 1 (100/s x 10ms)", changed)
		}
	}
	if replaced == 0 || reweighted == 0 {
		t.Errorf("weight_changes 0.5: %d replacements, %d weight changes; want both", replaced, reweighted)
	}
	if periods, _ := f.tickers(); !slices.Equal(periods, []time.Duration{10 * time.Millisecond}) {
		t.Errorf("tickers %v, want one of 10ms", periods)
	}
	if !groupsEqual(deepCopy(initial.Groups), frozen) {
		t.Error("the source modified endpoints it had handed over")
	}
}

// TestRunBatches checks that a tick hands over every change due since the
// last one, in one Update, with one group per touched service.
func TestRunBatches(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 5000
	cfg.Tick = 5 * time.Millisecond
	f := newFixture(t, cfg)
	f.start()
	f.next()
	f.tickAt(5 * time.Millisecond)
	c := f.next()
	keys := map[string]bool{}
	for _, g := range c.Groups {
		if keys[g.Key] {
			t.Errorf("service %s handed over twice in one batch", g.Key)
		}
		keys[g.Key] = true
	}
	f.tickAt(0) // makes the loop pass once more, so Status sees the first tick
	f.expectNoCall()
	if got := f.truth().Seq; got != 25 {
		t.Errorf("seq %d after 5ms at 5000/s, want 25", got)
	}
}

func TestRunDurationStopsChurn(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 10
	cfg.Duration = time.Second
	cfg.Tick = 300 * time.Millisecond
	f := newFixture(t, cfg)
	f.start()
	f.next()
	for range 3 {
		f.tickAt(300 * time.Millisecond)
		f.next()
	}
	// 1.2s: the changes due up to 1s only, then the ticker stops.
	f.tickAt(300 * time.Millisecond)
	f.next()
	if tr := f.truth(); tr.Seq != 10 { // also waits for the loop to finish the tick
		t.Errorf("seq %d, want 10 (10/s for 1s)", tr.Seq)
	}
	if _, stops := f.tickers(); stops != 1 {
		t.Errorf("ticker stopped %d times, want 1", stops)
	}
	f.expectNoCall()
}

func TestRunStartAfter(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 10
	cfg.StartAfter = time.Second
	cfg.Tick = 500 * time.Millisecond
	f := newFixture(t, cfg)
	f.start()
	f.next()
	f.tickAt(500 * time.Millisecond)
	f.tickAt(500 * time.Millisecond) // 1s: churn starts now, nothing due yet
	f.expectNoCall()
	f.tickAt(500 * time.Millisecond)
	if c := f.next(); c.Op != "update" {
		t.Fatalf("got %s", c.Op)
	}
	if tr := f.truth(); tr.Seq != 5 {
		t.Errorf("seq %d, want 5 (10/s for 0.5s after start_after)", tr.Seq)
	}
}

func TestRunSkipsWhenFarBehind(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 100
	f := newFixture(t, cfg)
	f.start()
	f.next()
	f.tickAt(5 * time.Second) // a stalled process: 500 due
	f.next()
	st := f.status()
	if st.Seq != 100 || st.Skipped != 400 {
		t.Errorf("seq %d skipped %d; want 100 generated (one second's worth) and 400 skipped", st.Seq, st.Skipped)
	}
	f.tickAt(10 * time.Millisecond) // back on schedule: one more
	f.next()
	if st := f.status(); st.Seq != 101 {
		t.Errorf("seq %d, want 101", st.Seq)
	}
}

func TestRunPausedWaitsForControl(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 100
	cfg.Paused = true
	f := newFixture(t, cfg)
	f.start()
	f.next()
	if st := f.status(); st.Running || st.Rate != 0 {
		t.Errorf("paused source: %+v", st)
	}
	if periods, _ := f.tickers(); len(periods) != 0 {
		t.Errorf("paused source started tickers %v", periods)
	}
	f.expectNoCall()
}

// TestGeneratorDeterministic: the same seed gives the same changes.
func TestGeneratorDeterministic(t *testing.T) {
	run := func(seed uint64) Truth {
		cfg := smallConfig()
		cfg.Seed = seed
		auths, err := cfg.validate()
		if err != nil {
			t.Fatal(err)
		}
		g := newGenerator(cfg, auths)
		g.initial(1)
		for i := range 50 {
			g.changes(3, int64(i))
		}
		return g.snapshot().truth()
	}
	a, b, c := run(7), run(7), run(8)
	if !truthEqual(a, b) {
		t.Error("same seed, different state")
	}
	if truthEqual(a, c) {
		t.Error("different seeds, same state")
	}
	if a.Seq != 150 {
		t.Errorf("seq %d, want 150", a.Seq)
	}
}

func truthEqual(a, b Truth) bool {
	return a.Seq == b.Seq && slices.EqualFunc(a.Services, b.Services, func(x, y TruthService) bool {
		return x.Authority == y.Authority && slices.Equal(x.Endpoints, y.Endpoints)
	})
}

// TestTruthMatchesHandedOver: the Truth is exactly the replay of every
// hand-over.
func TestTruthMatchesHandedOver(t *testing.T) {
	cfg := smallConfig()
	cfg.Rate = 1000
	f := newFixture(t, cfg)
	f.start()
	f.next()
	for range 20 {
		f.tickAt(3 * time.Millisecond)
		f.next()
	}
	tr := f.truth()
	if tr.Seq != 60 {
		t.Fatalf("seq %d, want 60", tr.Seq)
	}
	if len(tr.Services) != cfg.Services {
		t.Fatalf("%d services in the truth", len(tr.Services))
	}
	for i, ts := range tr.Services {
		eps := f.state[ts.Authority]
		if len(eps) != len(ts.Endpoints) {
			t.Fatalf("service %d: truth %d endpoints, handed over %d", i, len(ts.Endpoints), len(eps))
		}
		for j, e := range eps {
			want := TruthEndpoint{Addr: e.Addr.String(), Weight: e.EffectiveWeight(), Seq: seqOf(t, e)}
			if ts.Endpoints[j] != want {
				t.Errorf("service %d endpoint %d: truth %+v, handed over %+v", i, j, ts.Endpoints[j], want)
			}
		}
	}
}

// status and truth ask the running loop through the control API.
func (f *fixture) status() Status {
	f.t.Helper()
	var st Status
	f.do("GET", "/status", http.StatusOK, &st)
	return st
}

func (f *fixture) truth() Truth {
	f.t.Helper()
	var tr Truth
	f.do("GET", "/truth", http.StatusOK, &tr)
	return tr
}

// do calls the control API and decodes its JSON answer into out.
func (f *fixture) do(method, path string, wantCode int, out any) {
	f.t.Helper()
	if f.base == "" {
		select {
		case a := <-f.addrs:
			f.base = "http://" + a.String()
		case <-time.After(wait):
			f.t.Fatal("the control API never listened")
		}
	}
	req, err := http.NewRequest(method, f.base+path, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantCode {
		f.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, body, wantCode)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			f.t.Fatalf("%s %s: %v: %s", method, path, err, body)
		}
	}
}

func TestControlAPI(t *testing.T) {
	cfg := smallConfig()
	cfg.Paused = true
	f := newFixture(t, cfg)
	f.start()
	f.next()
	do := f.do

	var st Status
	do("GET", "/status", 200, &st)
	if st.Running || st.Services != 5 || st.Endpoints != 4 || st.Host != DefaultHost {
		t.Errorf("status %+v", st)
	}
	do("POST", "/churn?rate=200", 200, &st)
	if !st.Running || st.Rate != 200 || st.Tick != "5ms" || st.StartedNs != f.clock.Now().UnixNano() {
		t.Errorf("after start: %+v", st)
	}
	f.tickAt(50 * time.Millisecond)
	f.next()
	var tr Truth
	do("GET", "/truth", 200, &tr)
	if tr.Seq != 10 || len(tr.Services) != 5 {
		t.Errorf("truth seq %d with %d services, want 10 and 5", tr.Seq, len(tr.Services))
	}
	do("POST", "/churn?rate=0", 200, &st)
	if st.Running || st.Seq != 10 || st.Changes != 10 {
		t.Errorf("after stop: %+v", st)
	}
	if _, stops := f.tickers(); stops != 1 {
		t.Errorf("ticker stopped %d times", stops)
	}
	do("POST", "/churn?rate=fast", 400, nil)
	do("POST", "/churn?rate=-1", 400, nil)
	do("POST", "/churn?rate=5&duration=forever", 400, nil)
	do("GET", "/churn?rate=5", 405, nil)
	do("POST", "/churn?rate=10&duration=1s", 200, &st)
	f.tickAt(2 * time.Second)
	f.next()
	do("GET", "/status", 200, &st)
	if st.Running || st.Seq != 20 {
		t.Errorf("duration=1s at 10/s: %+v, want stopped at seq 20", st)
	}
	f.expectNoCall()
}

func TestControlListenFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := smallConfig()
	cfg.Control = ln.Addr().String()
	f := newFixture(t, cfg)
	f.start()
	if c := f.next(); c.Op != "replace" || len(c.Groups) != 5 {
		t.Fatalf("got %s with %d groups; the state is handed over even without control", c.Op, len(c.Groups))
	}
	if c := f.next(); c.Op != "failed" || !strings.Contains(c.Err.Error(), "address already in use") {
		t.Fatalf("got %s (%v), want failed naming the listen error", c.Op, c.Err)
	}
}

func TestRunCancelledBeforeStart(t *testing.T) {
	src, err := NewSource(smallConfig(), discovery.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sink := newFakeSink()
	src.Run(ctx, sink)
	if len(sink.Calls) != 0 {
		t.Error("Sink called by a source cancelled before it ran")
	}
}

func deepCopy(groups []discovery.Group) []discovery.Group {
	out := make([]discovery.Group, len(groups))
	for i, g := range groups {
		out[i] = discovery.Group{Key: g.Key}
		for _, s := range g.Services {
			eps := make([]discovery.Endpoint, len(s.Endpoints))
			for j, e := range s.Endpoints {
				e.Labels = maps.Clone(e.Labels)
				eps[j] = e
			}
			out[i].Services = append(out[i].Services, discovery.Service{Authority: s.Authority, Opaque: s.Opaque, Endpoints: eps})
		}
	}
	return out
}

func groupsEqual(a, b []discovery.Group) bool {
	return slices.EqualFunc(a, b, func(x, y discovery.Group) bool {
		return x.Key == y.Key && slices.EqualFunc(x.Services, y.Services, func(s, u discovery.Service) bool {
			return s.Authority == u.Authority && slices.EqualFunc(s.Endpoints, u.Endpoints, func(e, g discovery.Endpoint) bool { return e.Equal(&g) })
		})
	})
}
