//go:build integration

package dns

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// BenchmarkDNS measures queries per second and latency of the DNS
// interface at 1,000 and 100,000 names, beside CoreDNS serving the same
// names from a zone file (the file plugin), in the same run on the same
// machine: a closed loop of benchWorkers clients, each sending A queries
// for random names over UDP and waiting for each answer.
//
//	make build && TRIBUTARY_BIN=$PWD/bin/tributary go test -tags integration \
//	  -run '^$' -bench DNS -benchtime 1x -timeout 30m ./integration/dns/
//
// Tributary's answers are live: each one reads a registry snapshot and
// applies the federation and health rules; CoreDNS's come from a parsed
// zone.
func BenchmarkDNS(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("names=%d", n), func(b *testing.B) {
			trib, core := benchServers(b, n)
			for _, srv := range []*benchServer{trib, core} {
				b.Logf("%-9s %7d names: RSS %d MiB before the load", srv.name, n, srv.rssMiB(b))
			}
			for range b.N {
				for _, srv := range []*benchServer{trib, core, trib, core} {
					r := load(b, srv.addr, n, benchDuration)
					b.Logf("%-9s %7d names: %8.0f qps  p50 %6.0f µs  p99 %6.0f µs  errors %d", srv.name, n, r.qps, r.p50, r.p99, r.errors)
					b.ReportMetric(r.qps, srv.name+"-qps")
					b.ReportMetric(r.p99, srv.name+"-p99-µs")
				}
			}
			for _, srv := range []*benchServer{trib, core} {
				b.Logf("%-9s %7d names: RSS %d MiB after the load", srv.name, n, srv.rssMiB(b))
			}
		})
	}
}

const (
	benchWorkers  = 16
	benchDuration = 5 * time.Second
)

// benchServers starts tributary (file source, n names, one endpoint each,
// DNS interface) and CoreDNS (the same names in a zone file) and returns
// their DNS addresses.
// benchServer is a DNS server under load: its address and process.
type benchServer struct {
	name, addr string
	cmd        *exec.Cmd
}

// rssMiB is the process's resident memory, from /proc.
func (s *benchServer) rssMiB(b *testing.B) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb / 1024
		}
	}
	return 0
}

func benchServers(b *testing.B, n int) (trib, core *benchServer) {
	b.Helper()
	dir := b.TempDir()
	var svcs, zone strings.Builder
	svcs.WriteString("services:\n")
	fmt.Fprintf(&zone, "$ORIGIN demo.\n@ 3600 IN SOA ns.demo. hostmaster.demo. 1 3600 600 86400 5\n@ 3600 IN NS ns.demo.\nns 3600 IN A 127.0.0.1\n")
	for i := range n {
		ip := fmt.Sprintf("10.%d.%d.%d", 1+i/62500, i/250%250, 1+i%250)
		fmt.Fprintf(&svcs, "  - {name: svc%d.demo, port: 80, endpoints: [{address: \"%s:80\"}]}\n", i, ip)
		fmt.Fprintf(&zone, "svc%d 5 IN A %s\n", i, ip)
	}
	os.Mkdir(filepath.Join(dir, "services"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "services", "bench.yaml"), []byte(svcs.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	trib = &benchServer{name: "tributary", addr: benchFreePort(b)}
	cfg := fmt.Sprintf("sources:\n  - name: local\n    kind: file\n    paths: [%q]\ndns:\n  listen: %s\n  zones: [{zone: demo.}]\n",
		filepath.Join(dir, "services", "*.yaml"), trib.addr)
	trib.cmd = startBenchTributary(b, dir, cfg)

	zoneFile := filepath.Join(dir, "db.demo")
	if err := os.WriteFile(zoneFile, []byte(zone.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	core = &benchServer{name: "coredns", addr: benchFreePort(b)}
	_, port, _ := net.SplitHostPort(core.addr)
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(corefile, fmt.Appendf(nil, "demo:%s {\n    bind 127.0.0.1\n    file %s\n}\n", port, zoneFile), 0o644); err != nil {
		b.Fatal(err)
	}
	core.cmd = startBenchProcess(b, exec.Command(filepath.Join(harness.Peer(b, "coredns"), "coredns"), "-conf", corefile))
	for _, s := range []*benchServer{trib, core} {
		waitName(b, s.addr, fmt.Sprintf("svc%d.demo.", n-1))
	}
	return trib, core
}

func benchFreePort(b *testing.B) string { return harness.FreePorts(b, 1)[0] }

// startBenchTributary runs tributary outside the harness (which wants a
// *testing.T) with config, until the benchmark ends.
func startBenchTributary(b *testing.B, dir, sourcesAndDNS string) *exec.Cmd {
	b.Helper()
	p := harness.FreePorts(b, 2)
	cfg := fmt.Sprintf("server:\n  listen: %s\n  admin: %s\n%s", p[0], p[1], sourcesAndDNS)
	path := filepath.Join(dir, ".tributary.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	return startBenchProcess(b, exec.Command(harness.Bin, "serve", "--config", path, "--log-level", "warn"))
}

func startBenchProcess(b *testing.B, cmd *exec.Cmd) *exec.Cmd {
	b.Helper()
	logs := &harness.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if b.Failed() {
			b.Logf("%s output:\n%s", cmd.Path, logs.String())
		}
	})
	return cmd
}

// waitName waits until addr answers name (the last name: all are loaded).
func waitName(b *testing.B, addr, name string) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, addr)
		if err == nil && len(r.Answer) == 1 {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s does not answer %s: %v %v", addr, name, r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type loadResult struct {
	qps, p50, p99 float64 // p50, p99 in µs
	errors        int64
}

// load runs benchWorkers closed-loop UDP clients against addr for d.
func load(b *testing.B, addr string, names int, d time.Duration) loadResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var (
		mu      sync.Mutex
		lat     []time.Duration
		errs    atomic.Int64
		wg      sync.WaitGroup
		start   = time.Now()
		queries = make([][]byte, 0, names)
	)
	// Every name, in a random order: the server's caches see them all.
	for _, i := range rand.Perm(names) {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("svc%d.demo.", i), dns.TypeA)
		m.RecursionDesired = false
		q, err := m.Pack()
		if err != nil {
			b.Fatal(err)
		}
		queries = append(queries, q)
	}
	for w := range benchWorkers {
		wg.Go(func() {
			conn, err := net.Dial("udp", addr)
			if err != nil {
				errs.Add(1)
				return
			}
			defer conn.Close()
			mine := make([]time.Duration, 0, 1<<16)
			buf := make([]byte, 1232)
			var q []byte
			for k := 0; ctx.Err() == nil; k++ {
				i := k*benchWorkers + w
				q = append(q[:0], queries[i%len(queries)]...)
				id := uint16(i)
				q[0], q[1] = byte(id>>8), byte(id)
				t0 := time.Now()
				_ = conn.SetDeadline(t0.Add(time.Second))
				if _, err := conn.Write(q); err != nil {
					errs.Add(1)
					continue
				}
				for {
					n, err := conn.Read(buf)
					if err != nil {
						errs.Add(1)
						break
					}
					if n >= 12 && buf[0] == q[0] && buf[1] == q[1] {
						if buf[3]&0xf != 0 { // rcode
							errs.Add(1)
						}
						mine = append(mine, time.Since(t0))
						break
					}
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	if len(lat) == 0 {
		b.Fatalf("%s answered nothing", addr)
	}
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	return loadResult{qps: float64(len(lat)) / elapsed.Seconds(), p50: pct(0.5), p99: pct(0.99), errors: errs.Load()}
}
