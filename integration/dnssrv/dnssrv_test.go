//go:build integration

// Package dnssrv tests the dnssrv source against a real DNS server, a slim
// CoreDNS serving a zone file the tests rewrite at run time (atomically,
// with a bumped SOA serial; the file plugin reloads it every second), and
// the staleness rules (stale_after, the deletion guard) with it.
package dnssrv

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// coreDNS is a real CoreDNS serving example.test from a zone file.
type coreDNS struct {
	t      *testing.T
	bin    string
	dir    string
	Addr   string // 127.0.0.1:port, UDP and TCP
	Logs   *harness.SyncBuffer
	mu     sync.Mutex
	serial int
	cmd    *exec.Cmd
	exited chan struct{}
}

func startCoreDNS(t *testing.T, records string) *coreDNS {
	t.Helper()
	c := &coreDNS{t: t, bin: filepath.Join(harness.Peer(t, "coredns"), "coredns"), dir: t.TempDir(), Addr: harness.FreePort(t), Logs: &harness.SyncBuffer{}}
	_, port, _ := net.SplitHostPort(c.Addr)
	corefile := fmt.Sprintf(`example.test:%s {
    bind 127.0.0.1
    file %s {
        reload 1s
    }
    log
    errors
}
`, port, filepath.Join(c.dir, "db.example.test"))
	if err := os.WriteFile(filepath.Join(c.dir, "Corefile"), []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	c.SetZone(records)
	c.Start()
	t.Cleanup(c.Stop)
	return c
}

// SetZone writes the zone with these records (relative to example.test.)
// and a new serial; CoreDNS picks it up within a second or so.
func (c *coreDNS) SetZone(records string) {
	c.t.Helper()
	c.mu.Lock()
	c.serial++
	serial := c.serial
	c.mu.Unlock()
	zone := fmt.Sprintf(`$ORIGIN example.test.
@ 3600 IN SOA ns.example.test. admin.example.test. %d 7200 3600 1209600 1
@ 3600 IN NS ns.example.test.
ns 3600 IN A 127.0.0.1
%s`, serial, records)
	harness.WriteAtomic(c.t, filepath.Join(c.dir, "db.example.test"), zone)
}

// Start runs CoreDNS and waits until it answers.
func (c *coreDNS) Start() {
	c.t.Helper()
	c.cmd = exec.Command(c.bin, "-conf", filepath.Join(c.dir, "Corefile"))
	c.cmd.Stdout, c.cmd.Stderr = c.Logs, c.Logs
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	exited := make(chan struct{})
	c.exited = exited
	go func() { _ = c.cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		m := new(dns.Msg)
		m.SetQuestion("example.test.", dns.TypeSOA)
		r, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(m, c.Addr)
		if err == nil && r.Rcode == dns.RcodeSuccess {
			return
		}
		select {
		case <-exited:
			c.t.Fatalf("coredns exited at start:\n%s", c.Logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("coredns not answering:\n%s", c.Logs.String())
		}
	}
}

// Stop ends CoreDNS and waits for the process to exit (it uses
// SO_REUSEPORT: a new one must not start on the port before).
func (c *coreDNS) Stop() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGCONT) // in case it is paused
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(harness.WaitFor):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
	if c.t.Failed() {
		c.t.Logf("coredns output:\n%s", c.Logs.String())
	}
}

// Pause freezes CoreDNS (SIGSTOP): its sockets stay bound, so queries
// are neither answered nor refused, they time out. Resume thaws it.
func (c *coreDNS) Pause()  { _ = c.cmd.Process.Signal(syscall.SIGSTOP) }
func (c *coreDNS) Resume() { _ = c.cmd.Process.Signal(syscall.SIGCONT) }

// source is a dnssrv source "dns" on c with fast refreshes, plus extra keys.
func source(c *coreDNS, names, extra string) string {
	return fmt.Sprintf(`sources:
  - name: dns
    kind: dnssrv
    names: %s
    resolvers: [%q]
    refresh: {min: 200ms, max: 1s}
    timeout: 300ms
%s`, names, c.Addr, extra)
}

// srvs renders SRV records under name: "prio weight port target" each.
func srvs(name string, ttl int, recs ...string) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "%s %d IN SRV %s\n", name, ttl, r)
	}
	return b.String()
}

// list renders addresses as the harness does, sorted as the server sends them.
func list(op string, addrs ...string) string {
	sorted := slices.Clone(addrs)
	slices.SortFunc(sorted, func(a, b string) int {
		return netip.MustParseAddrPort(a).Compare(netip.MustParseAddrPort(b))
	})
	return op + ":" + strings.Join(sorted, ",")
}

type sourceStatus struct {
	Name           string `json:"name"`
	Stale          bool   `json:"stale"`
	Expired        bool   `json:"expired"`
	LastError      string `json:"last_error"`
	HeldWithdrawal bool   `json:"held_withdrawal"`
	HeldEndpoints  int    `json:"held_endpoints"`
	GuardTrips     int    `json:"guard_trips"`
}

func status(t *testing.T, s *harness.Server) sourceStatus {
	t.Helper()
	_, body := s.HTTPGet("/debug/sources")
	var st []sourceStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st) != 1 {
		t.Fatalf("/debug/sources: %v %s", err, body)
	}
	return st[0]
}

func waitStatus(t *testing.T, s *harness.Server, what string, ok func(sourceStatus) bool) sourceStatus {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		st := status(t, s)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("source never %s: %+v", what, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const apiName = "_http._tcp.api.example.test"

func TestRecordChangesAndTTLs(t *testing.T) {
	hosts := "a 60 IN A 10.0.0.1\nb 60 IN A 10.0.0.2\nc 60 IN A 10.0.0.3\n"
	c := startCoreDNS(t, hosts+srvs("_http._tcp.api", 1, "10 5 8080 a", "10 5 8080 b"))
	s := harness.Start(t, t.TempDir(), source(c, "["+apiName+"]", ""))
	api := s.Get("api.example.test:8080")
	if got := api.Next(); got != "add:10.0.0.1:8080,10.0.0.2:8080" {
		t.Fatalf("first message %s", got)
	}
	if w := api.Set.Addrs[netip.MustParseAddrPort("10.0.0.1:8080")]; w.GetWeight() != 5 || w.GetMetricLabels()["failover_priority"] != "10" {
		t.Fatalf("endpoint %v", w)
	}
	s.WaitLog(`msg="SRV name resolved" source=dns name=` + apiName + ` endpoints=2 ttl=1 next_refresh=1s`)

	// A record added, one removed, and a longer TTL (3s: above refresh.max, clamped to 1s).
	c.SetZone(hosts + srvs("_http._tcp.api", 3, "10 5 8080 b", "10 5 8080 c"))
	if got := api.Next(); got != "add:10.0.0.3:8080" {
		t.Fatalf("after change: %s", got)
	}
	if got := api.Next(); got != "remove:10.0.0.1:8080" {
		t.Fatalf("after change: %s", got)
	}
	s.WaitLog(`endpoints=2 ttl=3 next_refresh=1s`)
	// A port change makes another authority: api.example.test:8080 is left with c only.
	c.SetZone(hosts + srvs("_http._tcp.api", 1, "10 5 9090 b", "10 5 8080 c"))
	if got := api.Next(); got != "remove:10.0.0.2:8080" {
		t.Fatalf("after port change: %s", got)
	}
	if got := s.Get("api.example.test:9090").Next(); got != "add:10.0.0.2:9090" {
		t.Fatalf("new port: %s", got)
	}
}

func TestTruncatedAnswerOverTCP(t *testing.T) {
	var recs []string
	var hosts strings.Builder
	var want []string
	for i := 1; i <= 60; i++ {
		fmt.Fprintf(&hosts, "host-%02d 60 IN A 10.1.0.%d\n", i, i)
		recs = append(recs, fmt.Sprintf("10 1 8080 host-%02d", i))
		want = append(want, fmt.Sprintf("10.1.0.%d:8080", i))
	}
	c := startCoreDNS(t, hosts.String()+srvs("_http._tcp.big", 30, recs...))
	s := harness.Start(t, t.TempDir(), source(c, "[_http._tcp.big.example.test]", ""))
	if got := s.Get("big.example.test:8080").Next(); got != list("add", want...) {
		t.Fatalf("60 records: %s", got)
	}
	if !strings.Contains(c.Logs.String(), `"SRV IN _http._tcp.big.example.test. tcp`) {
		t.Fatalf("the truncated answer was not asked again over TCP:\n%s", c.Logs.String())
	}
}

func TestNXDOMAINWithdrawsAfterTwoAnswers(t *testing.T) {
	hosts := "a 60 IN A 10.0.0.1\n"
	c := startCoreDNS(t, hosts+srvs("_http._tcp.api", 1, "10 5 8080 a"))
	s := harness.Start(t, t.TempDir(), source(c, "["+apiName+", _http._tcp.later.example.test]", ""))
	api := s.Get("api.example.test:8080")
	if got := api.Next(); got != "add:10.0.0.1:8080" {
		t.Fatal(got)
	}
	later := s.Get("later.example.test:80")
	if got := later.Next(); got != "none:false" { // NXDOMAIN from the start: unknown, and no failure
		t.Fatal(got)
	}
	if st := status(t, s); st.Stale {
		t.Fatalf("NXDOMAIN made the source stale: %+v", st)
	}
	c.SetZone(hosts + srvs("_http._tcp.later", 1, "10 5 80 a")) // the name goes, another comes
	s.WaitLog(`SRV name answered empty (NXDOMAIN or no records); withdrawing it if the next answer agrees" source=dns name=` + apiName)
	if got := later.Next(); got != "add:10.0.0.1:80" {
		t.Fatal(got)
	}
	if got := api.Next(); got != "none:false" {
		t.Fatalf("after NXDOMAIN twice: %s", got)
	}
	s.WaitLog(`SRV name answered empty twice; withdrawing it`)
}

func TestRefusedAndPriorityFailoverWithHealthChecks(t *testing.T) {
	// Two listeners on loopback: priority 10 and priority 20 of one name.
	primary := harness.Acceptor(t, "127.0.0.1:0")
	backup := harness.Acceptor(t, "127.0.0.1:0")
	_, p1, _ := net.SplitHostPort(primary.Addr().String())
	_, p2, _ := net.SplitHostPort(backup.Addr().String())
	c := startCoreDNS(t, "lo 60 IN A 127.0.0.1\n"+srvs("_http._tcp.api", 1, "10 1 "+p1+" lo", "20 1 "+p2+" lo"))
	checks := `    health_check:
      type: tcp
      interval: 100ms
      timeout: 500ms
      jitter: 0%
      healthy_threshold: 2
      unhealthy_threshold: 2
      hold_down: 0s
`
	// A name outside any zone CoreDNS serves is REFUSED: the source is stale, its sibling served.
	s := harness.Start(t, t.TempDir(), source(c, "[{name: "+apiName+", authority: api.internal:80}, _x._tcp.elsewhere.test]", checks))
	api := s.Get("api.internal:80")
	if got := api.Next(); got != "add:127.0.0.1:"+p1 {
		t.Fatalf("only the lowest priority: %s", got)
	}
	st := waitStatus(t, s, "stale", func(st sourceStatus) bool { return st.Stale })
	if !strings.Contains(st.LastError, "REFUSED from "+c.Addr) {
		t.Fatalf("last error %q", st.LastError)
	}

	primary.Close() // fails its checks: priority 20 takes over
	if got := api.Next(); got != "add:127.0.0.1:"+p2 {
		t.Fatalf("failover: %s", got)
	}
	if got := api.Next(); got != "remove:127.0.0.1:"+p1 {
		t.Fatalf("failover: %s", got)
	}
	harness.Acceptor(t, "127.0.0.1:"+p1)
	if got := api.Next(); got != "add:127.0.0.1:"+p1 {
		t.Fatalf("fail back: %s", got)
	}
	if got := api.Next(); got != "remove:127.0.0.1:"+p2 {
		t.Fatalf("fail back: %s", got)
	}
}

func TestServerStopsAnsweringThenStaleAfter(t *testing.T) {
	c := startCoreDNS(t, "a 60 IN A 10.0.0.1\n"+srvs("_http._tcp.api", 1, "10 5 8080 a"))
	s := harness.Start(t, t.TempDir(), source(c, "["+apiName+"]", "    stale_after: 3s\n"))
	api := s.Get("api.example.test:8080")
	if got := api.Next(); got != "add:10.0.0.1:8080" {
		t.Fatal(got)
	}
	c.Pause() // the server stops answering: timeouts; the last state is kept, marked stale
	st := waitStatus(t, s, "stale", func(st sourceStatus) bool { return st.Stale })
	if st.Expired || !strings.Contains(st.LastError, "timeout") {
		t.Fatalf("status %+v", st)
	}
	_, reg := s.HTTPGet("/debug/registry?authority=api.example.test:8080")
	if !strings.Contains(reg, `"address": "10.0.0.1:8080"`) || !strings.Contains(reg, `"stale": true`) {
		t.Fatalf("stale endpoint not kept and marked:\n%s", reg)
	}
	// stale_after: the endpoints are withdrawn — the next thing the stream sees.
	if got := api.Next(); got != "none:false" {
		t.Fatalf("after stale_after: %s", got)
	}
	if st := status(t, s); !st.Expired {
		t.Fatalf("status %+v", st)
	}
	if _, m := s.HTTPGet("/metrics"); strings.Contains(m, "tributary_source_expired") && !strings.Contains(m, `tributary_source_expired{kind="dnssrv",source="dns"} 1`) {
		t.Errorf("/metrics does not show the expiry")
	}
	// The server answers again: the whole state is re-applied.
	c.Resume()
	if got := api.Next(); got != "add:10.0.0.1:8080" {
		t.Fatalf("after recovery: %s", got)
	}
	waitStatus(t, s, "recovered", func(st sourceStatus) bool { return !st.Stale && !st.Expired })

	// A server that is gone altogether (refused on loopback) is a failure too.
	c.Stop()
	st = waitStatus(t, s, "stale again", func(st sourceStatus) bool { return st.Stale })
	if !strings.Contains(st.LastError, "refused") {
		t.Fatalf("status %+v", st)
	}
	if got := api.Next(); got != "none:false" {
		t.Fatalf("after stale_after again: %s", got)
	}
	c.Start() // the same port: Stop waited for the old process to exit
	if got := api.Next(); got != "add:10.0.0.1:8080" {
		t.Fatalf("after restart: %s", got)
	}
}

func TestDeletionGuardHoldsMassWithdrawal(t *testing.T) {
	var hosts strings.Builder
	var all, addrs []string
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&hosts, "h%d 60 IN A 10.2.0.%d\n", i, i)
		all = append(all, fmt.Sprintf("10 1 8080 h%d", i))
		addrs = append(addrs, fmt.Sprintf("10.2.0.%d:8080", i))
	}
	hosts.WriteString("extra 60 IN A 10.2.0.99\n")
	c := startCoreDNS(t, hosts.String()+srvs("_http._tcp.api", 1, all...))
	s := harness.Start(t, t.TempDir(), source(c, "["+apiName+"]", "    deletion_guard: {max_withdraw: 50%, confirm_for: 8s, min_endpoints: 4}\n"))
	api := s.Get("api.example.test:8080")
	if got := api.Next(); got != list("add", addrs...) {
		t.Fatal(got)
	}

	// 8 of 10 records vanish: held, and nothing reaches the stream.
	c.SetZone(hosts.String() + srvs("_http._tcp.api", 1, all[8:]...))
	st := waitStatus(t, s, "holding", func(st sourceStatus) bool { return st.HeldWithdrawal })
	if st.HeldEndpoints != 8 || st.GuardTrips != 1 {
		t.Fatalf("status %+v", st)
	}
	s.WaitLog("deletion guard: holding a hand-over that would withdraw most of the source's endpoints")
	// The metrics of the guard (exported by the admin collector from the
	// status above; checked when that collector has them).
	if _, m := s.HTTPGet("/metrics"); strings.Contains(m, "tributary_source_withdrawal_held") {
		for _, want := range []string{`tributary_source_withdrawal_held{kind="dnssrv",source="dns"} 1`, `tributary_source_deletion_guard_trips_total{kind="dnssrv",source="dns"} 1`} {
			if !strings.Contains(m, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	}
	// They come back, with one more: the hold is dropped and only the addition is seen.
	c.SetZone(hosts.String() + srvs("_http._tcp.api", 1, append(slices.Clone(all), "10 1 8080 extra")...))
	if got := api.Next(); got != "add:10.2.0.99:8080" {
		t.Fatalf("after undo: %s", got)
	}
	waitStatus(t, s, "released", func(st sourceStatus) bool { return !st.HeldWithdrawal })

	// They vanish again and stay away: applied after the confirmation period.
	c.SetZone(hosts.String() + srvs("_http._tcp.api", 1, all[8:]...))
	waitStatus(t, s, "holding again", func(st sourceStatus) bool { return st.HeldWithdrawal && st.GuardTrips == 2 })
	if got := api.Next(); got != list("remove", append(slices.Clone(addrs[:8]), "10.2.0.99:8080")...) {
		t.Fatalf("confirmed withdrawal: %s", got)
	}
	s.WaitLog("deletion guard: the withdrawal persisted for the confirmation period; applying it")
}
