package dnssrv

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 10 * time.Second

// srv is one SRV record of the fake zone.
type srv struct {
	prio, weight, port uint16
	target             string
}

// fakeDNS is an in-process DNS server (miekg/dns) on loopback, UDP and
// TCP, answering from a zone the test changes.
type fakeDNS struct {
	mu      sync.Mutex
	srv     map[string][]srv    // SRV name → records
	hosts   map[string][]string // target → addresses
	rcode   map[string]int      // name → forced rcode
	extra   bool                // put target addresses in the additional section
	ttl     uint32              // TTL of every record
	queries map[string]int      // "udp _x._tcp.a./SRV" → count
	addr    string
	servers []*dns.Server
}

func startDNS(t *testing.T) *fakeDNS {
	t.Helper()
	f := &fakeDNS{srv: map[string][]srv{}, hosts: map[string][]string{}, rcode: map[string]int{}, extra: true, ttl: 30, queries: map[string]int{}}
	// One port for UDP and TCP: another process may hold the TCP side of
	// the UDP port picked, so try again with another.
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ln == nil; attempt++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		f.addr = pc.LocalAddr().String()
		if ln, err = net.Listen("tcp", f.addr); err != nil {
			pc.Close()
			if attempt == 50 {
				t.Fatal(err)
			}
		}
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: f}, {Listener: ln, Handler: f}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		f.servers = append(f.servers, s)
	}
	t.Cleanup(func() {
		for _, s := range f.servers {
			s.Shutdown()
		}
	})
	return f
}

func (f *fakeDNS) set(fn func(f *fakeDNS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeDNS) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.queries[key]
}

func (f *fakeDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	f.queries[w.LocalAddr().Network()+" "+name+"/"+dns.TypeToString[q.Qtype]]++
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	hdr := func(n string, typ uint16) dns.RR_Header {
		return dns.RR_Header{Name: n, Rrtype: typ, Class: dns.ClassINET, Ttl: f.ttl}
	}
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "test.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60}, Ns: "ns.test.", Mbox: "h.test.", Serial: 1, Minttl: 7}
	if rc, ok := f.rcode[name]; ok {
		resp.Rcode = rc
		w.WriteMsg(resp)
		return
	}
	addrRRs := func(target string, qtype uint16) []dns.RR {
		var out []dns.RR
		for _, a := range f.hosts[target] {
			ip := net.ParseIP(a)
			if ip.To4() != nil && qtype == dns.TypeA {
				out = append(out, &dns.A{Hdr: hdr(target, dns.TypeA), A: ip})
			} else if ip.To4() == nil && qtype == dns.TypeAAAA {
				out = append(out, &dns.AAAA{Hdr: hdr(target, dns.TypeAAAA), AAAA: ip})
			}
		}
		return out
	}
	switch {
	case q.Qtype == dns.TypeSRV && f.srv[name] != nil:
		for _, r := range f.srv[name] {
			resp.Answer = append(resp.Answer, &dns.SRV{Hdr: hdr(name, dns.TypeSRV), Priority: r.prio, Weight: r.weight, Port: r.port, Target: r.target})
			if f.extra {
				resp.Extra = append(resp.Extra, addrRRs(r.target, dns.TypeA)...)
				resp.Extra = append(resp.Extra, addrRRs(r.target, dns.TypeAAAA)...)
			}
		}
	case (q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA) && f.hosts[name] != nil:
		resp.Answer = addrRRs(name, q.Qtype)
		if len(resp.Answer) == 0 {
			resp.Ns = []dns.RR{soa}
		}
	case f.srv[name] != nil || f.hosts[name] != nil:
		resp.Ns = []dns.RR{soa} // NODATA
	default:
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{soa}
	}
	if w.LocalAddr().Network() == "udp" {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}

// call is one sink call, rendered.
type recSink struct{ calls chan string }

func render(g discovery.Group) string {
	var parts []string
	for _, s := range g.Services {
		var eps []string
		for _, e := range s.Endpoints {
			eps = append(eps, fmt.Sprintf("%s/w%d/p%s", e.Addr, e.Weight, e.Labels[discovery.PriorityLabel]))
		}
		parts = append(parts, s.Authority.String()+"="+strings.Join(eps, ","))
	}
	return g.Key + "{" + strings.Join(parts, ";") + "}"
}

func (r *recSink) hand(op string, gs []discovery.Group) {
	parts := make([]string, len(gs))
	for i, g := range gs {
		parts[i] = render(g)
	}
	r.calls <- op + " " + strings.Join(parts, " ")
}
func (r *recSink) Update(gs ...discovery.Group) { r.hand("update", gs) }
func (r *recSink) Replace(gs []discovery.Group) { r.hand("replace", gs) }
func (r *recSink) Healthy()                     { r.calls <- "healthy" }
func (r *recSink) Failed(err error)             { r.calls <- "failed " + err.Error() }

// next returns the next call that is not "healthy" (polls repeat quickly).
func (r *recSink) next(t *testing.T) string {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case c := <-r.calls:
			if c != "healthy" {
				return c
			}
		case <-deadline:
			t.Fatal("no sink call")
		}
	}
}

func testConfig(resolvers []string, names ...Name) Config {
	return Config{Names: names, Resolvers: resolvers, MinRefresh: 5 * time.Millisecond, MaxRefresh: 20 * time.Millisecond, Timeout: 200 * time.Millisecond, UDPSize: DefaultUDPSize}
}

func name(t *testing.T, s, authority string) Name {
	t.Helper()
	n, err := parseName(rawName{Name: s, Authority: authority})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func runSource(t *testing.T, cfg Config) *recSink {
	t.Helper()
	s, err := NewSource(cfg, discovery.BuildContext{Name: "dns"})
	if err != nil {
		t.Fatal(err)
	}
	sink := &recSink{calls: make(chan string, 1000)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, sink) }()
	t.Cleanup(func() { cancel(); <-done })
	return sink
}

const api = "_http._tcp.api.example.test."

func TestResolveWithAndWithoutAdditional(t *testing.T) {
	for _, extra := range []bool{true, false} {
		t.Run(fmt.Sprint("additional=", extra), func(t *testing.T) {
			d := startDNS(t)
			d.set(func(f *fakeDNS) {
				f.extra = extra
				f.srv[api] = []srv{{10, 5, 8080, "a.example.test."}, {10, 0, 8080, "b.example.test."}, {20, 0, 8081, "c.example.test."}, {30, 1, 80, "."}}
				f.hosts["a.example.test."] = []string{"10.0.0.1", "fd00::1"}
				f.hosts["b.example.test."] = []string{"10.0.0.2"}
				f.hosts["c.example.test."] = []string{"10.0.0.3"}
			})
			sink := runSource(t, testConfig([]string{d.addr}, name(t, api, "")))
			want := "replace _http._tcp.api.example.test{" +
				"api.example.test:8080=10.0.0.1:8080/w5/p10,10.0.0.2:8080/w1/p10,[fd00::1]:8080/w5/p10;" +
				"api.example.test:8081=10.0.0.3:8081/w0/p20}"
			if got := sink.next(t); got != want {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
			aQueries := d.count("udp a.example.test./A")
			if extra && aQueries != 0 || !extra && aQueries == 0 {
				t.Fatalf("%d A queries with additional=%v", aQueries, extra)
			}
		})
	}
}

func TestExplicitAuthorityAndDuplicates(t *testing.T) {
	d := startDNS(t)
	d.set(func(f *fakeDNS) {
		f.srv[api] = []srv{{20, 3, 9000, "a.example.test."}, {10, 7, 9000, "a.example.test."}, {10, 1, 9001, "b.example.test."}}
		f.hosts["a.example.test."] = []string{"10.0.0.1"}
		f.hosts["b.example.test."] = []string{"10.0.0.2"}
	})
	sink := runSource(t, testConfig([]string{d.addr}, name(t, api, "billing.internal"), name(t, "_x._tcp.other.test", "fixed.internal:7000")))
	want := "replace _http._tcp.api.example.test{billing.internal:9000=10.0.0.1:9000/w7/p10;billing.internal:9001=10.0.0.2:9001/w1/p10}"
	if got := sink.next(t); got != want { // the unknown second name hands over nothing
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	d := startDNS(t)
	d.set(func(f *fakeDNS) {
		for i := 1; i <= 60; i++ {
			target := fmt.Sprintf("host-with-a-long-name-%02d.example.test.", i)
			f.srv[api] = append(f.srv[api], srv{10, 1, 8080, target})
			f.hosts[target] = []string{fmt.Sprintf("10.0.1.%d", i)}
		}
	})
	sink := runSource(t, testConfig([]string{d.addr}, name(t, api, "")))
	got := sink.next(t)
	if n := strings.Count(got, ":8080/"); n != 60 {
		t.Fatalf("%d endpoints, want 60: %s", n, got)
	}
	if d.count("tcp "+api+"/SRV") == 0 {
		t.Fatal("no TCP retry")
	}
}

func TestAuthoritativeEmptyWithdrawsAfterTwo(t *testing.T) {
	for _, how := range []string{"nxdomain", "nodata"} {
		t.Run(how, func(t *testing.T) {
			d := startDNS(t)
			d.set(func(f *fakeDNS) {
				f.srv[api] = []srv{{10, 1, 8080, "a.example.test."}}
				f.hosts["a.example.test."] = []string{"10.0.0.1"}
			})
			sink := runSource(t, testConfig([]string{d.addr}, name(t, api, "")))
			if got := sink.next(t); !strings.HasPrefix(got, "replace _http._tcp.api.example.test{api.example.test:8080=10.0.0.1") {
				t.Fatal(got)
			}
			before := d.count("udp " + api + "/SRV")
			d.set(func(f *fakeDNS) {
				if how == "nxdomain" {
					delete(f.srv, api)
				} else {
					f.srv[api] = []srv{} // the name exists, no SRV records
				}
			})
			if got := sink.next(t); got != "update _http._tcp.api.example.test{}" {
				t.Fatalf("after empty answers: %s", got)
			}
			if n := d.count("udp "+api+"/SRV") - before; n < 2 {
				t.Fatalf("withdrawn after %d empty answer(s), want 2", n)
			}
		})
	}
}

func TestServerErrorsKeepStateAndFallThrough(t *testing.T) {
	bad := startDNS(t)
	good := startDNS(t)
	for _, d := range []*fakeDNS{bad, good} {
		d.set(func(f *fakeDNS) {
			f.srv[api] = []srv{{10, 1, 8080, "a.example.test."}}
			f.hosts["a.example.test."] = []string{"10.0.0.1"}
		})
	}
	bad.set(func(f *fakeDNS) { f.rcode[api] = dns.RcodeRefused })
	// A silent resolver (timeouts), a refusing one, then a good one: the good one answers.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	sink := runSource(t, testConfig([]string{silent.LocalAddr().String(), bad.addr, good.addr}, name(t, api, "")))
	if got := sink.next(t); !strings.Contains(got, "10.0.0.1:8080") {
		t.Fatal(got)
	}

	// Only failing resolvers: nothing handed over, Failed each time.
	for _, rc := range []int{dns.RcodeServerFailure, dns.RcodeRefused} {
		good.set(func(f *fakeDNS) { f.rcode[api] = rc })
		sink2 := runSource(t, testConfig([]string{good.addr}, name(t, api, "")))
		if got := sink2.next(t); got != "replace " {
			t.Fatalf("first state with a failing server: %q", got)
		}
		if got := sink2.next(t); !strings.HasPrefix(got, "failed ") || !strings.Contains(got, dns.RcodeToString[rc]+" from "+good.addr) {
			t.Fatalf("%s: %q", dns.RcodeToString[rc], got)
		}
	}

	// A known name whose server goes silent keeps its state: Failed, no hand-over.
	good.set(func(f *fakeDNS) { delete(f.rcode, api) })
	lateSilent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lateSilent.Close()
	s, err := NewSource(testConfig([]string{good.addr}, name(t, api, "")), discovery.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	r := &run{Source: s, names: []*nameState{{Name: s.cfg.Names[0]}}}
	if res := r.poll(context.Background()); res.Err != nil || len(res.Groups) != 1 {
		t.Fatalf("first poll %+v", res)
	}
	s.cfg.Resolvers = []string{lateSilent.LocalAddr().String()}
	r.names[0].next = time.Time{}
	before := time.Now()
	res := r.poll(context.Background())
	if res.Err == nil || len(res.Groups) != 0 || !strings.Contains(res.Err.Error(), "timeout") {
		t.Fatalf("silent server: %+v", res)
	}
	// The backoff starts at refresh.min (±20%), counted from the poll's
	// start: res.Next is what is left of it when the poll returns, which
	// shrinks with the time the poll took, so the schedule is checked.
	if d := r.names[0].next.Sub(before); d < 4*time.Millisecond {
		t.Fatalf("retry scheduled %v after the poll started", d)
	}
}

func TestNextRefreshFollowsTTLWithinBounds(t *testing.T) {
	d := startDNS(t)
	d.set(func(f *fakeDNS) {
		f.srv[api] = []srv{{10, 1, 8080, "a.example.test."}}
		f.hosts["a.example.test."] = []string{"10.0.0.1"}
	})
	for _, tc := range []struct {
		ttl  uint32
		want time.Duration
	}{{30, 30 * time.Second}, {1, 5 * time.Second}, {3600, time.Minute}} {
		d.set(func(f *fakeDNS) { f.ttl = tc.ttl })
		cfg := testConfig([]string{d.addr}, name(t, api, ""))
		cfg.MinRefresh, cfg.MaxRefresh = 5*time.Second, time.Minute
		s, err := NewSource(cfg, discovery.BuildContext{})
		if err != nil {
			t.Fatal(err)
		}
		r := &run{Source: s, names: []*nameState{{Name: cfg.Names[0]}}}
		res := r.poll(context.Background())
		if res.Err != nil || res.Next > tc.want || res.Next < tc.want-time.Second {
			t.Errorf("ttl %d: next %v (err %v), want about %v", tc.ttl, res.Next, res.Err, tc.want)
		}
	}
}

func TestTargetWithoutAddressIsSkipped(t *testing.T) {
	d := startDNS(t)
	d.set(func(f *fakeDNS) {
		f.extra = false
		f.srv[api] = []srv{{10, 1, 8080, "gone.example.test."}, {10, 1, 8080, "a.example.test."}}
		f.hosts["a.example.test."] = []string{"10.0.0.1"}
	})
	sink := runSource(t, testConfig([]string{d.addr}, name(t, api, "")))
	if got := sink.next(t); got != "replace _http._tcp.api.example.test{api.example.test:8080=10.0.0.1:8080/w1/p10}" {
		t.Fatal(got)
	}
}

func TestParseConfig(t *testing.T) {
	node := func(s string) *yaml.Node {
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
			t.Fatal(err)
		}
		return doc.Content[0]
	}
	src, err := newFromNode(node(`names:
  - _http._tcp.API.example.com.
  - name: _grpc._tcp.billing.example.com
    authority: billing.internal:9000
  - plain.example.com
resolvers: [127.0.0.1, "127.0.0.2:5353", "[::1]:53", "::1"]
refresh: {min: 1s, max: 1m}
timeout: 500ms
udp_size: 4096
`), discovery.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := src.(*Source).cfg
	want := Config{
		Names: []Name{
			{FQDN: "_http._tcp.api.example.com.", Host: "api.example.com"},
			{FQDN: "_grpc._tcp.billing.example.com.", Host: "billing.internal", Port: 9000},
			{FQDN: "plain.example.com.", Host: "plain.example.com"},
		},
		Resolvers:  []string{"127.0.0.1:53", "127.0.0.2:5353", "[::1]:53", "[::1]:53"},
		MinRefresh: time.Second, MaxRefresh: time.Minute, Timeout: 500 * time.Millisecond, UDPSize: 4096,
	}
	if fmt.Sprint(cfg) != fmt.Sprint(want) {
		t.Fatalf("config\n%+v\nwant\n%+v", cfg, want)
	}
	if cfg.Names[0].Key() != "_http._tcp.api.example.com" {
		t.Fatal(cfg.Names[0].Key())
	}

	for _, tc := range []struct{ yaml, want string }{
		{"resolvers: [127.0.0.1]\n", "line 1: names: required"},
		{"names: [a.test, a.test.]\nresolvers: [127.0.0.1]\n", `line 1: names[1]: a.test listed twice`},
		{"names: ['bad name!']\nresolvers: [127.0.0.1]\n", `names[0]: "bad name!": the authority derived from it is not valid`},
		{"names: [_x._tcp]\nresolvers: [127.0.0.1]\n", "no authority host can be derived"},
		{"names: ['a..b']\nresolvers: [127.0.0.1]\n", "is not a domain name"},
		{"names:\n  - name: a.test\n    authority: 'x:0'\n", "line 2: names[0]: authority: invalid authority"},
		{"names:\n  - name: a.test\n    authoritee: x\n", "line 3: names[0].authoritee: unknown key"},
		{"names: [a.test]\nresolvers: [dns.google]\n", "line 2: resolvers[0]:"},
		{"names: [a.test]\nresolvers: ['[::1']\n", "line 2: resolvers[0]:"},
		{"names: [a.test]\nresolvers: ['[[::1]]']\n", "line 2: resolvers[0]:"},
		{"names: [a.test]\nresolvers: [127.0.0.1]\nrefresh: {min: 1m, max: 1s}\n", "line 3: refresh.max: 1s is below refresh.min 1m0s"},
		{"names: [a.test]\nresolvers: [127.0.0.1]\nrefresh: {min: 0s}\n", "refresh.min: must be positive"},
		{"names: [a.test]\nresolvers: [127.0.0.1]\nudp_size: 100\n", "line 3: udp_size: must be from 512 to 65535"},
		{"names: [a.test]\nresolvers: [127.0.0.1]\ntimeout: 0s\n", "timeout: must be positive"},
		{"names: [a.test]\nresolver: [127.0.0.1]\n", "line 2: resolver: unknown key"},
	} {
		_, err := newFromNode(node(tc.yaml), discovery.BuildContext{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}

func TestResolversFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	old := resolvConf
	t.Cleanup(func() { resolvConf = old })
	resolvConf = filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolvConf, []byte("search example.com\nnameserver 127.0.0.53\nnameserver ::1\n"), 0o644)
	s, err := NewSource(Config{Names: []Name{{FQDN: "a.test.", Host: "a.test"}}, MinRefresh: 1, MaxRefresh: 1, Timeout: 1, UDPSize: 512}, discovery.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Resolvers(); !slices.Equal(got, []string{"127.0.0.53:53", "[::1]:53"}) {
		t.Fatal(got)
	}
	resolvConf = filepath.Join(dir, "missing")
	if _, err := NewSource(Config{Names: []Name{{FQDN: "a.test.", Host: "a.test"}}, MinRefresh: 1, MaxRefresh: 1, Timeout: 1, UDPSize: 512}, discovery.BuildContext{}); err == nil || !strings.Contains(err.Error(), "resolvers") {
		t.Fatalf("no resolv.conf: %v", err)
	}
}

// TestContactWithPartialFailures: a round that only retries a refused name
// still counts as contact (the server answers); a round whose lookups get
// no answer at all does not.
func TestContactWithPartialFailures(t *testing.T) {
	d := startDNS(t)
	d.set(func(f *fakeDNS) {
		f.srv[api] = []srv{{10, 1, 8080, "a.example.test."}}
		f.hosts["a.example.test."] = []string{"10.0.0.1"}
		f.rcode["_x._tcp.refused.test."] = dns.RcodeRefused
		f.ttl = 3600
	})
	cfg := testConfig([]string{d.addr}, name(t, api, ""), name(t, "_x._tcp.refused.test", ""))
	cfg.MinRefresh, cfg.MaxRefresh = time.Millisecond, time.Hour
	s, err := NewSource(cfg, discovery.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	r := &run{Source: s, names: []*nameState{{Name: cfg.Names[0]}, {Name: cfg.Names[1]}}}
	if res := r.poll(context.Background()); res.Err == nil || len(res.Groups) != 1 {
		t.Fatalf("first round %+v", res)
	}
	r.names[1].next = time.Time{} // only the refused name is due
	res := r.poll(context.Background())
	if res.Err == nil || len(res.Groups) != 1 || res.Groups[0].Key != "_http._tcp.api.example.test" {
		t.Fatalf("a refused retry: %+v, want the resolved name restated (contact)", res)
	}
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	s.cfg.Resolvers = []string{silent.LocalAddr().String()}
	r.names[1].next = time.Time{}
	if res := r.poll(context.Background()); res.Err == nil || len(res.Groups) != 0 {
		t.Fatalf("a silent retry: %+v, want no contact", res)
	}
}
