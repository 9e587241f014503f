package consul

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The recording sink and log buffer are shared by every source's tests;
// fakeSink is local so these tests can add helpers to it.
type (
	call      = sinktest.Call
	logBuffer = sinktest.LogBuffer
)

type fakeSink struct{ *sinktest.Sink }

func newFakeSink() *fakeSink { return &fakeSink{sinktest.New(10000)} }

// wait bounds every wait for the source; tests never assert durations.
const wait = 10 * time.Second

type fixture struct {
	sink *fakeSink
	logs *logBuffer
	src  *Source
	stop func()
}

// testConfig is the base of every test's config: short waits and
// backoffs, so retries happen within the hang guards.
func testConfig(addr, extra string) string {
	return fmt.Sprintf("address: %s\nwait: 1s\nbackoff: {initial: 5ms, max: 50ms}\n%s", addr, extra)
}

func parse(t *testing.T, text string) (discovery.Source, error) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatal(err)
	}
	node := &yaml.Node{Kind: yaml.MappingNode}
	if len(doc.Content) > 0 {
		node = doc.Content[0]
	}
	return newFromNode(node, discovery.BuildContext{Name: "consul", BaseDir: t.TempDir()})
}

func start(t *testing.T, addr, extra string) *fixture {
	t.Helper()
	x := &fixture{sink: newFakeSink(), logs: &logBuffer{}}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(testConfig(addr, extra)), &doc); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(x.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	src, err := newFromNode(doc.Content[0], discovery.BuildContext{Name: "consul", BaseDir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	x.src = src.(*Source)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		x.src.Run(ctx, x.sink)
	}()
	var once sync.Once
	x.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(wait):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(x.stop)
	return x
}

func (x *fixture) next(t *testing.T) call {
	t.Helper()
	select {
	case c := <-x.sink.Calls:
		return c
	case <-time.After(wait):
		t.Fatalf("no Sink call within %v; logs:\n%s", wait, x.logs)
		return call{}
	}
}

// nextHandOver returns the next Update or Replace; failures and healthy
// marks before it are returned as well.
func (x *fixture) nextHandOver(t *testing.T) (call, []call) {
	t.Helper()
	var before []call
	for {
		c := x.next(t)
		if c.Op == "update" || c.Op == "replace" {
			return c, before
		}
		before = append(before, c)
	}
}

// until collects hand-overs until the groups last handed over for the
// wanted keys match want, and returns every call seen.
func (x *fixture) until(t *testing.T, want map[string][]string) []call {
	t.Helper()
	var seen []call
	latest := map[string][]string{}
	for {
		match := true
		for k, v := range want {
			if got, ok := latest[k]; !ok || !reflect.DeepEqual(got, v) {
				match = false
			}
		}
		if match {
			return seen
		}
		c := x.next(t)
		seen = append(seen, c)
		for _, g := range c.Groups {
			latest[g.Key] = describe(g)
		}
		if len(seen) > 500 {
			t.Fatalf("never reached %v; last %v", want, latest)
		}
	}
}

// describe renders a group as "authority=addr(health),…" per service.
func describe(g discovery.Group) []string {
	out := []string{}
	for _, s := range g.Services {
		var eps []string
		for _, e := range s.Endpoints {
			eps = append(eps, fmt.Sprintf("%s(%s)", e.Addr, e.Health))
		}
		out = append(out, s.Authority.String()+"="+strings.Join(eps, ","))
	}
	return out
}

func groupsOf(c call) map[string][]string {
	m := map[string][]string{}
	for _, g := range c.Groups {
		m[g.Key] = describe(g)
	}
	return m
}

func expect(t *testing.T, c call, op string, want map[string][]string) {
	t.Helper()
	if c.Op != op {
		t.Fatalf("got %v, want %s", c, op)
	}
	if got := groupsOf(c); !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %v\nwant %v", op, got, want)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSyncedOnceEverythingAnsweredThenUpdates(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing", "v1"), inst("n2", "10.0.0.2", "web-2", 80, "passing", "v2"))
	f.set("dc1", "api", inst("n1", "10.0.0.1", "api-1", 9000, "passing"))
	x := start(t, f.addr(), "")

	c, _ := x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{
		"dc1/api": {"api.service.dc1.consul=10.0.0.1:9000(passing)"},
		"dc1/web": {
			"v1.web.service.dc1.consul=10.0.0.1:80(passing)",
			"v2.web.service.dc1.consul=10.0.0.2:80(passing)",
			"web.service.dc1.consul=10.0.0.1:80(passing),10.0.0.2:80(passing)",
		},
	})

	// A new instance.
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing", "v1"), inst("n2", "10.0.0.2", "web-2", 80, "passing", "v2"), inst("n3", "10.0.0.3", "web-3", 8080, "passing"))
	c, _ = x.nextHandOver(t)
	expect(t, c, "update", map[string][]string{"dc1/web": {
		"v1.web.service.dc1.consul=10.0.0.1:80(passing)",
		"v2.web.service.dc1.consul=10.0.0.2:80(passing)",
		"web.service.dc1.consul=10.0.0.1:80(passing),10.0.0.2:80(passing),10.0.0.3:8080(passing)",
	}})

	// A check goes critical: the endpoint stays, marked critical (evicted on read).
	f.setChecks("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "critical", "v1"), inst("n2", "10.0.0.2", "web-2", 80, "passing", "v2"), inst("n3", "10.0.0.3", "web-3", 8080, "passing"))
	c, _ = x.nextHandOver(t)
	expect(t, c, "update", map[string][]string{"dc1/web": {
		"v1.web.service.dc1.consul=10.0.0.1:80(critical)",
		"v2.web.service.dc1.consul=10.0.0.2:80(passing)",
		"web.service.dc1.consul=10.0.0.1:80(critical),10.0.0.2:80(passing),10.0.0.3:8080(passing)",
	}})

	// Deregistered: withdrawn, once (no "exists, no endpoints" on the way).
	f.remove("dc1", "api")
	c, _ = x.nextHandOver(t)
	expect(t, c, "update", map[string][]string{"dc1/api": {}})
}

func TestServiceWithNothingServableExistsWithoutEndpoints(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"), inst("n2", "10.0.0.2", "web-2", 80, "passing"))
	x := start(t, f.addr(), "")
	c, _ := x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{"dc1/web": {"web.service.dc1.consul=10.0.0.1:80(passing),10.0.0.2:80(passing)"}})
	// What is left cannot be served: a hostname address, no port. The
	// service still exists; its bad instances are logged and counted once.
	bad := inst("n3", "db.example.com", "web-3", 80, "passing")
	noPort := inst("n4", "10.0.0.4", "web-4", 0, "passing")
	f.set("dc1", "web", bad, noPort)
	c, _ = x.nextHandOver(t)
	expect(t, c, "update", map[string][]string{"dc1/web": {"web.service.dc1.consul="}})
	f.setChecks("dc1", "web", bad, noPort, inst("n1", "10.0.0.1", "web-1", 80, "passing"))
	c, _ = x.nextHandOver(t)
	expect(t, c, "update", map[string][]string{"dc1/web": {"web.service.dc1.consul=10.0.0.1:80(passing)"}})
	if n := x.src.Rejected(); n != 2 {
		t.Errorf("%d instances counted as rejected, want 2 (each once)", n)
	}
	for _, want := range []string{`instance=n3/web-3`, `not an IP address`, `instance=n4/web-4`, `port 0`} {
		if !strings.Contains(x.logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, x.logs)
		}
	}
}

func TestNothingHandedOverUntilEveryServiceAnswered(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"))
	f.set("dc1", "api", inst("n1", "10.0.0.1", "api-1", 9000, "passing"))
	f.failHealth("api", http.StatusInternalServerError)
	x := start(t, f.addr(), "")

	// Several failed attempts, and nothing handed over meanwhile.
	c := x.next(t)
	for c.Op == "healthy" {
		c = x.next(t)
	}
	if c.Op != "failed" || !strings.Contains(c.Err.Error(), "service api") {
		t.Fatalf("got %v, want the failure of api", c)
	}
	eventually(t, "api retried", func() bool {
		n := 0
		for _, r := range f.requestLog() {
			if strings.HasPrefix(r, "health dc1/api ") {
				n++
			}
		}
		return n >= 4
	})
	for len(x.sink.Calls) > 0 {
		if c := <-x.sink.Calls; c.Op == "update" || c.Op == "replace" {
			t.Fatalf("handed over before every service answered: %v", c)
		}
	}
	f.failHealth("api", 0)
	c, _ = x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{
		"dc1/api": {"api.service.dc1.consul=10.0.0.1:9000(passing)"},
		"dc1/web": {"web.service.dc1.consul=10.0.0.1:80(passing)"},
	})
}

func TestOutageKeepsLastStateThenReconciles(t *testing.T) {
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusForbidden} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			f := newFakeConsul(t, "dc1")
			f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"))
			f.set("dc1", "api", inst("n1", "10.0.0.1", "api-1", 9000, "passing"))
			x := start(t, f.addr(), "")
			if c, _ := x.nextHandOver(t); c.Op != "replace" {
				t.Fatal(c)
			}

			f.fail(code)
			// Changes the source cannot see yet: api deregistered, web moved.
			f.remove("dc1", "api")
			f.set("dc1", "web", inst("n2", "10.0.0.2", "web-2", 80, "passing"))
			for failures := 0; failures < 5; {
				switch c := x.next(t); c.Op {
				case "failed":
					failures++
				case "healthy":
					t.Fatalf("healthy during the outage")
				default:
					t.Fatalf("handed over during the outage: %v", c)
				}
			}
			f.fail(0)
			seen := x.until(t, map[string][]string{
				"dc1/api": {},
				"dc1/web": {"web.service.dc1.consul=10.0.0.2:80(passing)"},
			})
			for _, c := range seen {
				if c.Op == "replace" {
					t.Errorf("a second Replace after recovery: %v", c)
				}
			}
			// The first reads after the failure went to the leader, consistent.
			for _, want := range []string{"catalog dc1 0 consistent", "health dc1/web 0 consistent"} {
				eventually(t, want, func() bool { return slices.Contains(f.requestLog(), want) })
			}
			if log := f.requestLog(); !slices.Contains(log, "catalog dc1 0 stale") {
				t.Errorf("the first read at start should be stale (allow_stale): %v", log)
			}
		})
	}
}

func TestDroppedConnectionsAreAnOutage(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"))
	x := start(t, f.addr(), "")
	if c, _ := x.nextHandOver(t); c.Op != "replace" {
		t.Fatal(c)
	}
	// Every blocking query loses its connection at once.
	f.srv.CloseClientConnections()
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"), inst("n2", "10.0.0.2", "web-2", 80, "passing"))
	x.until(t, map[string][]string{"dc1/web": {"web.service.dc1.consul=10.0.0.1:80(passing),10.0.0.2:80(passing)"}})
}

func TestIndexGoingBackwardsReadsFromScratch(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	for i := range 5 {
		f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80+i, "passing"))
	}
	x := start(t, f.addr(), "")
	if c, _ := x.nextHandOver(t); c.Op != "replace" {
		t.Fatal(c)
	}
	before := len(f.requestLog())
	// Consul lost its state: every index restarts below what the source holds.
	f.restart()
	f.set("dc1", "web", inst("n9", "10.0.0.9", "web-9", 80, "passing"))
	x.until(t, map[string][]string{"dc1/web": {"web.service.dc1.consul=10.0.0.9:80(passing)"}})
	// The watcher read from scratch (index 0) after seeing the index go back.
	eventually(t, "a non-blocking re-read of web", func() bool {
		return slices.Contains(f.requestLog()[before:], "health dc1/web 0 stale")
	})
}

func TestOverflowFollowsChecksWithinTheConnectionBudget(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	names := []string{"api", "cache", "db", "queue", "web"}
	for i, n := range names {
		f.set("dc1", n, inst(fmt.Sprintf("n%d", i), fmt.Sprintf("10.0.0.%d", i+1), n+"-1", 80, "passing"))
	}
	x := start(t, f.addr(), "max_watches: 1\nwatch_first: [queue]\noverflow: {concurrency: 2, min_interval: 10ms}\n")
	c, _ := x.nextHandOver(t)
	if c.Op != "replace" || len(c.Groups) != len(names) {
		t.Fatalf("first hand-over %v", c)
	}
	eventually(t, "queue watched", func() bool { n, _ := f.blockingQueriesOf("queue"); return n > 0 })

	// A check of an unwatched service changes; the catalog does not.
	f.setChecks("dc1", "db", inst("n2", "10.0.0.3", "db-1", 80, "critical"))
	x.until(t, map[string][]string{"dc1/db": {"db.service.dc1.consul=10.0.0.3:80(critical)"}})
	f.setChecks("dc1", "db", inst("n2", "10.0.0.3", "db-1", 80, "passing"))
	x.until(t, map[string][]string{"dc1/db": {"db.service.dc1.consul=10.0.0.3:80(passing)"}})

	// A node check (no service) goes critical: the services on that node are read.
	e := inst("n1", "10.0.0.2", "cache-1", 80, "passing")
	e.Checks = append(e.Checks, &api.HealthCheck{Node: "n1", CheckID: "serfHealth", Status: "critical"})
	f.setChecks("dc1", "cache", e)
	x.until(t, map[string][]string{"dc1/cache": {"cache.service.dc1.consul=10.0.0.2:80(critical)"}})

	// A new instance of an unwatched service: the catalog moves, the overflow is swept.
	f.set("dc1", "api", inst("n0", "10.0.0.1", "api-1", 80, "passing"), inst("n5", "10.0.0.6", "api-2", 80, "passing"))
	x.until(t, map[string][]string{"dc1/api": {"api.service.dc1.consul=10.0.0.1:80(passing),10.0.0.6:80(passing)"}})

	// The watched service still updates through its watch.
	f.set("dc1", "queue", inst("n4", "10.0.0.5", "queue-1", 81, "passing"))
	x.until(t, map[string][]string{"dc1/queue": {"queue.service.dc1.consul=10.0.0.5:81(passing)"}})

	for _, n := range names {
		if total, _ := f.blockingQueriesOf(n); n != "queue" && total > 0 {
			t.Errorf("%s got a blocking query; only queue (watch_first) should", n)
		}
	}
	if _, m := f.stat("blocking-health"); m > 1 {
		t.Errorf("%d blocking health queries at once, max_watches is 1", m)
	}
	if _, m := f.stat("health"); m > 1+2 {
		t.Errorf("%d health queries at once, want at most max_watches + overflow.concurrency = 3", m)
	}
}

func TestOverflowFollowsACheckAcrossStates(t *testing.T) {
	// critical and warning are two queries: a check moving from one to the
	// other leaves one answer and enters the other.
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"))
	f.set("dc1", "db", inst("n2", "10.0.0.2", "db-1", 80, "passing"), inst("n3", "10.0.0.3", "db-2", 80, "passing"))
	x := start(t, f.addr(), "max_watches: 1\nwatch_first: [web]\noverflow: {min_interval: 10ms}\n")
	if c, _ := x.nextHandOver(t); c.Op != "replace" {
		t.Fatal(c)
	}
	for _, step := range [][2]string{{"critical", "passing"}, {"warning", "critical"}, {"passing", "warning"}, {"passing", "passing"}} {
		f.setChecks("dc1", "db", inst("n2", "10.0.0.2", "db-1", 80, step[0]), inst("n3", "10.0.0.3", "db-2", 80, step[1]))
		x.until(t, map[string][]string{"dc1/db": {fmt.Sprintf("db.service.dc1.consul=10.0.0.2:80(%s),10.0.0.3:80(%s)", step[0], step[1])}})
	}
	if total, _ := f.blockingQueriesOf("db"); total > 0 {
		t.Errorf("db got %d blocking queries; it is in the overflow", total)
	}
}

func TestWatchesMoveToWatchFirstServices(t *testing.T) {
	// A check that turns warning and back between two answers of the checks
	// query, with a service read seeing the warning, must still be read
	// back (this failed about one run in five on a loaded machine).
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "api", inst("n1", "10.0.0.1", "api-1", 80, "passing"))
	x := start(t, f.addr(), "max_watches: 1\nwatch_first: [web]\noverflow: {min_interval: 10ms}\n")
	if c, _ := x.nextHandOver(t); c.Op != "replace" {
		t.Fatal(c)
	}
	eventually(t, "api watched", func() bool { n, _ := f.blockingQueriesOf("api"); return n > 0 })
	// web appears and takes the only watch; api moves to the overflow and
	// still follows its checks, without blocking queries of its own.
	f.set("dc1", "web", inst("n2", "10.0.0.2", "web-1", 80, "passing"))
	x.until(t, map[string][]string{"dc1/web": {"web.service.dc1.consul=10.0.0.2:80(passing)"}})
	eventually(t, "web watched, api not", func() bool {
		web, _ := f.blockingQueriesOf("web")
		_, api := f.blockingQueriesOf("api")
		return web > 0 && api == 0
	})
	apiBlocking, _ := f.blockingQueriesOf("api")
	f.setChecks("dc1", "api", inst("n1", "10.0.0.1", "api-1", 80, "warning"))
	x.until(t, map[string][]string{"dc1/api": {"api.service.dc1.consul=10.0.0.1:80(warning)"}})
	f.setChecks("dc1", "api", inst("n1", "10.0.0.1", "api-1", 80, "passing"))
	x.until(t, map[string][]string{"dc1/api": {"api.service.dc1.consul=10.0.0.1:80(passing)"}})
	if n, _ := f.blockingQueriesOf("api"); n != apiBlocking {
		t.Errorf("api got %d more blocking queries after it lost its watch", n-apiBlocking)
	}
}

func TestSeveralDatacenters(t *testing.T) {
	f := newFakeConsul(t, "dc1", "dc2")
	f.set("dc1", "web", inst("n1", "10.1.0.1", "web-1", 80, "passing"))
	f.set("dc2", "web", inst("m1", "10.2.0.1", "web-1", 80, "passing"))
	f.set("dc2", "db", inst("m1", "10.2.0.1", "db-1", 5432, "passing"))
	x := start(t, f.addr(), "datacenters: [dc1, dc2]\nnaming: {tag_subsets: []}\n")
	c, _ := x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{
		"dc1/web": {"web.service.dc1.consul=10.1.0.1:80(passing)"},
		"dc2/db":  {"db.service.dc2.consul=10.2.0.1:5432(passing)"},
		"dc2/web": {"web.service.dc2.consul=10.2.0.1:80(passing)"},
	})
	// One datacenter failing keeps its state and does not stop the other.
	f.failDatacenter("dc1", http.StatusInternalServerError)
	f.set("dc2", "web", inst("m2", "10.2.0.2", "web-2", 80, "passing"))
	for _, c := range x.until(t, map[string][]string{"dc2/web": {"web.service.dc2.consul=10.2.0.2:80(passing)"}}) {
		for _, g := range c.Groups {
			if strings.HasPrefix(g.Key, "dc1/") {
				t.Errorf("dc1 handed over while failing: %v", c)
			}
		}
	}
	f.failDatacenter("dc1", 0)
	f.set("dc1", "web", inst("n2", "10.1.0.2", "web-2", 80, "passing"))
	x.until(t, map[string][]string{"dc1/web": {"web.service.dc1.consul=10.1.0.2:80(passing)"}})
}

func TestAgentDatacenterWhenTheTokenCannotReadTheAgent(t *testing.T) {
	f := newFakeConsul(t, "east", "west")
	f.mu.Lock()
	f.selfForbidden = true
	f.mu.Unlock()
	f.set("east", "web", inst("n1", "10.1.0.1", "web-1", 80, "passing"))
	x := start(t, f.addr(), "")
	c, _ := x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{
		"east/web": {"web.service.east.consul=10.1.0.1:80(passing)"},
	})
}

func TestConnectIdentities(t *testing.T) {
	native := inst("n1", "10.0.0.1", "pay-1", 8443, "passing")
	native.Service.Connect = &api.AgentServiceConnect{Native: true}
	proxy := inst("n1", "10.0.0.1", "web-sidecar-proxy", 21000, "passing")
	proxy.Service.Service = "web-sidecar-proxy"
	proxy.Service.Kind = api.ServiceKindConnectProxy
	proxy.Service.Proxy = &api.AgentServiceConnectProxyConfig{DestinationServiceName: "web"}
	plain := inst("n2", "10.0.0.2", "web-1", 80, "passing")

	for _, tc := range []struct {
		name     string
		disabled bool
		want     map[string]string
	}{
		{"enabled", false, map[string]string{
			"pay":               "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/pay pay.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul",
			"web-sidecar-proxy": "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul",
			"web":               " ",
		}},
		{"disabled", true, map[string]string{"pay": " ", "web-sidecar-proxy": " ", "web": " "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeConsul(t, "dc1")
			f.mu.Lock()
			f.connectDisabled = tc.disabled
			f.mu.Unlock()
			f.set("dc1", "pay", native)
			f.set("dc1", "web-sidecar-proxy", proxy)
			f.set("dc1", "web", plain)
			x := start(t, f.addr(), "")
			c, _ := x.nextHandOver(t)
			got := map[string]string{}
			for _, g := range c.Groups {
				ep := g.Services[0].Endpoints[0]
				got[strings.TrimPrefix(g.Key, "dc1/")] = ep.Identity.Name + " " + ep.Identity.ServerName
				if ep.Identity.Name != "" && ep.Identity.Kind != discovery.IdentitySPIFFE {
					t.Errorf("%s: identity kind %v", g.Key, ep.Identity.Kind)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("identities:\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestOneRefusedServiceDoesNotHoldBackTheRest(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"))
	f.set("dc1", "odd", inst("n1", "10.0.0.1", "odd-1", 80, "passing"))
	f.failHealth("odd", http.StatusBadRequest)
	x := start(t, f.addr(), "")
	c, before := x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{
		"dc1/odd": {},
		"dc1/web": {"web.service.dc1.consul=10.0.0.1:80(passing)"},
	})
	failed := false
	for _, b := range before {
		failed = failed || b.Op == "failed" && strings.Contains(b.Err.Error(), "odd")
	}
	if !failed {
		t.Errorf("the refused service was not reported: %v", before)
	}
}

func TestFiltersArePassedAndApplied(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing", "prod"), inst("n2", "10.0.0.2", "web-2", 80, "passing", "canary"))
	f.set("dc1", "web-admin", inst("n1", "10.0.0.1", "web-admin-1", 81, "passing", "prod"))
	f.set("dc1", "api", inst("n1", "10.0.0.1", "api-1", 82, "passing", "prod"))
	f.set("dc1", "db", inst("n1", "10.0.0.1", "db-1", 83, "passing"))
	x := start(t, f.addr(), `services: ["web*", db]
tags: [prod]
filter: 'ServiceMeta.team == "a"'
instance_filter: 'Service.Meta.v != "1"'
naming: {tag_subsets: []}
`)
	c, _ := x.nextHandOver(t)
	// db lacks the tag, api the name; web keeps only its prod instance.
	expect(t, c, "replace", map[string][]string{
		"dc1/web":       {"web.service.dc1.consul=10.0.0.1:80(passing)"},
		"dc1/web-admin": {"web-admin.service.dc1.consul=10.0.0.1:81(passing)"},
	})
	if got := f.filterSeen("/v1/catalog/services"); got != `ServiceMeta.team == "a"` {
		t.Errorf("catalog filter sent: %q", got)
	}
	if got := f.filterSeen("/v1/health/service/web"); got != `Service.Meta.v != "1"` {
		t.Errorf("instance filter sent: %q", got)
	}
}

func TestACLFilteredListWarns(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.mu.Lock()
	f.aclFiltered = true
	f.mu.Unlock()
	x := start(t, f.addr(), "")
	c, _ := x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{})
	eventually(t, "an ACL warning", func() bool { return strings.Contains(x.logs.String(), "ACLs") })
}

func TestUnreachableAgentFailsUntilStopped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	x := start(t, addr, "")
	for range 3 {
		if c := x.next(t); c.Op != "failed" {
			t.Fatalf("got %v, want failed", c)
		}
	}
	x.stop()
	select {
	case c := <-x.sink.Calls:
		if c.Op != "failed" {
			t.Fatalf("after stop: %v", c)
		}
	default:
	}
}

func TestNextIndex(t *testing.T) {
	for _, tc := range []struct{ prev, got, want uint64 }{
		{0, 7, 7},
		{7, 9, 9},
		{9, 9, 9},
		{9, 3, 0}, // backwards: read from scratch
		{0, 0, 1}, // never block on 0
		{5, 0, 0},
	} {
		if got := nextIndex(tc.prev, tc.got); got != tc.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tc.prev, tc.got, got, tc.want)
		}
	}
}

func TestUnixSocketAddress(t *testing.T) {
	f := newFakeConsul(t, "dc1")
	f.set("dc1", "web", inst("n1", "10.0.0.1", "web-1", 80, "passing"))
	sock := filepath.Join(t.TempDir(), "consul.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f.srv.Config.Handler}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	x := start(t, "unix://"+sock, "")
	c, _ := x.nextHandOver(t)
	expect(t, c, "replace", map[string][]string{"dc1/web": {"web.service.dc1.consul=10.0.0.1:80(passing)"}})
	x.stop() // before the server closes, so Run ends on its own terms
}
