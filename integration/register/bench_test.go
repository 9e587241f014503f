//go:build integration

package register

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/integration/etcd"
	"github.com/tributary-mesh/tributary/integration/harness"
	rpb "github.com/tributary-mesh/tributary/proto/tributary/registration/v1"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkRegistration: registered endpoints with 10s TTLs kept alive
// through replica A while Get streams watch them through replica B, both
// on one real etcd. It reports A's CPU and etcd's client traffic per
// keepalive, registration → stream latency (a registration through A seen
// on a stream of B) under that load, and both replicas' RSS.
// BENCH_REG_ENDPOINTS (10000), BENCH_REG_STREAMS (10000) and
// BENCH_REG_SECONDS (20, the keepalive window) size it.
func BenchmarkRegistration(b *testing.B) {
	for range b.N {
		benchRegistration(b, envInt("BENCH_REG_ENDPOINTS", 10000), envInt("BENCH_REG_STREAMS", 10000),
			time.Duration(envInt("BENCH_REG_SECONDS", 20))*time.Second)
	}
}

// replica is a tributary started by the benchmark (harness.Start wants a
// *testing.T).
type replica struct {
	api, admin string
	conn       *grpc.ClientConn
}

func startReplica(tb testing.TB, etcdAddr string) *replica {
	tb.Helper()
	p := harness.FreePorts(tb, 2)
	r := &replica{api: p[0], admin: p[1]}
	dir := tb.TempDir()
	cfg := fmt.Sprintf("server:\n  listen: %s\n  admin: %s\n%s", r.api, r.admin, etcdSource(etcdAddr))
	path := filepath.Join(dir, "tributary.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		tb.Fatal(err)
	}
	logs := &harness.SyncBuffer{}
	cmd := exec.Command(harness.Bin, "serve", "--config", path)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tb.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(harness.WaitFor)
	for {
		if resp, err := http.Get("http://" + r.admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("replica not ready:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient(r.api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	r.conn = conn
	return r
}

// metric sums the Prometheus samples whose line starts with prefix.
func metric(tb testing.TB, url, prefix string) float64 {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

func benchRegistration(b *testing.B, endpoints, streams int, window time.Duration) {
	const perAuthority = 100
	const ttl = 10 * time.Second
	authorities := (endpoints + perAuthority - 1) / perAuthority
	m := etcd.StartMember(b)
	a, bb := startReplica(b, m.Client), startReplica(b, m.Client)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	regA := rpb.NewRegistrationClient(a.conn)

	leases := make([]string, endpoints)
	var leasesMu sync.Mutex
	lease := func(i int) string {
		leasesMu.Lock()
		defer leasesMu.Unlock()
		return leases[i]
	}
	// Keep them alive through A: every lease every third of the TTL, over
	// 64 KeepAlive streams, from the moment it is registered to the end.
	var keepalives, unknown atomic.Int64
	kaCtx, kaStop := context.WithCancel(ctx)
	var kaWG sync.WaitGroup
	const kaStreams = 64
	for w := range kaStreams {
		kaWG.Go(func() {
			ka, err := regA.KeepAlive(kaCtx)
			if err != nil {
				return
			}
			var mine []int
			for i := w; i < endpoints; i += kaStreams {
				mine = append(mine, i)
			}
			gap := ttl / 3 / time.Duration(len(mine)+1)
			tick := time.NewTicker(gap)
			defer tick.Stop()
			for i := 0; ; i++ {
				id := lease(mine[i%len(mine)])
				if id == "" { // not registered yet: its turn passes
					select {
					case <-kaCtx.Done():
						return
					case <-tick.C:
					}
					continue
				}
				if err := ka.Send(&rpb.KeepAliveRequest{LeaseId: id}); err != nil {
					return
				}
				r, err := ka.Recv()
				if err != nil {
					return
				}
				keepalives.Add(1)
				if r.GetUnknown() {
					unknown.Add(1)
				}
				select {
				case <-kaCtx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	defer kaWG.Wait()
	defer kaStop()

	// Register through A.
	regStart := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 64)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= endpoints {
					return
				}
				resp, err := regA.Register(ctx, &rpb.RegisterRequest{Endpoint: &rpb.Endpoint{
					Authority: fmt.Sprintf("svc-%d.vm.test:8080", i/perAuthority),
					Address:   fmt.Sprintf("10.%d.%d.%d", 1+i>>16&0xff, i>>8&0xff, i&0xff), Port: 8080,
				}, Ttl: durationpb.New(ttl)})
				if err != nil {
					errc <- err
					return
				}
				leasesMu.Lock()
				leases[i] = resp.GetLeaseId()
				leasesMu.Unlock()
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
	b.Logf("%d registrations through A in %v", endpoints, time.Since(regStart).Round(time.Millisecond))

	// Streams on B, spread over the authorities, up to 1,000 per connection.
	var synced sync.WaitGroup
	var streamWG sync.WaitGroup
	defer streamWG.Wait()
	defer cancel()
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var client pb.DestinationClient
	for s := range streams {
		if s%1000 == 0 {
			c, err := grpc.NewClient(bb.api, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			client = pb.NewDestinationClient(c)
		}
		st, err := client.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: fmt.Sprintf("svc-%d.vm.test:8080", s%authorities)})
		if err != nil {
			b.Fatal(err)
		}
		synced.Add(1)
		streamWG.Go(func() {
			var set int
			done := false
			for {
				u, err := st.Recv()
				if err != nil {
					if !done {
						synced.Done()
					}
					return
				}
				set += len(u.GetAdd().GetAddrs()) - len(u.GetRemove().GetAddrs())
				if !done && set >= perAuthority {
					done = true
					synced.Done()
				}
			}
		})
	}
	syncStart := time.Now()
	synced.Wait()
	b.Logf("%d streams on B synced with %d endpoints in %v", streams, endpoints, time.Since(syncStart).Round(time.Millisecond))

	// The keepalive window: A's CPU and etcd's traffic per keepalive.
	etcdMetrics := "http://" + m.Client + "/metrics"
	aMetrics := "http://" + a.admin + "/metrics"
	cpu0, ka0 := metric(b, aMetrics, "process_cpu_seconds_total"), keepalives.Load()
	rx0 := metric(b, etcdMetrics, "etcd_network_client_grpc_received_bytes_total")
	tx0 := metric(b, etcdMetrics, "etcd_network_client_grpc_sent_bytes_total")
	t0 := time.Now()

	// Meanwhile, registration → stream: a probe endpoint registered
	// through A, timed until a stream on B has it.
	probe, err := pb.NewDestinationClient(conns[0]).Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: "probe.vm.test:8080"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := probe.Recv(); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for i := 0; time.Since(t0) < window; i++ {
		addr := fmt.Sprintf("10.200.%d.%d", i>>8&0xff, i&0xff)
		start := time.Now()
		resp, err := regA.Register(ctx, &rpb.RegisterRequest{Endpoint: &rpb.Endpoint{Authority: "probe.vm.test:8080", Address: addr, Port: 8080}, Ttl: durationpb.New(ttl)})
		if err != nil {
			b.Fatal(err)
		}
		for {
			u, err := probe.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if strings.Contains(harness.Describe(u), "add:"+addr) {
				break
			}
		}
		lat = append(lat, time.Since(start))
		if _, err := regA.Deregister(ctx, &rpb.DeregisterRequest{LeaseId: resp.GetLeaseId()}); err != nil {
			b.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(t0)
	kas := float64(keepalives.Load() - ka0)
	cpu := metric(b, aMetrics, "process_cpu_seconds_total") - cpu0
	rx := metric(b, etcdMetrics, "etcd_network_client_grpc_received_bytes_total") - rx0
	tx := metric(b, etcdMetrics, "etcd_network_client_grpc_sent_bytes_total") - tx0

	slices.Sort(lat)
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(kas/elapsed.Seconds(), "keepalives/s")
	b.ReportMetric(cpu/kas*1e6, "A-cpu-µs/keepalive")
	b.ReportMetric((rx+tx)/kas, "etcd-bytes/keepalive")
	b.ReportMetric(pct(0.50), "reg→stream-p50-ms")
	b.ReportMetric(pct(0.99), "reg→stream-p99-ms")
	b.ReportMetric(metric(b, aMetrics, "process_resident_memory_bytes")/(1<<20), "A-rss-MiB")
	b.ReportMetric(metric(b, "http://"+bb.admin+"/metrics", "process_resident_memory_bytes")/(1<<20), "B-rss-MiB")
	if n := unknown.Load(); n > 0 {
		b.Errorf("%d keepalives found their lease unknown: leases expired under load", n)
	}
	b.Logf("%d registration probes; %v of keepalives", len(lat), elapsed.Round(time.Millisecond))
}
