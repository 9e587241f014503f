// Package etcdtest runs an embedded etcd member for tests (etcd's own
// server, v3.7.3, in the test process on loopback ports) and a TCP proxy
// that can cut clients off it. Only tests import it.
package etcdtest

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// WaitFor bounds every wait: a hang guard, never a latency claim.
const WaitFor = 15 * time.Second

const waitFor = WaitFor

// Etcd is an embedded etcd member on loopback ports, which a test can
// stop and start again with the same data.
type Etcd struct {
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

// Start starts a member on free loopback ports; it stops with the test.
func Start(t testing.TB) *Etcd {
	t.Helper()
	te := &Etcd{t: t, dir: t.TempDir(), client: freeLoopback(t), peer: freeLoopback(t)}
	te.Start()
	t.Cleanup(te.Stop)
	return te
}

// Start starts the member (again, on the same data and ports).
func (te *Etcd) Start() {
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

// Stop stops the member; open watches get some seconds to drain.
func (te *Etcd) Stop() {
	te.mu.Lock()
	e := te.e
	te.e = nil
	te.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Endpoint is the client address, 127.0.0.1:port.
func (te *Etcd) Endpoint() string { return te.client.Host }

// NewClient is a client for the test's own writes; it closes with the test.
func (te *Etcd) NewClient() *clientv3.Client {
	te.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{te.Endpoint()}, Logger: zap.NewNop(), DialTimeout: waitFor})
	if err != nil {
		te.t.Fatal(err)
	}
	te.t.Cleanup(func() { cli.Close() })
	return cli
}

// CutProxy forwards TCP to etcd until cut: then it drops every connection
// and refuses new ones, as a network partition would, until restored. It
// makes etcd unreachable for a source while the test still writes to it.
type CutProxy struct {
	t      testing.TB
	Addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

// NewCutProxy listens on a free loopback port; it stops with the test.
func NewCutProxy(t testing.TB, target string) *CutProxy {
	t.Helper()
	p := &CutProxy{t: t, target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.Addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() { p.Cut(); p.wg.Wait() })
	return p
}

func (p *CutProxy) serve(ln net.Listener) {
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

// Cut drops every connection and stops accepting.
func (p *CutProxy) Cut() {
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

// Restore accepts again on the same address.
func (p *CutProxy) Restore() {
	p.t.Helper()
	ln, err := net.Listen("tcp", p.Addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.serve(ln)
}
