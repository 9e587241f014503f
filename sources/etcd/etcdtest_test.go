package etcd

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

// waitFor bounds every wait: a hang guard, never a latency claim.
const waitFor = 15 * time.Second

// testEtcd is an embedded etcd member on loopback ports, which a test can
// stop and start again with the same data.
type testEtcd struct {
	t      testing.TB
	dir    string
	client url.URL
	peer   url.URL
	mu     sync.Mutex
	e      *embed.Etcd
}

func freeLoopback(t testing.TB) url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return url.URL{Scheme: "http", Host: ln.Addr().String()}
}

func startEtcd(t testing.TB) *testEtcd {
	t.Helper()
	te := &testEtcd{t: t, dir: t.TempDir(), client: freeLoopback(t), peer: freeLoopback(t)}
	te.start()
	t.Cleanup(te.stop)
	return te
}

func (te *testEtcd) start() {
	te.t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = te.dir
	cfg.ListenClientUrls = []url.URL{te.client}
	cfg.AdvertiseClientUrls = []url.URL{te.client}
	cfg.ListenPeerUrls = []url.URL{te.peer}
	cfg.AdvertisePeerUrls = []url.URL{te.peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		te.t.Fatal(err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(waitFor):
		e.Close()
		te.t.Fatal("embedded etcd did not become ready")
	}
	te.mu.Lock()
	te.e = e
	te.mu.Unlock()
}

func (te *testEtcd) stop() {
	te.mu.Lock()
	e := te.e
	te.e = nil
	te.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

func (te *testEtcd) endpoint() string { return te.client.Host }

// newClient is a client for the test's own writes.
func (te *testEtcd) newClient() *clientv3.Client {
	te.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{te.endpoint()}, Logger: zap.NewNop(), DialTimeout: waitFor})
	if err != nil {
		te.t.Fatal(err)
	}
	te.t.Cleanup(func() { cli.Close() })
	return cli
}

// running is a Source in its own goroutine, recording into a sink.
type running struct {
	sink   *sinktest.Sink
	cancel func()
}

func runSource(t testing.TB, s discovery.Source) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sink := sinktest.New(10000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx, sink)
	}()
	r := &running{sink: sink}
	r.cancel = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("Run did not return after cancellation")
		}
	}
	t.Cleanup(r.cancel)
	return r
}

// next returns the next call whose op is one of ops, skipping the others
// (healthy, and failed unless asked for).
func (r *running) next(t testing.TB, ops ...string) sinktest.Call {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case c := <-r.sink.Calls:
			for _, op := range ops {
				if c.Op == op {
					return c
				}
			}
		case <-deadline:
			t.Fatalf("no %v call within %s", ops, waitFor)
		}
	}
}

// none fails if a call of one of ops is waiting.
func (r *running) none(t testing.TB, ops ...string) {
	t.Helper()
	for {
		select {
		case c := <-r.sink.Calls:
			for _, op := range ops {
				if c.Op == op {
					t.Fatalf("unexpected %v", c)
				}
			}
		default:
			return
		}
	}
}

// render lists a call's groups as "key authority addr,addr…" lines.
func render(gs []discovery.Group) []string {
	var out []string
	for _, g := range gs {
		line := g.Key
		for _, s := range g.Services {
			line += " " + s.Authority.String()
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

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// parseYAML returns the mapping node of a document.
func parseYAML(t testing.TB, s string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}

// cutProxy forwards TCP to etcd until cut: then it drops every connection
// and refuses new ones, as a network partition would, until restored. It
// makes etcd unreachable for a source while the test still writes to it.
type cutProxy struct {
	t      testing.TB
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	t.Helper()
	p := &cutProxy{t: t, target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *cutProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			p.wg.Go(func() { pipe(up, c) })
			p.wg.Go(func() { pipe(c, up) })
		}
	})
}

// cut drops every connection and stops accepting.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// restore accepts again on the same address.
func (p *cutProxy) restore() {
	p.t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.serve(ln)
}
