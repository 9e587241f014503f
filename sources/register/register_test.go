package register

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
	"github.com/tributary-mesh/tributary/sources/etcd"
	"github.com/tributary-mesh/tributary/sources/etcd/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/schedule.(*fifo).run"),
	)
}

const waitFor = etcdtest.WaitFor

// render lists groups as "key addr,addr…" lines.
func render(gs []discovery.Group) []string {
	var out []string
	for _, g := range gs {
		line := g.Key
		for _, s := range g.Services {
			for i, e := range s.Endpoints {
				sep := " "
				if i > 0 {
					sep = ","
				}
				line += sep + e.Addr.String()
			}
		}
		out = append(out, line)
	}
	return out
}

func checkGroups(t testing.TB, c sinktest.Call, want ...string) {
	t.Helper()
	for _, g := range c.Groups {
		sinktest.CheckGroup(t, g)
	}
	if got := render(c.Groups); !slices.Equal(got, want) {
		t.Fatalf("%s handed over\n  %s\nwant\n  %s", c.Op, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func reg(auth, addr string, ttl time.Duration) Registration {
	a, err := discovery.ParseAuthority(auth, 0)
	if err != nil {
		panic(err)
	}
	return Registration{Authority: a, Endpoint: discovery.Endpoint{Addr: netip.MustParseAddrPort(addr)}, TTL: ttl}
}

// clock is a fake time for the memory backend.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func memorySource(t testing.TB, clk *clock) (*Source, *memory) {
	t.Helper()
	s, err := NewSource(Config{}, discovery.BuildContext{Name: "reg"})
	if err != nil {
		t.Fatal(err)
	}
	m := newMemory(clk.Now)
	s.b = m
	return s, m
}

func TestMemoryLeases(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	s, m := memorySource(t, clk)
	ctx := context.Background()
	// Registered before Run: handed over with the first Replace.
	early, err := s.Register(ctx, reg("web.vm:8080", "10.0.0.1:8080", 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r := sinktest.Run(t, s, waitFor)
	checkGroups(t, r.Next(t, "replace"), "web.vm:8080/10.0.0.1:8080 10.0.0.1:8080")

	l2, err := s.Register(ctx, reg("web.vm:8080", "10.0.0.2:8080", 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	checkGroups(t, r.Next(t, "update"), "web.vm:8080/10.0.0.2:8080 10.0.0.2:8080")

	// 6s later the first is renewed, the second is not; 5s more and only
	// the second has expired.
	clk.Add(6 * time.Second)
	if ttl, err := s.KeepAlive(ctx, early.ID); err != nil || ttl != 10*time.Second {
		t.Fatalf("keepalive: %v %v", ttl, err)
	}
	clk.Add(5 * time.Second)
	m.signal()
	checkGroups(t, r.Next(t, "update"), "web.vm:8080/10.0.0.2:8080")
	if _, err := s.KeepAlive(ctx, l2.ID); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("keepalive of an expired lease: %v", err)
	}
	ls, _ := s.List(ctx)
	if len(ls) != 1 || ls[0].ID != early.ID {
		t.Fatalf("list: %+v", ls)
	}

	// Registering the same endpoint again replaces it in place; the old
	// lease is gone.
	again, err := s.Register(ctx, reg("web.vm:8080", "10.0.0.1:8080", 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	checkGroups(t, r.Next(t, "update"), "web.vm:8080/10.0.0.1:8080 10.0.0.1:8080")
	if _, err := s.KeepAlive(ctx, early.ID); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("keepalive of a replaced lease: %v", err)
	}
	if err := s.Deregister(ctx, again.ID); err != nil {
		t.Fatal(err)
	}
	checkGroups(t, r.Next(t, "update"), "web.vm:8080/10.0.0.1:8080")
	if err := s.Deregister(ctx, again.ID); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("second deregister: %v", err)
	}
}

// TestExclusive: an exclusive registration does not replace a live one of
// another caller; a trusted (non-exclusive) one does.
func TestExclusive(t *testing.T) {
	te := etcdtest.Start(t)
	clk := &clock{now: time.Unix(1000, 0)}
	mem, _ := memorySource(t, clk)
	ets := etcdSource(t, te.Endpoint())
	sinktest.Run(t, ets, waitFor).Next(t, "replace")
	for name, s := range map[string]*Source{"memory": mem, "etcd": ets} {
		ctx := context.Background()
		r := reg("web.vm:8080", "10.0.0.1:8080", 10*time.Second)
		r.By, r.Exclusive = "spiffe://ex.org/a", true
		if _, err := s.Register(ctx, r); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := s.Register(ctx, r); err != nil {
			t.Fatalf("%s: the same caller again: %v", name, err)
		}
		r.By = "spiffe://ex.org/b"
		if _, err := s.Register(ctx, r); !errors.Is(err, ErrTaken) || !strings.Contains(err.Error(), "spiffe://ex.org/a") {
			t.Fatalf("%s: another caller: %v", name, err)
		}
		r.By, r.Exclusive = "127.0.0.1", false
		if _, err := s.Register(ctx, r); err != nil {
			t.Fatalf("%s: a trusted caller: %v", name, err)
		}
		if ls, _ := s.List(ctx); len(ls) != 1 || ls[0].By != "127.0.0.1" {
			t.Fatalf("%s: list %+v", name, ls)
		}
	}
}

// TestMemoryRestart: a new memory backend (a restarted replica) knows no
// lease; the client's keepalive says so and it registers again.
func TestMemoryRestart(t *testing.T) {
	clk := &clock{now: time.Unix(1000, 0)}
	s, _ := memorySource(t, clk)
	l, err := s.Register(context.Background(), reg("web.vm:8080", "10.0.0.1:8080", 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	restarted, _ := memorySource(t, clk)
	if _, err := restarted.KeepAlive(context.Background(), l.ID); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("keepalive after a restart: %v", err)
	}
}

// TestMemoryExpiresOnItsOwn uses the real clock: a lease not renewed is
// withdrawn by the run loop's timer, with no other wake-up.
func TestMemoryExpiresOnItsOwn(t *testing.T) {
	s, err := NewSource(Config{}, discovery.BuildContext{Name: "reg"})
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.MinTTL = time.Millisecond
	r := sinktest.Run(t, s, waitFor)
	r.Next(t, "replace")
	if _, err := s.Register(context.Background(), reg("web.vm:8080", "10.0.0.1:8080", 50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	checkGroups(t, r.Next(t, "update"), "web.vm:8080/10.0.0.1:8080 10.0.0.1:8080")
	checkGroups(t, r.Next(t, "update"), "web.vm:8080/10.0.0.1:8080")
}

func TestCheck(t *testing.T) {
	s, err := NewSource(Config{}, discovery.BuildContext{Name: "reg"})
	if err != nil {
		t.Fatal(err)
	}
	ok := reg("web.vm:8080", "10.0.0.1:8080", 10*time.Second)
	long := strings.Repeat("x", 300)
	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many[string(rune('a'+i%26))+strings.Repeat("k", i)] = "v"
	}
	for _, tc := range []struct {
		name string
		edit func(*Registration)
		err  string
	}{
		{"ok", func(*Registration) {}, ""},
		{"no authority", func(r *Registration) { r.Authority = discovery.Authority{} }, "authority is required"},
		{"no port", func(r *Registration) { r.Authority.Port = 0 }, "has no port"},
		{"no address", func(r *Registration) { r.Endpoint.Addr = netip.AddrPort{} }, "address"},
		{"unspecified", func(r *Registration) { r.Endpoint.Addr = netip.MustParseAddrPort("0.0.0.0:80") }, "unicast"},
		{"ttl low", func(r *Registration) { r.TTL = time.Millisecond }, "ttl 1ms is out of range"},
		{"ttl high", func(r *Registration) { r.TTL = time.Hour }, "out of range"},
		{"too many labels", func(r *Registration) { r.Endpoint.Labels = many }, "at most 32"},
		{"long value", func(r *Registration) { r.Endpoint.Labels = map[string]string{"a": long} }, "value longer"},
		{"long key", func(r *Registration) { r.Endpoint.Labels = map[string]string{long: "a"} }, "want 1 to 63 bytes"},
		{"reserved", func(r *Registration) { r.Endpoint.Labels = map[string]string{"zone": "a"} }, "set by Tributary"},
		{"bad key", func(r *Registration) { r.Endpoint.Labels = map[string]string{"a b": "a"} }, "want letters"},
		{"control", func(r *Registration) { r.Endpoint.Labels = map[string]string{"a": "x\ny"} }, "control"},
	} {
		r := ok
		tc.edit(&r)
		err := s.Check(r)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrInvalid)):
			t.Errorf("%s: %v, want ErrInvalid saying %q", tc.name, err, tc.err)
		}
	}
}

func TestPolicy(t *testing.T) {
	p := Policy{
		Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		Allow: []Rule{
			{IDs: []string{"spiffe://ex.org/vm/*"}, Authorities: []string{"*.vm.internal:*"}},
			{IDs: []string{"spiffe://ex.org/ops/**"}, Authorities: []string{"ops.internal:9000"}},
		},
	}
	if !p.InNetworks(netip.MustParseAddr("127.0.0.2")) || !p.InNetworks(netip.MustParseAddr("::ffff:127.0.0.1")) || !p.InNetworks(netip.MustParseAddr("::1")) || p.InNetworks(netip.MustParseAddr("10.0.0.1")) {
		t.Error("networks")
	}
	for _, tc := range []struct {
		id, auth string
		ok       bool
	}{
		{"spiffe://ex.org/vm/web", "web.vm.internal:8080", true},
		{"spiffe://ex.org/vm/web", "web.prod.internal:8080", false},
		{"spiffe://ex.org/vm/web/x", "web.vm.internal:8080", false},
		{"spiffe://ex.org/ops/a/b", "ops.internal:9000", true},
		{"spiffe://ex.org/ops", "ops.internal:9000", false},
		{"spiffe://other.org/vm/web", "web.vm.internal:8080", false},
	} {
		if got := p.AuthorityAllowed(tc.id, tc.auth); got != tc.ok {
			t.Errorf("%s → %s: %v, want %v", tc.id, tc.auth, got, tc.ok)
		}
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct{ yaml, err string }{
		{"{}", ""},
		{"backend: memory\nttl: {min: 2s, max: 1m}\ninsecure_networks: [127.0.0.0/8, '::1']\nallow: [{ids: ['spiffe://ex.org/vm/*'], authorities: ['*.vm:*']}]\n", ""},
		{"backend: etcd\netcd: {endpoints: [127.0.0.1:2379], prefix: /reg}\n", ""},
		{"backend: etcd\n", "etcd: required"},
		{"backend: etcd\netcd: {prefix: /reg}\n", "etcd.endpoints: required"},
		{"etcd: {endpoints: [127.0.0.1:2379]}\n", "backend is memory"},
		{"backend: consul\n", "want memory or etcd"},
		{"ttl: {min: 1m, max: 1s}\n", "below ttl.min"},
		{"insecure_networks: [localhost]\n", "insecure_networks[0]"},
		{"allow: [{ids: ['spiffe://ex.org/a*'], authorities: ['x:1']}]\n", "whole segment"},
		{"allow: [{ids: ['spiffe://ex.org/a'], authorities: ['x']}]\n", "host:port"},
		{"allow: [{ids: ['spiffe://ex.org/a']}]\n", "needs ids and authorities"},
		{"token: x\n", "token"},
	} {
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(tc.yaml), &doc); err != nil {
			t.Fatal(err)
		}
		_, err := newFromNode(doc.Content[0], discovery.BuildContext{Name: "reg"})
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: %v, want an error saying %q", tc.yaml, err, tc.err)
		}
	}
}

// etcdSource is a register source with the etcd backend on te.
func etcdSource(t testing.TB, endpoint string) *Source {
	t.Helper()
	s, err := NewSource(Config{Backend: "etcd", Etcd: &EtcdConfig{ClientConfig: etcd.ClientConfig{
		Endpoints: []string{endpoint}, Timeout: discovery.Duration(time.Second), CheckInterval: discovery.Duration(100 * time.Millisecond),
	}, Prefix: "/reg/"}}, discovery.BuildContext{Name: "reg"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestEtcdReplicas: two sources on one etcd, as two replicas. A
// registration made through one reaches both; a lease not renewed is
// expired by etcd and withdrawn from both; a keepalive through the other
// replica renews it.
func TestEtcdReplicas(t *testing.T) {
	te := etcdtest.Start(t)
	a, b := etcdSource(t, te.Endpoint()), etcdSource(t, te.Endpoint())
	ra, rb := sinktest.Run(t, a, waitFor), sinktest.Run(t, b, waitFor)
	checkGroups(t, ra.Next(t, "replace"))
	checkGroups(t, rb.Next(t, "replace"))
	ctx := context.Background()

	if _, err := a.Register(ctx, reg("web.vm:8080", "10.0.0.1:8080", 0)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ttl 0: %v", err)
	}
	r := reg("web.vm:8080", "10.0.0.1:8080", 2*time.Second)
	r.Endpoint.Labels = map[string]string{"rack": "r1"}
	r.Endpoint.Identity = discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://ex.org/vm/web", ServerName: "web.vm"}
	r.By = "spiffe://ex.org/vm/web"
	l, err := a.Register(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	for _, run := range []*sinktest.Running{ra, rb} {
		c := run.Next(t, "update")
		checkGroups(t, c, "web.vm:8080/10.0.0.1:8080 10.0.0.1:8080")
		if e := c.Groups[0].Services[0].Endpoints[0]; e.Labels["rack"] != "r1" || e.Identity != r.Endpoint.Identity {
			t.Fatalf("endpoint %+v", e)
		}
	}
	if ttl, err := b.KeepAlive(ctx, l.ID); err != nil || ttl <= 0 {
		t.Fatalf("keepalive through the other replica: %v %v", ttl, err)
	}
	ls, err := b.List(ctx)
	if err != nil || len(ls) != 1 || ls[0].ID != l.ID || ls[0].By != r.By {
		t.Fatalf("list: %+v %v", ls, err)
	}
	if got, err := b.Lease(ctx, l.ID); err != nil || got.By != r.By || got.Key() != r.Key() {
		t.Fatalf("lease: %+v %v", got, err)
	}
	if _, err := b.Lease(ctx, "7fffffff"); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("unknown lease: %v", err)
	}
	// Not renewed any more: etcd expires the lease; both withdraw it.
	for _, run := range []*sinktest.Running{ra, rb} {
		checkGroups(t, run.Next(t, "update"), "web.vm:8080/10.0.0.1:8080")
	}
	if _, err := a.KeepAlive(ctx, l.ID); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("keepalive of an expired lease: %v", err)
	}

	// Register, re-register (new lease, same key), deregister.
	l1, err := a.Register(ctx, reg("api.vm:9000", "10.0.0.2:9000", 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	checkGroups(t, rb.Next(t, "update"), "api.vm:9000/10.0.0.2:9000 10.0.0.2:9000")
	l2, err := b.Register(ctx, reg("api.vm:9000", "10.0.0.2:9000", 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	checkGroups(t, rb.Next(t, "update"), "api.vm:9000/10.0.0.2:9000 10.0.0.2:9000")
	if err := a.Deregister(ctx, l1.ID); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("the replaced lease was not revoked: %v", err)
	}
	if err := a.Deregister(ctx, l2.ID); err != nil {
		t.Fatal(err)
	}
	checkGroups(t, rb.Next(t, "update"), "api.vm:9000/10.0.0.2:9000")
	// The first replica saw the same, in the same order.
	checkGroups(t, ra.Next(t, "update"), "api.vm:9000/10.0.0.2:9000 10.0.0.2:9000")
	checkGroups(t, ra.Next(t, "update"), "api.vm:9000/10.0.0.2:9000 10.0.0.2:9000")
	checkGroups(t, ra.Next(t, "update"), "api.vm:9000/10.0.0.2:9000")
}
