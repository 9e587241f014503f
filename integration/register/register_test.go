//go:build integration

// Package register tests the registration API end to end: the real
// tributary binary with a register source (memory, and etcd on the real
// etcd binary), workloads registering over gRPC and with `tributary
// register`, and Get streams seeing them.
package register

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/integration/etcd"
	"github.com/tributary-mesh/tributary/integration/harness"
	rpb "github.com/tributary-mesh/tributary/proto/tributary/registration/v1"
)

func TestMain(m *testing.M) { harness.Main(m) }

const memorySource = `sources:
  - name: vms
    kind: register
    insecure_networks: [127.0.0.0/8]
`

func etcdSource(addr string) string {
	return fmt.Sprintf(`sources:
  - name: vms
    kind: register
    backend: etcd
    insecure_networks: [127.0.0.0/8]
    etcd:
      endpoints: [%q]
      prefix: /tributary/registrations/
      timeout: 1s
      check_interval: 200ms
`, addr)
}

func client(t *testing.T, s *harness.Server) rpb.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient(s.API, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rpb.NewRegistrationClient(conn)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func web(addr string, ttl time.Duration) *rpb.RegisterRequest {
	host, port, _ := net.SplitHostPort(addr)
	var p uint32
	fmt.Sscan(port, &p)
	return &rpb.RegisterRequest{Endpoint: &rpb.Endpoint{
		Authority: "web.vm.test:8080", Address: host, Port: p, Zone: "zone-a",
		Labels:   map[string]string{"rack": "r1"},
		Identity: "spiffe://example.org/vm/web", ServerName: "web.vm.test",
	}, Ttl: durationpb.New(ttl)}
}

// TestRegisterToStream: a registration reaches Get streams with its
// identity and labels; when its keepalives stop it is withdrawn (within
// the TTL; the test only bounds the wait as a hang guard).
func TestRegisterToStream(t *testing.T) {
	s := harness.Start(t, t.TempDir(), memorySource)
	c := client(t, s)
	ctx := context.Background()
	st := s.Get("web.vm.test:8080")
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	resp, err := c.Register(ctx, web("127.0.0.1:18080", 2*time.Second))
	must(t, err)
	if got := st.Next(); got != "add:127.0.0.1:18080" {
		t.Fatal(got)
	}
	wa := st.Set.Addrs[netip.MustParseAddrPort("127.0.0.1:18080")]
	if id := wa.GetTlsIdentity().GetUriLikeIdentity().GetUri(); id != "spiffe://example.org/vm/web" {
		t.Fatalf("identity %q (%v)", id, wa.GetTlsIdentity())
	}
	if wa.GetMetricLabels()["rack"] != "r1" || wa.GetMetricLabels()["source"] != "vms" {
		t.Fatalf("labels %v", wa.GetMetricLabels())
	}
	// Renewed once, then left to expire.
	ka, err := c.KeepAlive(ctx)
	must(t, err)
	must(t, ka.Send(&rpb.KeepAliveRequest{LeaseId: resp.GetLeaseId()}))
	if r, err := ka.Recv(); err != nil || r.GetUnknown() {
		t.Fatalf("keepalive: %v %v", r, err)
	}
	start := time.Now()
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	t.Logf("withdrawn %v after the last keepalive (TTL 2s)", time.Since(start).Round(10*time.Millisecond))
	must(t, ka.Send(&rpb.KeepAliveRequest{LeaseId: resp.GetLeaseId()}))
	if r, err := ka.Recv(); err != nil || !r.GetUnknown() {
		t.Fatalf("keepalive after expiry: %v %v", r, err)
	}
}

// checked is a local health endpoint whose answer the test flips.
type checked struct {
	URL  string
	fail atomic.Bool
}

func newChecked(t *testing.T) *checked {
	c := &checked{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if c.fail.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c.URL = "http://" + ln.Addr().String() + "/healthz"
	return c
}

// TestRegisterCommand: `tributary register` as a systemd companion would
// run it: registered while its check passes, withdrawn while it fails,
// back when it passes, registered again after the server restarts (the
// memory backend forgot it), deregistered on SIGTERM.
func TestRegisterCommand(t *testing.T) {
	dir := t.TempDir()
	ports := harness.FreePorts(t, 2)
	s := harness.StartAt(t, dir, ports[0], ports[1], memorySource)
	st := s.Get("web.vm.test:8080")
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	chk := newChecked(t)
	out := &harness.SyncBuffer{}
	cmd := exec.Command(harness.Bin, "register", "--addr", s.API, "--authority", "web.vm.test:8080",
		"--address", "127.0.0.1:18081", "--ttl", "3s", "--check", chk.URL, "--check-interval", "100ms", "--label", "rack=r2")
	cmd.Stdout, cmd.Stderr = out, out
	must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("tributary register output:\n%s", out.String())
		}
	})

	if got := st.Next(); got != "add:127.0.0.1:18081" {
		t.Fatal(got)
	}
	chk.fail.Store(true)
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	chk.fail.Store(false)
	if got := st.Next(); got != "add:127.0.0.1:18081" {
		t.Fatal(got)
	}

	// The server restarts and forgets; the command registers again.
	s.Sigterm()
	s2 := harness.StartAt(t, dir, ports[0], ports[1], memorySource)
	st2 := s2.Get("web.vm.test:8080")
	got := st2.Next()
	if got == "none:false" {
		got = st2.Next()
	}
	if got != "add:127.0.0.1:18081" {
		t.Fatal(got)
	}
	if !strings.Contains(out.String(), "registering again") && !strings.Contains(out.String(), "keepalive failed") {
		t.Fatalf("the command did not say it registered again:\n%s", out.String())
	}

	must(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("register exited with %v", err)
		}
	case <-time.After(harness.WaitFor):
		t.Fatal("register did not exit on SIGTERM")
	}
	if got := st2.Next(); got != "none:false" {
		t.Fatal(got)
	}
	if !strings.Contains(out.String(), "deregistered") {
		t.Fatalf("output:\n%s", out.String())
	}
}

// TestReplicas: three replicas on one real etcd. A registration made
// through one appears on the streams of all three; a replica killed with
// SIGKILL leaves the others serving it; etcd stopped → every replica keeps
// its state (stale), and when etcd returns they reconcile, including a
// lease that runs out after the outage.
func TestReplicas(t *testing.T) {
	m := etcd.StartMember(t)
	var reps []*harness.Server
	var streams []*harness.Stream
	for range 3 {
		s := harness.Start(t, t.TempDir(), etcdSource(m.Client))
		reps = append(reps, s)
		st := s.Get("web.vm.test:8080")
		if got := st.Next(); got != "none:false" {
			t.Fatal(got)
		}
		streams = append(streams, st)
	}
	ctx := context.Background()
	kept, err := client(t, reps[0]).Register(ctx, web("127.0.0.1:18082", 30*time.Second))
	must(t, err)
	for i, st := range streams {
		if got := st.Next(); got != "add:127.0.0.1:18082" {
			t.Fatalf("replica %d: %s", i, got)
		}
	}
	// A short lease registered through the second replica.
	_, err = client(t, reps[1]).Register(ctx, web("127.0.0.1:18083", 3*time.Second))
	must(t, err)
	for i, st := range streams {
		if got := st.Next(); got != "add:127.0.0.1:18083" {
			t.Fatalf("replica %d: %s", i, got)
		}
	}

	// Replica 0 dies; the registration it took lives on, renewed through another.
	reps[0].Kill()
	ka, err := client(t, reps[2]).KeepAlive(ctx)
	must(t, err)
	must(t, ka.Send(&rpb.KeepAliveRequest{LeaseId: kept.GetLeaseId()}))
	if r, err := ka.Recv(); err != nil || r.GetUnknown() {
		t.Fatalf("keepalive through another replica: %v %v", r, err)
	}

	// etcd goes away: the others keep serving, stale. (The short lease
	// cannot expire while etcd is down; etcd extends leases when it
	// comes back.)
	m.Stop(syscall.SIGKILL)
	for _, s := range reps[1:] {
		etcd.WaitStale(t, s, true)
	}
	m.Start()
	for _, s := range reps[1:] {
		etcd.WaitStale(t, s, false)
	}
	// Back: the short lease, never renewed, expires and is withdrawn
	// everywhere; the kept one stays.
	for i, st := range streams[1:] {
		if got := st.Next(); got != "remove:127.0.0.1:18083" {
			t.Fatalf("replica %d: %s", i+1, got)
		}
	}
	for i, st := range streams[1:] {
		if len(st.Set.Addrs) != 1 {
			t.Fatalf("replica %d serves %v", i+1, st.Set.Sorted())
		}
	}
}

// TestEtcdLeaseExpiry: with the etcd backend, etcd expires an unrenewed
// lease and every replica withdraws the endpoint. The time from the last
// renewal is logged (etcd checks for expired leases every 500ms), not
// asserted.
func TestEtcdLeaseExpiry(t *testing.T) {
	m := etcd.StartMember(t)
	a := harness.Start(t, t.TempDir(), etcdSource(m.Client))
	b := harness.Start(t, t.TempDir(), etcdSource(m.Client))
	st := b.Get("web.vm.test:8080")
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	ctx := context.Background()
	c := client(t, a)
	resp, err := c.Register(ctx, web("127.0.0.1:18095", 2*time.Second))
	must(t, err)
	if got := st.Next(); got != "add:127.0.0.1:18095" {
		t.Fatal(got)
	}
	ka, err := c.KeepAlive(ctx)
	must(t, err)
	must(t, ka.Send(&rpb.KeepAliveRequest{LeaseId: resp.GetLeaseId()}))
	r, err := ka.Recv()
	if err != nil || r.GetUnknown() {
		t.Fatalf("keepalive: %v %v", r, err)
	}
	last := time.Now()
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	t.Logf("withdrawn on the other replica %v after the last renewal (TTL %v granted)",
		time.Since(last).Round(10*time.Millisecond), r.GetTtl().AsDuration())
}

// TestActiveChecks: a register source with health_check, as any source:
// a registered endpoint that stops accepting connections is evicted from
// the stream while its lease lives on, and comes back when it listens again.
func TestActiveChecks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := ln.Addr().String()
	// panic_threshold 0%: evict even the only endpoint.
	s := harness.Start(t, t.TempDir(), "health:\n  panic_threshold: 0%\n"+memorySource+
		"    health_check: {type: tcp, interval: 100ms, unhealthy_threshold: 2, healthy_threshold: 1, hold_down: 0s}\n")
	st := s.Get("web.vm.test:8080")
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	_, err = client(t, s).Register(context.Background(), web(addr, time.Minute))
	must(t, err)
	if got := st.Next(); got != "add:"+addr {
		t.Fatal(got)
	}
	ln.Close()
	if got := st.Next(); got != "remove:"+addr && got != "none:true" && got != "none:false" {
		t.Fatal(got)
	}
	ln, err = net.Listen("tcp", addr)
	must(t, err)
	defer ln.Close()
	if got := st.Next(); got != "add:"+addr {
		t.Fatal(got)
	}
}
