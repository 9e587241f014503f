package etcd

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"go.uber.org/goleak"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
	"github.com/tributary-mesh/tributary/sources/etcd/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The embedded server's process-wide helpers, started once.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/schedule.(*fifo).run"),
	)
}

func newTestSource(t testing.TB, te *etcdtest.Etcd, mutate func(*Config)) *Source {
	t.Helper()
	cfg := Config{
		ClientConfig: ClientConfig{
			Endpoints:     []string{te.Endpoint()},
			Timeout:       discovery.Duration(500 * time.Millisecond),
			CheckInterval: discovery.Duration(50 * time.Millisecond),
		},
		Prefix: "services/",
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := NewSource(cfg, discovery.BuildContext{Name: "etcd", Logger: slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tlog writes a source's log to the test's.
type tlog struct{ t testing.TB }

func (l tlog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// manager writes in the naming format, as a gRPC service would.
func manager(t testing.TB, cli *clientv3.Client, target string) endpoints.Manager {
	t.Helper()
	m, err := endpoints.NewManager(cli, target)
	if err != nil {
		t.Fatal(err)
	}
	return m
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

func TestFollowsPutsAndDeletes(t *testing.T) {
	te := etcdtest.Start(t)
	cli := te.NewClient()
	ctx := context.Background()
	web := manager(t, cli, "services/web")
	api := manager(t, cli, "services/prod/api")
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.1:8080", endpoints.Endpoint{Addr: "10.0.0.1:8080",
		Metadata: map[string]any{"zone": "z1", "weight": 5, "labels": map[string]string{"rack": "r1"},
			"identity": "spiffe://example.org/web", "server_name": "web.example.org", "protocol": "h2"}}), "add")
	mustf(t, api.AddEndpoint(ctx, "services/prod/api/10.0.1.1:9000", endpoints.Endpoint{Addr: "10.0.1.1:9000"}), "add")
	// Not in the format: no target, a value that is not JSON, a host name.
	_, err := cli.Put(ctx, "services/stray", "x")
	mustf(t, err, "put")
	_, err = cli.Put(ctx, "services/web/garbage", "{not json")
	mustf(t, err, "put")
	mustf(t, web.AddEndpoint(ctx, "services/web/web-3:8080", endpoints.Endpoint{Addr: "web-3:8080"}), "add")

	r := sinktest.Run(t, newTestSource(t, te, nil), waitFor)
	first := r.Next(t, "replace")
	checkGroups(t, first, "prod/api api.prod 10.0.1.1:9000", "web web 10.0.0.1:8080")
	e := first.Groups[1].Services[0].Endpoints[0]
	if e.Zone != "z1" || e.Weight != 5 || e.Labels["rack"] != "r1" || e.Protocol != discovery.ProtocolH2 ||
		e.Identity != (discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://example.org/web", ServerName: "web.example.org"}) {
		t.Fatalf("metadata not carried over: %+v", e)
	}

	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.2:8080", endpoints.Endpoint{Addr: "10.0.0.2:8080"}), "add")
	checkGroups(t, r.Next(t, "update"), "web web 10.0.0.1:8080,10.0.0.2:8080")

	// One transaction touching two targets is one Update.
	mustf(t, web.Update(ctx, []*endpoints.UpdateWithOpts{endpoints.NewDeleteUpdateOpts("services/web/10.0.0.1:8080")}), "delete")
	checkGroups(t, r.Next(t, "update"), "web web 10.0.0.2:8080")
	_, err = cli.Txn(ctx).Then(
		clientv3.OpDelete("services/prod/api/10.0.1.1:9000"),
		clientv3.OpPut("services/web/10.0.0.3:8080", `{"Op":0,"Addr":"10.0.0.3:8080","Metadata":null}`),
	).Commit()
	mustf(t, err, "txn")
	checkGroups(t, r.Next(t, "update"), "prod/api", "web web 10.0.0.2:8080,10.0.0.3:8080")

	// An address written under two keys is served once.
	mustf(t, web.AddEndpoint(ctx, "services/web/dup", endpoints.Endpoint{Addr: "10.0.0.3:8080"}), "add")
	checkGroups(t, r.Next(t, "update"), "web web 10.0.0.2:8080,10.0.0.3:8080")
	r.None(t, "failed")
}

func TestNaming(t *testing.T) {
	te := etcdtest.Start(t)
	cli := te.NewClient()
	ctx := context.Background()
	for _, kv := range [][2]string{
		{"svc/a/10.0.0.1:80", "10.0.0.1:80"},
		{"svc/team/b/10.0.0.2:80", "10.0.0.2:80"},
		{"svc/pay/10.0.0.3:443", "10.0.0.3:443"},
		{"svc/Bad Name/10.0.0.4:80", "10.0.0.4:80"},
	} {
		_, err := cli.Put(ctx, kv[0], `{"Addr":"`+kv[1]+`"}`)
		mustf(t, err, "put")
	}
	s := newTestSource(t, te, func(c *Config) {
		c.Prefix = "svc"
		c.Naming = Naming{Domain: "etcd.internal.", Port: 8080, Targets: map[string]string{"pay": "payments.internal:9000"}}
	})
	r := sinktest.Run(t, s, waitFor)
	checkGroups(t, r.Next(t, "replace"),
		"a a.etcd.internal:8080 10.0.0.1:80",
		"pay payments.internal:9000 10.0.0.3:443",
		"team/b b.team.etcd.internal:8080 10.0.0.2:80")
}

// TestCompactionRelists holds the watch back after the first listing,
// changes and compacts under it, and checks that the source lists again
// rather than resume: one Replace with the newest state, no Update.
func TestCompactionRelists(t *testing.T) {
	te := etcdtest.Start(t)
	cli := te.NewClient()
	ctx := context.Background()
	web := manager(t, cli, "services/web")
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.1:8080", endpoints.Endpoint{Addr: "10.0.0.1:8080"}), "add")

	s := newTestSource(t, te, nil)
	held, release := make(chan int64, 1), make(chan struct{})
	listings := 0
	s.beforeWatch = func(rev int64) {
		listings++
		if listings == 1 {
			held <- rev
			<-release
		}
	}
	r := sinktest.Run(t, s, waitFor)
	checkGroups(t, r.Next(t, "replace"), "web web 10.0.0.1:8080")
	var rev int64
	select {
	case rev = <-held:
	case <-time.After(waitFor):
		t.Fatal("the watch was not held")
	}
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.2:8080", endpoints.Endpoint{Addr: "10.0.0.2:8080"}), "add")
	mustf(t, web.DeleteEndpoint(ctx, "services/web/10.0.0.1:8080"), "delete")
	resp, err := cli.Put(ctx, "unrelated", "x")
	mustf(t, err, "put")
	if resp.Header.Revision <= rev+1 {
		t.Fatalf("revision %d did not move past %d", resp.Header.Revision, rev+1)
	}
	_, err = cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
	mustf(t, err, "compact")
	close(release)

	c := r.Next(t, "replace", "update")
	if c.Op != "replace" {
		t.Fatalf("after a compaction the source resumed (%v) instead of listing again", c)
	}
	checkGroups(t, c, "web web 10.0.0.2:8080")
	// And it watches again from the new listing.
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.3:8080", endpoints.Endpoint{Addr: "10.0.0.3:8080"}), "add")
	checkGroups(t, r.Next(t, "update", "replace"), "web web 10.0.0.2:8080,10.0.0.3:8080")
	r.None(t, "failed")
	if listings != 2 {
		t.Fatalf("%d listings, want 2", listings)
	}
}

// TestPartition cuts a watching source off etcd: it reports the failure
// and hands over nothing (the last state stays, stale). Meanwhile etcd
// changes and compacts its history; when the source reaches etcd again it
// lists again, and hands over exactly the state etcd has then.
func TestPartition(t *testing.T) {
	te := etcdtest.Start(t)
	cli := te.NewClient()
	ctx := context.Background()
	web := manager(t, cli, "services/web")
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.1:8080", endpoints.Endpoint{Addr: "10.0.0.1:8080"}), "add")
	api := manager(t, cli, "services/api")
	mustf(t, api.AddEndpoint(ctx, "services/api/10.0.1.1:8080", endpoints.Endpoint{Addr: "10.0.1.1:8080"}), "add")

	p := etcdtest.NewCutProxy(t, te.Endpoint())
	r := sinktest.Run(t, newTestSource(t, te, func(c *Config) { c.Endpoints = []string{p.Addr} }), waitFor)
	checkGroups(t, r.Next(t, "replace"), "api api 10.0.1.1:8080", "web web 10.0.0.1:8080")

	p.Cut()
	if c := r.Next(t, "failed", "update", "replace"); c.Op != "failed" {
		t.Fatalf("cut off etcd: got %v, want failed", c)
	}
	// While the source cannot see it: a change, a withdrawal, a compaction.
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.2:8080", endpoints.Endpoint{Addr: "10.0.0.2:8080"}), "add")
	mustf(t, api.DeleteEndpoint(ctx, "services/api/10.0.1.1:8080"), "delete")
	resp, err := cli.Get(ctx, "x")
	mustf(t, err, "get")
	_, err = cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
	mustf(t, err, "compact")
	r.None(t, "update", "replace")

	p.Restore()
	c := r.Next(t, "update", "replace")
	if c.Op != "replace" {
		t.Fatalf("etcd reachable again: got %v, want a new listing", c)
	}
	checkGroups(t, c, "web web 10.0.0.1:8080,10.0.0.2:8080")
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.3:8080", endpoints.Endpoint{Addr: "10.0.0.3:8080"}), "add")
	checkGroups(t, r.Next(t, "update", "replace"), "web web 10.0.0.1:8080,10.0.0.2:8080,10.0.0.3:8080")
}

// TestRestart stops etcd itself under a watching source and starts it
// again on the same data: failed and stale meanwhile, then a new listing,
// then changes followed again. (Stopping embedded etcd takes some seconds:
// it lets open watches drain.)
func TestRestart(t *testing.T) {
	te := etcdtest.Start(t)
	cli := te.NewClient()
	ctx := context.Background()
	web := manager(t, cli, "services/web")
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.1:8080", endpoints.Endpoint{Addr: "10.0.0.1:8080"}), "add")

	r := sinktest.Run(t, newTestSource(t, te, nil), waitFor)
	checkGroups(t, r.Next(t, "replace"), "web web 10.0.0.1:8080")

	te.Stop()
	if c := r.Next(t, "failed", "update", "replace"); c.Op != "failed" {
		t.Fatalf("etcd stopped: got %v, want failed", c)
	}
	te.Start()
	c := r.Next(t, "update", "replace")
	if c.Op != "replace" {
		t.Fatalf("etcd back: got %v, want a new listing", c)
	}
	checkGroups(t, c, "web web 10.0.0.1:8080")
	mustf(t, web.AddEndpoint(ctx, "services/web/10.0.0.2:8080", endpoints.Endpoint{Addr: "10.0.0.2:8080"}), "add")
	checkGroups(t, r.Next(t, "update", "replace"), "web web 10.0.0.1:8080,10.0.0.2:8080")
}

// TestUnreachableAtStart: etcd is not there when the source starts. It
// reports the failure, hands over nothing (so it is not synced), and
// lists once etcd comes.
func TestUnreachableAtStart(t *testing.T) {
	te := etcdtest.Start(t)
	te.Stop()
	r := sinktest.Run(t, newTestSource(t, te, nil), waitFor)
	if c := r.Next(t, "failed", "update", "replace"); c.Op != "failed" {
		t.Fatalf("got %v, want failed", c)
	}
	te.Start()
	checkGroups(t, r.Next(t, "replace", "update"))
}

func TestDecodeEndpoint(t *testing.T) {
	for _, tc := range []struct {
		value, err string
	}{
		{`{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}`, ""},
		{`{"Addr":"[2001:db8::1]:80"}`, ""},
		{`{"Addr":"::ffff:10.0.0.1:80"}`, "not an IP address with a port"},
		{`{"Addr":"[::ffff:10.0.0.1]:80","Metadata":"free text is ignored"}`, ""},
		{`{"Op":1,"Addr":"10.0.0.1:80"}`, "Op 1"},
		{`{"Addr":"10.0.0.1"}`, "not an IP address with a port"},
		{`{"Addr":"10.0.0.1:0"}`, "not an IP address with a port"},
		{`{"Addr":"[fe80::1%eth0]:80"}`, "not an IP address with a port"},
		{`{"Addr":"web:80"}`, "not an IP address with a port"},
		{`[]`, "not an endpoints.Endpoint"},
		{`{"Addr":"10.0.0.1:80","Metadata":{"weight":0}}`, "weight 0"},
		{`{"Addr":"10.0.0.1:80","Metadata":{"weight":1.5}}`, "weight 1.5"},
		{`{"Addr":"10.0.0.1:80","Metadata":{"labels":{"zone":"x"}}}`, `label "zone"`},
		{`{"Addr":"10.0.0.1:80","Metadata":{"labels":{"a":1}}}`, "metadata"},
		{`{"Addr":"10.0.0.1:80","Metadata":{"identity":"spiffe://td/x"}}`, "server_name"},
		{`{"Addr":"10.0.0.1:80","Metadata":{"protocol":"udp"}}`, "protocol"},
	} {
		e, err := decodeEndpoint([]byte(tc.value))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.value, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one saying %q", tc.value, err, tc.err)
		case err == nil && (!e.Addr.IsValid() || e.Addr.Addr().Is4In6()):
			t.Errorf("%s: address %v", tc.value, e.Addr)
		}
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		yaml, err string
	}{
		{"endpoints: [127.0.0.1:2379]\nprefix: services/\n", ""},
		{"endpoints: [https://127.0.0.1:2379]\nprefix: s/\nnaming: {domain: etcd.internal, port: 80, targets: {a/b: ab.internal:90}}\n", ""},
		{"prefix: s/\n", "endpoints: required"},
		{"endpoints: [127.0.0.1:2379]\n", "prefix: required"},
		{"endpoints: [127.0.0.1:2379]\nprefix: s/\nusername: u\n", "username and password go together"},
		{"endpoints: [127.0.0.1:2379]\nprefix: s/\nnaming: {targets: {a: 'bad host:1'}}\n", "naming.targets.a"},
		{"endpoints: [127.0.0.1:2379]\nprefix: s/\nnaming: {domain: 'a b'}\n", "naming.domain"},
		{"endpoints: [127.0.0.1:2379]\nprefix: s/\ntls: {cert_file: c.pem}\n", "cert_file and key_file go together"},
		{"endpoints: [127.0.0.1:2379]\nprefix: s/\ntls: {ca_file: /nonexistent.pem}\n", "ca_file"},
		{"endpoints: [http://127.0.0.1:2379]\nprefix: s/\ntls: {}\n", "says http://"},
		{"endpoints: [127.0.0.1:2379]\nprefix: s/\nnamespace: x\n", "namespace"},
	} {
		node := parseYAML(t, tc.yaml)
		_, err := newFromNode(node, discovery.BuildContext{Name: "e", BaseDir: t.TempDir()})
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.yaml, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one saying %q", tc.yaml, err, tc.err)
		}
		var ce *discovery.ConfigError
		if err != nil && !errors.As(err, &ce) {
			t.Errorf("%q: %T is not a ConfigError", tc.yaml, err)
		}
	}
}
