//go:build integration

package health

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// BenchmarkHealthChecks measures how quickly a change to a services file
// reaches an open Get stream while tributary actively checks 10,000
// endpoints every 10 s (checks=on), against the same fleet unchecked
// (checks=off). Every endpoint is a real TCP listener on loopback: 100
// addresses (127.0.2.1–127.0.2.100) × 100 ports. Reported: stream latency
// p50/p99 over 200 file changes (it includes the file source's 100 ms
// debounce), the checks run per second while measuring, and tributary's RSS.
//
//	make build && TRIBUTARY_BIN=$PWD/bin/tributary go test -tags integration \
//	  -run '^$' -bench BenchmarkHealthChecks -benchtime=1x ./integration/health/
func BenchmarkHealthChecks(b *testing.B) {
	const ips, ports = 100, 100
	targets := make([]string, 0, ips*ports)
	for i := 1; i <= ips; i++ {
		for range ports {
			ln := harness.Acceptor(b, fmt.Sprintf("127.0.2.%d:0", i))
			targets = append(targets, ln.Addr().String())
		}
	}
	for _, mode := range []string{"off", "on"} {
		b.Run("checks="+mode, func(b *testing.B) {
			for range b.N {
				benchStreamLatency(b, targets, mode == "on")
			}
		})
	}
}

func benchStreamLatency(b *testing.B, targets []string, checks bool) {
	dir := b.TempDir()
	// The fleet: 100 services of 100 endpoints.
	var fleet strings.Builder
	fleet.WriteString("services:\n")
	for s := 0; s < 100; s++ {
		fmt.Fprintf(&fleet, "  - name: svc-%d.bench\n    port: 80\n    endpoints:\n", s)
		for e := 0; e < 100; e++ {
			fmt.Fprintf(&fleet, "      - address: %q\n", targets[s*100+e])
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.yaml"), []byte(fleet.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	probe := filepath.Join(dir, "probe.yaml")
	writeProbe := func(addr string) {
		tmp := probe + ".tmp"
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf("services:\n  - name: probe.bench\n    port: 80\n    endpoints:\n      - address: %q\n", addr)), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, probe); err != nil {
			b.Fatal(err)
		}
	}
	writeProbe(targets[0])
	extra := ""
	if checks {
		extra = "    health_check: {type: tcp, interval: 10s, timeout: 2s}\n"
	}
	p := startProcess(b, dir, "sources:\n  - name: fleet\n    kind: file\n    paths: [\"*.yaml\"]\n"+extra)

	if checks { // one full round of checks first: the load is on while measuring
		deadline := time.Now().Add(60 * time.Second)
		for p.metric("tributary_health_checks_total{") < 10000 {
			if time.Now().After(deadline) {
				b.Fatalf("checks did not get going: %v run", p.metric("tributary_health_checks_total{"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := pb.NewDestinationClient(p.conn).Get(ctx, &pb.GetDestination{Path: "probe.bench:80"})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		b.Fatal(err)
	}
	checksBefore, start := p.metric("tributary_health_checks_total{"), time.Now()
	const changes = 200
	lat := make([]time.Duration, 0, changes)
	for i := 1; i <= changes; i++ {
		want := targets[i]
		t0 := time.Now()
		writeProbe(want)
		for { // an add of the new address (a remove of the old one follows)
			u, err := stream.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if strings.Contains(harness.Describe(u), "add:"+want) {
				break
			}
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(20 * time.Millisecond) // let the remove through; keep changes apart from the debounce
	}
	elapsed := time.Since(start)
	if os.Getenv("BENCH_DEBUG") != "" {
		for i, l := range lat {
			if l > 200*time.Millisecond {
				b.Logf("change %d: %v", i, l)
			}
		}
	}
	slices.Sort(lat)
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric((p.metric("tributary_health_checks_total{")-checksBefore)/elapsed.Seconds(), "checks/s")
	b.ReportMetric(p.metric("process_resident_memory_bytes")/(1<<20), "rss-MiB")
}

// process is a tributary started by a benchmark (the harness's Start
// wants a *testing.T).
type process struct {
	admin string
	conn  *grpc.ClientConn
}

func startProcess(tb testing.TB, dir, sources string) *process {
	tb.Helper()
	api, admin := freePort(tb), freePort(tb)
	cfg := fmt.Sprintf("server:\n  listen: %s\n  admin: %s\n%s", api, admin, sources)
	path := filepath.Join(dir, ".tributary.yaml")
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
	p := &process{admin: admin}
	tb.Cleanup(func() {
		if p.conn != nil {
			p.conn.Close()
		}
		_ = cmd.Process.Kill()
		<-exited
		if tb.Failed() {
			tb.Logf("tributary output:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case <-exited:
			tb.Fatalf("tributary exited:\n%s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("tributary not ready:\n%s", logs.String())
		}
	}
	conn, err := grpc.NewClient(api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	p.conn = conn
	return p
}

func freePort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// metric sums the /metrics samples whose line starts with prefix.
func (p *process) metric(prefix string) float64 {
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}
