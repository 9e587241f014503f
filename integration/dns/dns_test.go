//go:build integration

// Package dns tests Tributary's DNS interface through the real binary with
// real clients: dig (Debian's bind9-dnsutils; make test-integration
// installs it), Go's net.Resolver, CoreDNS forwarding a stub zone to it
// (the slim peer with the forward plugin), and dnsmasq (dnsmasq-base) as a
// second forwarder. GetProfile goes through the upstream Linkerd stubs.
package dns

import (
	"context"
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

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// tributary is a running tributary with a file source and the DNS interface.
type tributary struct {
	*harness.Server
	DNS      string // 127.0.0.1:port, UDP and TCP
	svcFile  string
	dnsExtra string
}

// start runs tributary serving services (a services file's YAML) with a
// dns: section made of the listen address and dnsKeys (YAML at two spaces).
func start(t *testing.T, services, dnsKeys string) *tributary {
	t.Helper()
	dir := t.TempDir()
	tr := &tributary{DNS: harness.FreePort(t), svcFile: filepath.Join(dir, "services", "demo.yaml"), dnsExtra: dnsKeys}
	os.Mkdir(filepath.Join(dir, "services"), 0o755)
	harness.WriteAtomic(t, tr.svcFile, services)
	tr.Server = harness.Start(t, dir, tr.config(dir))
	waitAnswers(t, tr.DNS)
	return tr
}

func (tr *tributary) config(dir string) string {
	return fmt.Sprintf("sources:\n  - name: local\n    kind: file\n    paths: [%q]\ndns:\n  listen: %s\n%s",
		filepath.Join(dir, "services", "*.yaml"), tr.DNS, tr.dnsExtra)
}

// restart stops tributary and starts it again on the same ports.
func (tr *tributary) restart(t *testing.T) {
	t.Helper()
	if code, _ := tr.Sigterm(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	tr.Server = harness.StartAt(t, tr.Dir, tr.API, tr.Admin, tr.config(tr.Dir))
	waitAnswers(t, tr.DNS)
}

// waitAnswers waits until the DNS interface answers its zone's SOA.
func waitAnswers(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		m := new(dns.Msg)
		m.SetQuestion("demo.", dns.TypeSOA)
		r, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(m, addr)
		if err == nil && r.Rcode == dns.RcodeSuccess {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("DNS interface at %s not answering: %v %v", addr, r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dig runs Debian's dig against addr and returns its output.
func dig(t *testing.T, addr string, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("dig")
	if err != nil {
		t.Fatal("dig not found: install bind9-dnsutils (make test-integration does)")
	}
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command(bin, append([]string{"@" + host, "-p", port, "+tries=1", "+time=5"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// short is dig +short's lines, sorted.
func short(t *testing.T, addr string, args ...string) []string {
	t.Helper()
	out := strings.Fields(strings.ReplaceAll(dig(t, addr, append(args, "+short")...), "\n", "|"))
	var lines []string
	for l := range strings.SplitSeq(strings.Join(out, " "), "|") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, ";") {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return lines
}

const demoServices = `services:
  - name: web.demo
    port: 8080
    endpoints:
      - {address: "10.0.0.1:18080", zone: zone-a}
      - {address: "10.0.0.2:18080", zone: zone-b}
      - {address: "[2001:db8::1]:18080"}
  - name: web.demo
    port: 9090
    endpoints:
      - {address: "10.0.0.1:19090"}
  - name: db.prod.demo
    port: 5432
    endpoints:
      - {address: "10.0.1.1:5432"}
  - name: empty.demo
    port: 80
    endpoints: []
`

func TestDig(t *testing.T) {
	tr := start(t, demoServices, "  zones: [{zone: demo.}]\n")
	if got := short(t, tr.DNS, "web.demo", "A"); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.2"}) {
		t.Fatalf("A %v", got)
	}
	if got := short(t, tr.DNS, "web.demo", "AAAA"); !slices.Equal(got, []string{"2001:db8::1"}) {
		t.Fatalf("AAAA %v", got)
	}
	want := []string{"0 10000 18080 0a000001.addr.demo.", "0 10000 18080 0a000002.addr.demo.",
		"0 10000 18080 20010db8000000000000000000000001.addr.demo.", "0 10000 19090 0a000001.addr.demo."}
	if got := short(t, tr.DNS, "web.demo", "SRV"); !slices.Equal(got, want) {
		t.Fatalf("SRV %v, want %v", got, want)
	}
	if got := short(t, tr.DNS, "_9090._tcp.web.demo", "SRV"); !slices.Equal(got, []string{"0 10000 19090 0a000001.addr.demo."}) {
		t.Fatalf("SRV of one port %v", got)
	}
	// The SRV targets resolve, and come in the additional section.
	if out := dig(t, tr.DNS, "web.demo", "SRV"); !strings.Contains(out, ";; ADDITIONAL SECTION:") || !strings.Contains(out, "0a000001.addr.demo.\t5\tIN\tA\t10.0.0.1") {
		t.Fatalf("no additional addresses:\n%s", out)
	}
	for _, tc := range []struct{ name, qtype, status string }{
		{"nope.demo", "A", "NXDOMAIN"},      // no such name
		{"db.prod.demo", "AAAA", "NOERROR"}, // NODATA: the name exists, no AAAA
		{"empty.demo", "A", "NOERROR"},      // NODATA: exists, no endpoints
		{"prod.demo", "A", "NOERROR"},       // NODATA: an empty non-terminal
		{"web.demo", "TXT", "NOERROR"},
	} {
		out := dig(t, tr.DNS, tc.name, tc.qtype)
		if !strings.Contains(out, "status: "+tc.status) || !strings.Contains(out, "flags: qr aa") ||
			!strings.Contains(out, ";; AUTHORITY SECTION:\ndemo.\t\t\t5\tIN\tSOA\tns.demo. hostmaster.demo.") || strings.Contains(out, ";; ANSWER SECTION:") {
			t.Fatalf("%s %s: want %s with the SOA and no answer:\n%s", tc.name, tc.qtype, tc.status, out)
		}
	}
	if out := dig(t, tr.DNS, "example.com", "A"); !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("outside the zone:\n%s", out)
	}
}

func manyEndpoints(name string, n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "services:\n  - name: %s\n    port: 80\n    endpoints:\n", name)
	for i := range n {
		fmt.Fprintf(&b, "      - {address: \"10.1.%d.%d:80\"}\n", i/250, 1+i%250)
	}
	return b.String()
}

// An answer too big for UDP comes truncated (TC), and clients retry over
// TCP for all of it: dig does, and so does Go's resolver.
func TestTruncationTCPRetry(t *testing.T) {
	tr := start(t, manyEndpoints("big.demo", 100), "  zones: [{zone: demo.}]\n")
	if out := dig(t, tr.DNS, "big.demo", "A", "+ignore", "+noedns"); !strings.Contains(out, "flags: qr aa tc") {
		t.Fatalf("no TC over UDP:\n%s", out)
	}
	if got := short(t, tr.DNS, "big.demo", "A", "+noedns"); len(got) != 100 {
		t.Fatalf("dig after its TCP retry: %d addresses", len(got))
	}
	var mu sync.Mutex
	var nets []string
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		mu.Lock()
		nets = append(nets, network)
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, network, tr.DNS)
	}}
	addrs, err := r.LookupHost(t.Context(), "big.demo")
	if err != nil || len(addrs) != 100 {
		t.Fatalf("net.Resolver: %d addresses, %v", len(addrs), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(nets, "udp") || !slices.Contains(nets, "tcp") {
		t.Fatalf("net.Resolver dialled %v: want UDP, then TCP after TC", nets)
	}
}

func goResolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}
}

func TestGoResolver(t *testing.T) {
	tr := start(t, demoServices, "  zones: [{zone: demo.}]\n")
	r := goResolver(tr.DNS)
	ips, err := r.LookupNetIP(t.Context(), "ip", "web.demo")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	if fmt.Sprint(ips) != "[10.0.0.1 10.0.0.2 2001:db8::1]" {
		t.Fatalf("LookupNetIP %v", ips)
	}
	_, srvs, err := r.LookupSRV(t.Context(), "8080", "tcp", "web.demo")
	if err != nil || len(srvs) != 3 {
		t.Fatalf("LookupSRV: %v %v", srvs, err)
	}
	for _, s := range srvs {
		if s.Port != 18080 || !strings.HasSuffix(s.Target, ".addr.demo.") {
			t.Fatalf("SRV %+v", s)
		}
	}
	_, err = r.LookupHost(t.Context(), "nope.demo")
	var dnsErr *net.DNSError
	if !asDNSError(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("nope.demo: %v", err)
	}
}

func asDNSError(err error, out **net.DNSError) bool {
	e, ok := err.(*net.DNSError)
	if ok {
		*out = e
	}
	return ok
}

// An endpoint that turns critical leaves the answers (within a TTL: no
// cache here, so at the next query after the registry changed).
func TestUnhealthyLeaves(t *testing.T) {
	tr := start(t, demoServices, "  zones: [{zone: demo.}]\n")
	harness.WriteAtomic(t, tr.svcFile, strings.Replace(demoServices, `{address: "10.0.0.2:18080", zone: zone-b}`, `{address: "10.0.0.2:18080", zone: zone-b, health: critical}`, 1))
	deadline := time.Now().Add(harness.WaitFor)
	for {
		got := short(t, tr.DNS, "web.demo", "A")
		if slices.Equal(got, []string{"10.0.0.1"}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the critical endpoint is still answered: %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := short(t, tr.DNS, "web.demo", "SRV"); slices.ContainsFunc(got, func(s string) bool { return strings.Contains(s, "0a000002") }) {
		t.Fatalf("SRV still has it: %v", got)
	}
}

func TestThousandNames(t *testing.T) {
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range 1000 {
		fmt.Fprintf(&b, "  - name: svc%d.demo\n    port: 80\n    endpoints: [{address: \"10.2.%d.%d:80\"}]\n", i, i/250, 1+i%250)
	}
	tr := start(t, b.String(), "  zones: [{zone: demo.}]\n")
	r := goResolver(tr.DNS)
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	sem := make(chan struct{}, 16)
	for i := range 1000 {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			want := fmt.Sprintf("10.2.%d.%d", i/250, 1+i%250)
			got, err := r.LookupHost(t.Context(), fmt.Sprintf("svc%d.demo", i))
			if err != nil || !slices.Equal(got, []string{want}) {
				errs <- fmt.Errorf("svc%d.demo: %v %v, want %s", i, got, err, want)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// coreDNS forwards zone demo. to the DNS interface (a stub zone).
func coreDNSStub(t *testing.T, upstream string) string {
	t.Helper()
	bin := filepath.Join(harness.Peer(t, "coredns"), "coredns")
	dir := t.TempDir()
	addr := harness.FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	corefile := fmt.Sprintf("demo:%s {\n    bind 127.0.0.1\n    forward . %s\n    errors\n}\n", port, upstream)
	if err := os.WriteFile(filepath.Join(dir, "Corefile"), []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "coredns", exec.Command(bin, "-conf", filepath.Join(dir, "Corefile")), addr)
	return addr
}

// dnsmasqStub forwards demo. to the DNS interface (server=/demo/…).
func dnsmasqStub(t *testing.T, upstream string) string {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		bin = "/usr/sbin/dnsmasq" // not on a user's PATH
		if _, err := os.Stat(bin); err != nil {
			t.Fatal("dnsmasq not found: install dnsmasq-base (make test-integration does)")
		}
	}
	addr := harness.FreePort(t)
	_, port, _ := net.SplitHostPort(addr)
	host, uport, _ := net.SplitHostPort(upstream)
	cmd := exec.Command(bin, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
		"--listen-address=127.0.0.1", "--port="+port, "--pid-file=", "--user=root",
		"--server=/demo/"+host+"#"+uport, "--cache-size=0", "--log-facility=-")
	startProcess(t, "dnsmasq", cmd, addr)
	return addr
}

// startProcess runs a forwarder until the test ends, once it answers the
// demo. SOA through to the DNS interface.
func startProcess(t *testing.T, name string, cmd *exec.Cmd, addr string) {
	t.Helper()
	logs := &harness.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(harness.WaitFor):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, logs.String())
		}
	})
	deadline := time.Now().Add(harness.WaitFor)
	for {
		m := new(dns.Msg)
		m.SetQuestion("demo.", dns.TypeSOA)
		r, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(m, addr)
		if err == nil && r.Rcode == dns.RcodeSuccess {
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s exited at start:\n%s", name, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not answering: %v %v\n%s", name, r, err, logs.String())
		}
	}
}

// Behind CoreDNS (forward) and dnsmasq (server=/demo/…): answers, SRV,
// NXDOMAIN and the TCP retry of a truncated answer all pass through.
func TestStubZone(t *testing.T) {
	tr := start(t, demoServices+strings.TrimPrefix(manyEndpoints("big.demo", 100), "services:\n"), "  zones: [{zone: demo.}]\n")
	for _, fw := range []struct {
		name string
		addr func(*testing.T, string) string
	}{{"coredns", coreDNSStub}, {"dnsmasq", dnsmasqStub}} {
		t.Run(fw.name, func(t *testing.T) {
			addr := fw.addr(t, tr.DNS)
			if got := short(t, addr, "web.demo", "A"); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.2"}) {
				t.Fatalf("A %v", got)
			}
			if got := short(t, addr, "_9090._tcp.web.demo", "SRV"); !slices.Equal(got, []string{"0 10000 19090 0a000001.addr.demo."}) {
				t.Fatalf("SRV %v", got)
			}
			if out := dig(t, addr, "nope.demo", "A"); !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "SOA\tns.demo.") {
				t.Fatalf("NXDOMAIN:\n%s", out)
			}
			r := goResolver(addr)
			ips, err := r.LookupHost(t.Context(), "big.demo")
			if err != nil || len(ips) != 100 {
				t.Fatalf("a big answer through %s: %d addresses, %v", fw.name, len(ips), err)
			}
		})
	}
}

const vipDNS = `  zones: [{zone: demo., virtual_ips: true}]
  virtual_ips: {cidr: 240.0.0.0/12}
`

// Virtual IPs: stable across a restart and across two replicas, and
// GetProfile(VIP:port) returns the service's name so a proxy calls Get.
func TestVirtualIPs(t *testing.T) {
	tr := start(t, demoServices, vipDNS)
	got := short(t, tr.DNS, "web.demo", "A")
	if len(got) != 1 || !netip.MustParsePrefix("240.0.0.0/12").Contains(netip.MustParseAddr(got[0])) {
		t.Fatalf("A %v, want one virtual IP", got)
	}
	vip := got[0]
	if srv := short(t, tr.DNS, "web.demo", "SRV"); !slices.Equal(srv, []string{"0 1 8080 web.demo.", "0 1 9090 web.demo."}) {
		t.Fatalf("SRV %v", srv)
	}

	profile := func(s *harness.Server, target string) *pb.DestinationProfile {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), harness.WaitFor)
		defer cancel()
		st, err := s.Client().GetProfile(ctx, &pb.GetDestination{Path: target})
		if err != nil {
			t.Fatal(err)
		}
		p, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := profile(tr.Server, net.JoinHostPort(vip, "8080")); p.GetFullyQualifiedName() != "web.demo" || p.GetEndpoint() != nil {
		t.Fatalf("GetProfile(%s:8080): fqn %q endpoint %v", vip, p.GetFullyQualifiedName(), p.GetEndpoint())
	}
	// The proxy's next step: Get(web.demo:8080) serves the endpoints.
	st := tr.Get("web.demo:8080")
	if first := st.Next(); !strings.Contains(first, "10.0.0.1:18080") {
		t.Fatalf("Get after the profile: %s", first)
	}
	// An address in the range that is nobody's virtual IP: no name.
	if nobody := "240.0.0.1"; vip != nobody {
		if p := profile(tr.Server, nobody+":8080"); p.GetFullyQualifiedName() != "" {
			t.Fatalf("GetProfile of an address nobody has: %q", p.GetFullyQualifiedName())
		}
	}

	// Another replica with the same config and sources: the same address.
	other := start(t, demoServices, vipDNS)
	if got := short(t, other.DNS, "web.demo", "A"); !slices.Equal(got, []string{vip}) {
		t.Fatalf("second replica answers %v, first %s", got, vip)
	}
	// A restart: the same address.
	tr.restart(t)
	if got := short(t, tr.DNS, "web.demo", "A"); !slices.Equal(got, []string{vip}) {
		t.Fatalf("after a restart %v, before %s", got, vip)
	}
}

// Garbage, truncated and oversized messages get FORMERR or nothing; the
// server goes on answering.
func TestMalformedQueries(t *testing.T) {
	tr := start(t, demoServices, "  zones: [{zone: demo.}]\n")
	u, err := net.Dial("udp", tr.DNS)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, b := range [][]byte{{0xff}, make([]byte, 12), make([]byte, 65000), []byte("GET / HTTP/1.1\r\n\r\n")} {
		if _, err := u.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// A header that promises a question and holds none: FORMERR.
	if _, err := u.Write([]byte{0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	_ = u.SetReadDeadline(time.Now().Add(harness.WaitFor))
	for {
		n, err := u.Read(buf)
		if err != nil {
			t.Fatalf("no FORMERR for a query without its question: %v", err)
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) == nil && m.Id == 0x1234 {
			if m.Rcode != dns.RcodeFormatError {
				t.Fatalf("rcode %s", dns.RcodeToString[m.Rcode])
			}
			break
		}
	}
	// TCP: a length prefix promising more than comes, then a close.
	c, err := net.Dial("tcp", tr.DNS)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte{0xff, 0xff, 1, 2, 3})
	c.Close()
	if got := short(t, tr.DNS, "web.demo", "A"); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.2"}) {
		t.Fatalf("after garbage: %v", got)
	}
	if code, _ := tr.HTTPGet("/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
}
