//go:build integration

// Package xds proves Tributary's xDS edge with clients nobody here wrote:
// grpc-go's own xDS resolver and balancers (google.golang.org/grpc/xds),
// dialling xds:///web.demo:8080 against real gRPC backends that this test
// starts on loopback, and go-control-plane's generated client types over a
// raw ADS stream for the protocol's corner cases. Every test runs the real
// `tributary serve` with a file source and `xds.listen`.
package xds

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// webAuthority is the service every client test dials: Listener,
// RouteConfiguration, Cluster and ClusterLoadAssignment are all named by it.
const webAuthority = "web.demo:8080"

// endpointSpec is one endpoint of a services file.
type endpointSpec struct {
	addr string
	zone string
}

// servicesFile renders a services file with one service per authority.
func servicesFile(svcs map[string][]endpointSpec) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for auth, eps := range svcs {
		host, port, _ := strings.Cut(auth, ":")
		fmt.Fprintf(&b, "  - name: %s\n    port: %s\n", host, port)
		if len(eps) == 0 {
			b.WriteString("    endpoints: []\n")
			continue
		}
		b.WriteString("    endpoints:\n")
		for _, e := range eps {
			fmt.Fprintf(&b, "      - address: %q\n", e.addr)
			if e.zone != "" {
				fmt.Fprintf(&b, "        zone: %s\n", e.zone)
			}
		}
	}
	return b.String()
}

// tributary is a running server with its services file and xDS address.
type tributary struct {
	*harness.Server
	XDS      string
	file     string
	dir      string
	extraCfg string
	xdsKeys  string
}

// config is the sources part of the server's config (the harness adds the
// server section): one file source, applied at once (settle 0s would skip
// the re-read that guards against half-written files, so keep a short one),
// never holding a sharp shrink, plus extra (e.g. a health_check block
// indented as a source key).
func sourcesConfig(xdsAddr, extra string) string {
	return xdsSourcesConfig(xdsAddr, "", extra)
}

// xdsSourcesConfig is sourcesConfig with more keys of the xds: section
// (YAML indented by two spaces).
func xdsSourcesConfig(xdsAddr, xdsKeys, extra string) string {
	return fmt.Sprintf(`xds:
  listen: %s
%ssources:
  - name: local
    kind: file
    paths: ["services/*.yaml"]
    settle: 50ms
    withdraw_confirm: 0s
%s`, xdsAddr, xdsKeys, extra)
}

// startTributary writes the services file and starts the server with xDS
// on a free port. extra is appended to the file source's keys.
func startTributary(t *testing.T, svcs map[string][]endpointSpec, extra string) *tributary {
	t.Helper()
	return startTributaryXDS(t, svcs, "", extra)
}

// startTributaryXDS is startTributary with more keys of the xds: section.
func startTributaryXDS(t *testing.T, svcs map[string][]endpointSpec, xdsKeys, extra string) *tributary {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "services"), 0o755); err != nil {
		t.Fatal(err)
	}
	tr := &tributary{dir: dir, file: filepath.Join(dir, "services", "demo.yaml"), extraCfg: extra, xdsKeys: xdsKeys}
	harness.WriteAtomic(t, tr.file, servicesFile(svcs))
	p := harness.FreePorts(t, 3)
	tr.XDS = p[2]
	tr.Server = harness.StartAt(t, dir, p[0], p[1], xdsSourcesConfig(tr.XDS, xdsKeys, extra))
	waitListening(t, tr.XDS)
	return tr
}

// restart starts a new server at the same addresses, on the same folder;
// the previous one must have exited.
func (tr *tributary) restart(t *testing.T) {
	t.Helper()
	tr.Server = harness.StartAt(t, tr.dir, tr.API, tr.Admin, xdsSourcesConfig(tr.XDS, tr.xdsKeys, tr.extraCfg))
	waitListening(t, tr.XDS)
}

// write replaces the services file (atomically) and returns when it did.
func (tr *tributary) write(t *testing.T, svcs map[string][]endpointSpec) time.Time {
	t.Helper()
	harness.WriteAtomic(t, tr.file, servicesFile(svcs))
	return time.Now()
}

// waitListening waits until addr accepts TCP connections: /readyz says the
// registry is ready, not that every listener is up.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("xDS port %s never accepted a connection: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// backend is a real gRPC server (grpc-go's interop TestService) that
// answers every UnaryCall with its own id.
type backend struct {
	testgrpc.UnimplementedTestServiceServer
	id   string
	Addr string
	lis  net.Listener
	srv  *grpc.Server
	hits atomic.Int64
}

func startBackend(t *testing.T, id string) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{id: id, Addr: lis.Addr().String(), lis: lis, srv: grpc.NewServer()}
	testgrpc.RegisterTestServiceServer(b.srv, b)
	done := make(chan struct{})
	go func() { defer close(done); _ = b.srv.Serve(lis) }()
	t.Cleanup(func() { b.srv.Stop(); <-done })
	return b
}

func (b *backend) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	b.hits.Add(1)
	return &testgrpc.SimpleResponse{ServerId: b.id}, nil
}

// closeListener stops accepting new connections; connections already open
// keep being served, so a client that still sends to this backend after
// this is following a stale endpoint list, not a dead socket.
func (b *backend) closeListener() { b.lis.Close() }

func (b *backend) spec(zone string) endpointSpec { return endpointSpec{addr: b.Addr, zone: zone} }

// bootstrap is a grpc-go xDS bootstrap naming Tributary as the only xDS
// server and this client's node, in zone.
func bootstrap(xdsAddr, nodeID, zone string) []byte {
	return fmt.Appendf(nil, `{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": %q, "cluster": "xds-test", "locality": {"zone": %q}}
}`, xdsAddr, nodeID, zone)
}

// xdsClient is a grpc-go client dialling xds:///target with its own xDS
// bootstrap (in process: no GRPC_XDS_BOOTSTRAP, so tests run in parallel).
type xdsClient struct {
	cc     *grpc.ClientConn
	client testgrpc.TestServiceClient
}

func dialXDS(t *testing.T, xdsAddr, zone, target string) *xdsClient {
	t.Helper()
	return dialXDSBootstrap(t, bootstrap(xdsAddr, "grpc-"+t.Name(), zone), target)
}

// dialXDSBootstrap is dialXDS with a bootstrap of the test's own.
func dialXDSBootstrap(t *testing.T, bootstrapJSON []byte, target string) *xdsClient {
	t.Helper()
	builder, err := xds.NewXDSResolverWithConfigForTesting(bootstrapJSON)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(builder))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return &xdsClient{cc: cc, client: testgrpc.NewTestServiceClient(cc)}
}

// call makes one UnaryCall and returns the id of the backend that answered.
func (c *xdsClient) call(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := c.client.UnaryCall(ctx, &testgrpc.SimpleRequest{FillServerId: true})
	if err != nil {
		return "", err
	}
	return r.GetServerId(), nil
}

// spread makes n calls and counts the answers per backend id; it fails the
// test on an RPC error.
func (c *xdsClient) spread(t *testing.T, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		id, err := c.call(context.Background())
		if err != nil {
			t.Fatalf("RPC over xds:///: %v (%v)", err, status.Code(err))
		}
		got[id]++
	}
	return got
}

// waitFirstRPC waits until the channel has resolved through Tributary's
// LDS/RDS/CDS/EDS and a call succeeds.
func (c *xdsClient) waitFirstRPC(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		_, err := c.call(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no RPC over xds:/// succeeded within %v: %v", harness.WaitFor, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// callLog records every call made by a load loop: when it completed and
// which backend answered.
type callLog struct {
	mu    sync.Mutex
	calls []callRecord
	errs  int
}

type callRecord struct {
	at time.Time
	id string
}

// load calls in a loop (one call every few ms) until ctx ends.
func (c *xdsClient) load(ctx context.Context, log *callLog) {
	for ctx.Err() == nil {
		id, err := c.call(ctx)
		now := time.Now()
		log.mu.Lock()
		if err != nil {
			if ctx.Err() == nil {
				log.errs++
			}
		} else {
			log.calls = append(log.calls, callRecord{at: now, id: id})
		}
		log.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
}

// stoppedAt waits until id has received no call for quiet while others
// did (at least minOthers calls), and returns when id's last call
// completed (zero if it had none after since). bound guards the wait.
func (l *callLog) stoppedAt(t *testing.T, id string, since time.Time, quiet time.Duration, minOthers int, bound time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		l.mu.Lock()
		var last time.Time
		others := 0
		for _, c := range l.calls {
			if c.at.Before(since) {
				continue
			}
			if c.id == id {
				last = c.at
				others = 0
			} else {
				others++
			}
		}
		l.mu.Unlock()
		quietSince := later(last, since)
		if time.Since(quietSince) >= quiet && others >= minOthers {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still received calls %v after the change (last at +%v)", id, bound, last.Sub(since))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
