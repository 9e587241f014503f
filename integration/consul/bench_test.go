//go:build integration

package consul

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/integration/harness"
)

// BenchmarkConsulThousandServices is the Consul case of `make bench`: 1,000
// services × 5 instances in a real agent (dev mode, default limits), one
// tributary with a default consul source. It reports
//
//	ready-s         tributary start → /readyz 200 (every service read)
//	p50-ms, p99-ms  a TTL check's status change in Consul → the Get stream's
//	                remove (fail) or add (pass), over 200 changes, one at a
//	                time, spread over the catalog; watched-p50-ms and
//	                overflow-p50-ms split them by how the service is followed
//	conns           most established TCP connections from tributary to the
//	                agent's HTTP port (sampled through the run); more than
//	                the agent's limit per client (200) fails the benchmark
//	rss-MiB         tributary's resident memory after the changes
//	setup-s         registering the 5,000 instances (not a tributary figure)
//	checks-state-ms, checks-filtered-ms
//	                what one answer of the overflow's checks query costs
//	                (/v1/health/state/critical, the query the source makes)
//	                against one filtered over every check
//	                (/v1/health/state/any?filter=Status != "passing"),
//	                the mean of 20 each: Consul's figures, why the source
//	                asks by state
//
// Run it once: -benchtime=1x.
func BenchmarkConsulThousandServices(b *testing.B) { consulEstate(b, 1000, 5, 200) }

// BenchmarkConsulLargeEstate is issue #17's Consul estate: 5,000 services
// × 5 instances (150 watched, 4,850 followed as overflow), with the same
// figures. Its targets: ready ≤ 5 s, check change → stream p99 ≤ 50 ms,
// within the agent's connection limit.
func BenchmarkConsulLargeEstate(b *testing.B) { consulEstate(b, 5000, 5, 200) }

// agentConnLimit is the agent's default limits.http_max_conns_per_client.
const agentConnLimit = 200

func consulEstate(b *testing.B, services, instances, changes int) {
	a := startAgent(b, agentOptions{})

	// 100 services spread over the catalog; the source watches the
	// first 150 by name (max_watches) and follows the rest as overflow.
	var targets []int
	for i := 0; i < services; i += services / (changes / 2) {
		targets = append(targets, i)
	}
	setup := time.Now()
	registerMany(b, a, services, instances, func(i int) bool { return slices.Contains(targets, i) })
	b.ReportMetric(time.Since(setup).Seconds(), "setup-s")
	b.ReportMetric(ms(checksQueryTime(b, a, api.HealthCritical, "")), "checks-state-ms")
	b.ReportMetric(ms(checksQueryTime(b, a, api.HealthAny, `Status != "passing"`)), "checks-filtered-ms")

	for range b.N {
		srv := startTributary(b, "sources:\n"+consulSource("consul", a.HTTPAddr()))
		b.ReportMetric(srv.ready.Seconds(), "ready-s")

		var conns connSampler
		conns.sample(b, srv.pid(), a.ports["http"])

		streams := make([]*benchStream, len(targets))
		for k, i := range targets {
			streams[k] = srv.get(b, fmt.Sprintf("%s.service.dc1.consul:8080", svcName(i)))
			streams[k].waitCount(b, instances)
		}
		conns.sample(b, srv.pid(), a.ports["http"])

		var all, watched, overflow []time.Duration
		for c := range changes {
			k := c / 2
			i := targets[k]
			id := instanceID(i, 0)
			addr := instanceAddr(i, 0)
			status, want := api.HealthCritical, false
			if c%2 == 1 {
				status, want = api.HealthPassing, true
			}
			t0 := time.Now()
			if err := a.Client.Agent().UpdateTTL("service:"+id, "", status); err != nil {
				b.Fatal(err)
			}
			d := streams[k].waitAddr(b, addr, want).Sub(t0)
			all = append(all, d)
			if i < 150 {
				watched = append(watched, d)
			} else {
				overflow = append(overflow, d)
			}
			if c%50 == 0 {
				conns.sample(b, srv.pid(), a.ports["http"])
			}
		}
		conns.sample(b, srv.pid(), a.ports["http"])
		b.ReportMetric(ms(percentile(all, 0.50)), "p50-ms")
		b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
		b.ReportMetric(ms(percentile(watched, 0.50)), "watched-p50-ms")
		b.ReportMetric(ms(percentile(overflow, 0.50)), "overflow-p50-ms")
		b.ReportMetric(float64(conns.max), "conns")
		if conns.max > agentConnLimit {
			b.Errorf("%d connections to the agent: over its limit of %d per client", conns.max, agentConnLimit)
		}
		b.ReportMetric(float64(srv.rssKiB(b))/1024, "rss-MiB")
		b.ReportMetric(float64(strings.Count(srv.logs.String(), "reading the overflow services again")), "sweeps")
		srv.stop(b)
	}
}

func svcName(i int) string { return fmt.Sprintf("svc-%04d", i) }

func instanceID(i, j int) string { return fmt.Sprintf("%s-%d", svcName(i), j) }

func instanceAddr(i, j int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i / 250), byte(i % 250), byte(j + 1)}), 8080)
}

// registerMany puts services × instances in the catalog, each instance
// with a passing check, from 32 concurrent clients. Instance 0 of every
// service in agentOwned is registered with the agent and a TTL check (the
// changes go through /v1/agent/check/...); the others through the catalog
// API on 50 external nodes, which is far faster than agent registration
// (that syncs each service to the catalog one by one).
func registerMany(b *testing.B, a *agent, services, instances int, agentOwned func(int) bool) {
	b.Helper()
	jobs := make(chan [2]int)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for job := range jobs {
				i, j := job[0], job[1]
				addr := instanceAddr(i, j)
				svc := &api.AgentService{ID: instanceID(i, j), Service: svcName(i), Address: addr.Addr().String(), Port: int(addr.Port()),
					Tags: []string{fmt.Sprintf("v%d", j%2)}}
				var err error
				if j == 0 && agentOwned(i) {
					err = a.Client.Agent().ServiceRegister(&api.AgentServiceRegistration{
						ID: svc.ID, Name: svc.Service, Address: svc.Address, Port: svc.Port, Tags: svc.Tags, Check: ttlCheck(api.HealthPassing),
					})
				} else {
					node := fmt.Sprintf("ext-%02d", (i*instances+j)%50)
					_, err = a.Client.Catalog().Register(&api.CatalogRegistration{
						Node: node, Address: fmt.Sprintf("10.250.0.%d", (i*instances+j)%50+1), SkipNodeUpdate: true, Service: svc,
						Check: &api.AgentCheck{Node: node, CheckID: "check:" + svc.ID, Name: "up", Status: api.HealthPassing, ServiceID: svc.ID},
					}, nil)
				}
				if err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			}
		})
	}
	for i := range services {
		for j := range instances {
			jobs <- [2]int{i, j}
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		b.Fatal(err)
	default:
	}
	// Anti-entropy has put the agent's own in the catalog too.
	deadline := time.Now().Add(5 * time.Minute)
	for i := range services {
		for {
			entries, _, err := a.Client.Health().Service(svcName(i), "", true, nil)
			if err == nil && len(entries) == instances {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s never had its %d passing instances", svcName(i), instances)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// checksQueryTime is the mean time of 20 non-blocking checks queries of
// state with filter.
func checksQueryTime(b *testing.B, a *agent, state, filter string) time.Duration {
	b.Helper()
	const n = 20
	start := time.Now()
	for range n {
		if _, _, err := a.Client.Health().State(state, &api.QueryOptions{Filter: filter}); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start) / n
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// benchServer is a tributary process for a benchmark (harness.Start takes
// a *testing.T).
type benchServer struct {
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *harness.SyncBuffer
	admin  string
	conn   *grpc.ClientConn
	ready  time.Duration
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startTributary(b *testing.B, sources string) *benchServer {
	b.Helper()
	ports := freePorts(b, 2)
	s := &benchServer{logs: &harness.SyncBuffer{}, exited: make(chan struct{}), admin: fmt.Sprintf("127.0.0.1:%d", ports[1])}
	api := fmt.Sprintf("127.0.0.1:%d", ports[0])
	dir := b.TempDir()
	cfg := filepath.Join(dir, "tributary.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("server:\n  listen: %s\n  admin: %s\n%s", api, s.admin, sources)), 0o644); err != nil {
		b.Fatal(err)
	}
	s.cmd = exec.Command(harness.Bin, "serve", "--config", cfg, "--log-level", "debug")
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	start := time.Now()
	if err := s.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	b.Cleanup(func() {
		s.stop(b)
		if b.Failed() {
			b.Logf("tributary output:\n%s", s.logs.String())
		}
	})
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := start.Add(2 * time.Minute)
	for {
		resp, err := client.Get("http://" + s.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.ready = time.Since(start)
				break
			}
		}
		select {
		case <-s.exited:
			b.Fatalf("tributary exited:\n%s", s.logs.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatalf("tributary not ready after 2 minutes:\n%s", s.logs.String())
		}
	}
	conn, err := grpc.NewClient(api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	s.conn = conn
	s.cancel = func() {}
	return s
}

func (s *benchServer) pid() int { return s.cmd.Process.Pid }

func (s *benchServer) stop(b *testing.B) {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
}

func (s *benchServer) rssKiB(b *testing.B) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid()))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// benchStream is one Get stream whose updates are stamped on arrival.
type benchStream struct {
	mu     sync.Mutex
	cond   *sync.Cond
	set    destination.EndpointSet
	err    error
	stamp  time.Time // arrival of the last update
	closed bool
}

func (s *benchServer) get(b *testing.B, path string) *benchStream {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := pb.NewDestinationClient(s.conn).Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: path})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	st := &benchStream{}
	st.cond = sync.NewCond(&st.mu)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer cancel()
		for {
			u, err := c.Recv()
			now := time.Now()
			st.mu.Lock()
			if err != nil {
				st.err, st.closed = err, true
				st.cond.Broadcast()
				st.mu.Unlock()
				return
			}
			if aerr := st.set.Apply(u); aerr != nil {
				st.err = aerr
			}
			st.stamp = now
			st.cond.Broadcast()
			st.mu.Unlock()
		}
	}()
	prev := s.cancel
	s.cancel = func() { cancel(); prev() }
	return st
}

// waitFor waits until cond holds on the set and returns the arrival time
// of the update that made it hold.
func (st *benchStream) waitFor(b *testing.B, what string, cond func(*destination.EndpointSet) bool) time.Time {
	b.Helper()
	timer := time.AfterFunc(time.Minute, func() {
		st.mu.Lock()
		st.closed = true
		st.cond.Broadcast()
		st.mu.Unlock()
	})
	defer timer.Stop()
	st.mu.Lock()
	defer st.mu.Unlock()
	for !cond(&st.set) {
		if st.err != nil || st.closed {
			b.Fatalf("waiting for %s: %v", what, st.err)
		}
		st.cond.Wait()
	}
	return st.stamp
}

func (st *benchStream) waitCount(b *testing.B, n int) {
	st.waitFor(b, fmt.Sprintf("%d endpoints", n), func(s *destination.EndpointSet) bool { return len(s.Addrs) == n })
}

func (st *benchStream) waitAddr(b *testing.B, addr netip.AddrPort, present bool) time.Time {
	return st.waitFor(b, fmt.Sprintf("%s present=%v", addr, present), func(s *destination.EndpointSet) bool {
		_, ok := s.Addrs[addr]
		return ok == present
	})
}

// connSampler keeps the most established connections seen from a process
// to a local port.
type connSampler struct{ max int }

func (c *connSampler) sample(b *testing.B, pid, port int) {
	n, err := establishedTo(pid, port)
	if err != nil {
		b.Fatal(err)
	}
	c.max = max(c.max, n)
}

// establishedTo counts the process's established TCP connections to a
// loopback port: its socket inodes (/proc/<pid>/fd) matched against
// /proc/net/tcp{,6}.
func establishedTo(pid, port int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "01" || !inodes[fields[9]] {
				continue
			}
			_, remPort, ok := strings.Cut(fields[2], ":")
			if p, err := strconv.ParseUint(remPort, 16, 16); ok && err == nil && int(p) == port {
				n++
			}
		}
		f.Close()
	}
	return n, nil
}
