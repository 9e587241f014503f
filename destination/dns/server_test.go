package dns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	t     *testing.T
	store *cache.Store
	srv   *Server
}

func ep(addr string, opts ...func(*discovery.Endpoint)) discovery.Endpoint {
	e := discovery.Endpoint{Addr: netip.MustParseAddrPort(addr)}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func critical(e *discovery.Endpoint) { e.Health = discovery.HealthCritical }
func inZone(z string) func(*discovery.Endpoint) {
	return func(e *discovery.Endpoint) { e.Zone = z }
}

func svc(auth string, eps ...discovery.Endpoint) discovery.Service {
	a, err := discovery.ParseAuthority(auth, 0)
	if err != nil {
		panic(err)
	}
	return discovery.Service{Authority: a, Endpoints: eps}
}

func (e *env) apply(source, key string, svcs ...discovery.Service) {
	e.t.Helper()
	if _, err := e.store.Apply(source, []discovery.Group{{Key: key, Services: svcs}}); err != nil {
		e.t.Fatal(err)
	}
}

// start runs a server on a free loopback port with cfg (listen is set
// here) and fed.
func start(t *testing.T, cfg Config, fed *discovery.Federation, setup func(*env)) *env {
	t.Helper()
	e := &env{t: t, store: cache.New()}
	if setup != nil {
		setup(e)
	}
	cfg.Listen = "127.0.0.1:0"
	set, err := cfg.Settings()
	if err != nil {
		t.Fatal(err)
	}
	var auths []discovery.Authority
	if fed != nil {
		for _, r := range fedRules {
			auths = append(auths, r.Authority)
		}
	}
	e.srv, err = New(Options{Store: e.store, Federation: fed, Settings: set, Authorities: auths})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return e
}

var fedRules []discovery.FederationRule

func demoZone() Config { return Config{Zones: []ZoneConfig{{Zone: "demo."}}} }

func (e *env) query(net, name string, qtype uint16, edns uint16) *mdns.Msg {
	e.t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &mdns.Client{Net: net, Timeout: 5 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, e.srv.Addr())
	if err != nil {
		e.t.Fatalf("%s %s %s: %v", net, name, mdns.TypeToString[qtype], err)
	}
	return r
}

func addrs(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch r := rr.(type) {
		case *mdns.A:
			out = append(out, r.A.String())
		case *mdns.AAAA:
			out = append(out, r.AAAA.String())
		}
	}
	slices.Sort(out)
	return out
}

func hasSOA(m *mdns.Msg, zone string) bool {
	return len(m.Ns) == 1 && m.Ns[0].Header().Rrtype == mdns.TypeSOA && m.Ns[0].Header().Name == zone
}

func TestAddressAnswers(t *testing.T) {
	e := start(t, demoZone(), nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:8080", ep("10.0.0.1:8080"), ep("10.0.0.2:8080"), ep("10.0.0.3:8080", critical), ep("[2001:db8::1]:8080")),
			svc("web.demo:9090", ep("10.0.0.4:9090")),
			svc("db.prod.demo:5432", ep("10.0.1.1:5432")),
			svc("empty.demo:80"))
	})
	r := e.query("udp", "web.demo.", mdns.TypeA, 0)
	if r.Rcode != mdns.RcodeSuccess || !r.Authoritative {
		t.Fatalf("rcode %s aa %v", mdns.RcodeToString[r.Rcode], r.Authoritative)
	}
	if got, want := addrs(r.Answer), []string{"10.0.0.1", "10.0.0.2", "10.0.0.4"}; !slices.Equal(got, want) {
		t.Fatalf("A %v, want %v (the critical endpoint left out, every port)", got, want)
	}
	if ttl := r.Answer[0].Header().Ttl; ttl != 5 {
		t.Fatalf("ttl %d", ttl)
	}
	r = e.query("udp", "WEB.Demo.", mdns.TypeAAAA, 0)
	if got := addrs(r.Answer); !slices.Equal(got, []string{"2001:db8::1"}) || r.Question[0].Name != "WEB.Demo." {
		t.Fatalf("AAAA %v, question %s", got, r.Question[0].Name)
	}
	// NODATA: the name exists, no record of the type.
	r = e.query("udp", "db.prod.demo.", mdns.TypeAAAA, 0)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 || !hasSOA(r, "demo.") {
		t.Fatalf("NODATA: %v", r)
	}
	r = e.query("udp", "empty.demo.", mdns.TypeA, 0)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 || !hasSOA(r, "demo.") {
		t.Fatalf("exists without endpoints: %v", r)
	}
	if soa := r.Ns[0].(*mdns.SOA); soa.Minttl != 5 || soa.Hdr.Ttl != 5 {
		t.Fatalf("SOA %v", soa)
	}
	// An empty non-terminal is NODATA (RFC 8020), a name under nothing NXDOMAIN.
	r = e.query("udp", "prod.demo.", mdns.TypeA, 0)
	if r.Rcode != mdns.RcodeSuccess || !hasSOA(r, "demo.") {
		t.Fatalf("empty non-terminal: %v", r)
	}
	r = e.query("udp", "nope.demo.", mdns.TypeA, 0)
	if r.Rcode != mdns.RcodeNameError || !hasSOA(r, "demo.") || !r.Authoritative {
		t.Fatalf("NXDOMAIN: %v", r)
	}
	r = e.query("udp", "web.other.", mdns.TypeA, 0)
	if r.Rcode != mdns.RcodeRefused || r.Authoritative {
		t.Fatalf("outside the zones: %v", r)
	}
	r = e.query("udp", "demo.", mdns.TypeSOA, 0)
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != mdns.TypeSOA {
		t.Fatalf("apex SOA: %v", r)
	}
	r = e.query("udp", "web.demo.", mdns.TypeTXT, 0)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 || !hasSOA(r, "demo.") {
		t.Fatalf("TXT: %v", r)
	}
}

func TestSRV(t *testing.T) {
	e := start(t, demoZone(), nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:8080", ep("10.0.0.1:18080", func(e *discovery.Endpoint) { e.Weight = 200000 }), ep("10.0.0.2:18081")),
			svc("web.demo:9090", ep("10.0.0.1:19090")))
	})
	r := e.query("udp", "web.demo.", mdns.TypeSRV, 0)
	var got []string
	for _, rr := range r.Answer {
		s := rr.(*mdns.SRV)
		got = append(got, fmt.Sprintf("%d %d %s", s.Priority, s.Port, s.Target))
		if s.Weight == 0 {
			t.Fatalf("weight 0: %v", s)
		}
	}
	slices.Sort(got)
	want := []string{"0 18080 0a000001.addr.demo.", "0 18081 0a000002.addr.demo.", "0 19090 0a000001.addr.demo."}
	if !slices.Equal(got, want) {
		t.Fatalf("SRV %v, want %v", got, want)
	}
	if x := addrs(r.Extra); !slices.Equal(x, []string{"10.0.0.1", "10.0.0.2"}) {
		t.Fatalf("additional %v", x)
	}
	r = e.query("udp", "_9090._tcp.web.demo.", mdns.TypeSRV, 0)
	if len(r.Answer) != 1 || r.Answer[0].(*mdns.SRV).Port != 19090 {
		t.Fatalf("one port: %v", r)
	}
	if r := e.query("udp", "_7777._tcp.web.demo.", mdns.TypeSRV, 0); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("undeclared port: %v", r)
	}
	if r := e.query("udp", "_tcp.web.demo.", mdns.TypeSRV, 0); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("_tcp.<name>: %v", r)
	}
	r = e.query("udp", "0a000002.addr.demo.", mdns.TypeA, 0)
	if x := addrs(r.Answer); !slices.Equal(x, []string{"10.0.0.2"}) {
		t.Fatalf("addr name: %v", r)
	}
}

// Failover tiers: Get serves tier 1; SRV gives tier 2 at priority 1.
func TestSRVFailoverPriorities(t *testing.T) {
	rules := []discovery.FederationRule{{
		Authority: discovery.Authority{Host: "pay.demo", Port: 80},
		Failover:  []discovery.Tier{{Sources: []string{"east"}}, {Sources: []string{"west"}}},
	}}
	fed, err := discovery.NewFederation(rules, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, demoZone(), fed, func(e *env) {
		e.apply("east", "k", svc("pay.demo:80", ep("10.0.0.1:80")))
		e.apply("west", "k", svc("pay.demo:80", ep("10.0.9.1:80"), ep("10.0.9.2:80", critical)))
	})
	r := e.query("udp", "pay.demo.", mdns.TypeSRV, 0)
	prio := map[string]uint16{}
	for _, rr := range r.Answer {
		s := rr.(*mdns.SRV)
		prio[s.Target] = s.Priority
	}
	want := map[string]uint16{"0a000001.addr.demo.": 0, "0a000901.addr.demo.": 1}
	if fmt.Sprint(prio) != fmt.Sprint(want) {
		t.Fatalf("priorities %v, want %v", prio, want)
	}
	if got := addrs(e.query("udp", "pay.demo.", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.0.0.1"}) {
		t.Fatalf("A %v: tier 1 only, as Get", got)
	}
}

// A name that exists only as a federation rule answers through its aliases.
func TestRuleAuthorityAnswersThroughAliases(t *testing.T) {
	fedRules = []discovery.FederationRule{{
		Authority: discovery.Authority{Host: "web.demo", Port: 8080},
		Aliases:   []discovery.Authority{{Host: "web.service.dc1.consul", Port: 80}},
	}}
	t.Cleanup(func() { fedRules = nil })
	fed, err := discovery.NewFederation(fedRules, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, demoZone(), fed, func(e *env) {
		e.apply("consul", "k", svc("web.service.dc1.consul:80", ep("10.2.0.1:80")))
	})
	if got := addrs(e.query("udp", "web.demo.", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.2.0.1"}) {
		t.Fatalf("A %v", got)
	}
}

func TestTruncationAndTCP(t *testing.T) {
	var eps []discovery.Endpoint
	for i := range 100 {
		eps = append(eps, ep(fmt.Sprintf("10.1.%d.%d:80", i/250, 1+i%250)))
	}
	e := start(t, demoZone(), nil, func(e *env) { e.apply("file", "k", svc("big.demo:80", eps...)) })
	r := e.query("udp", "big.demo.", mdns.TypeA, 0)
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Fatalf("UDP without EDNS0: TC %v with %d answers", r.Truncated, len(r.Answer))
	}
	small := len(r.Answer)
	r = e.query("udp", "big.demo.", mdns.TypeA, 4096)
	if !r.Truncated || len(r.Answer) <= small || r.IsEdns0() == nil || r.IsEdns0().UDPSize() != DefaultUDPSize {
		t.Fatalf("EDNS0 4096: TC %v, %d answers (more than %d), opt %v", r.Truncated, len(r.Answer), small, r.IsEdns0())
	}
	r.Compress = true
	if b, err := r.Pack(); err != nil || len(b) > DefaultUDPSize {
		t.Fatalf("UDP answer of %d bytes over udp_size (%v)", len(b), err)
	}
	r = e.query("tcp", "big.demo.", mdns.TypeA, 0)
	if r.Truncated || len(r.Answer) != 100 {
		t.Fatalf("TCP: TC %v with %d answers", r.Truncated, len(r.Answer))
	}
}

func TestMaxAnswers(t *testing.T) {
	cfg := demoZone()
	cfg.MaxAnswers = 3
	e := start(t, cfg, nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80"), ep("10.0.0.4:80"), ep("10.0.0.5:80")))
	})
	seen := map[string]bool{}
	for range 50 {
		r := e.query("tcp", "web.demo.", mdns.TypeA, 0)
		if len(r.Answer) != 3 || r.Truncated {
			t.Fatalf("%d answers, TC %v", len(r.Answer), r.Truncated)
		}
		for _, a := range addrs(r.Answer) {
			seen[a] = true
		}
	}
	if len(seen) != 5 {
		t.Fatalf("shuffled answers covered %d of 5 addresses in 50 queries", len(seen))
	}
}

func TestClientZoneFirst(t *testing.T) {
	cfg := demoZone()
	cfg.ClientZones = map[string]string{"127.0.0.0/8": "zone-b", "10.9.0.0/16": "zone-a"}
	var eps []discovery.Endpoint
	for i := range 6 {
		z := "zone-a"
		if i%2 == 1 {
			z = "zone-b"
		}
		eps = append(eps, ep(fmt.Sprintf("10.0.0.%d:80", i+1), inZone(z)))
	}
	e := start(t, cfg, nil, func(e *env) { e.apply("file", "k", svc("web.demo:80", eps...)) })
	for range 20 {
		r := e.query("udp", "web.demo.", mdns.TypeA, 0)
		for i, rr := range r.Answer[:3] {
			if last := rr.(*mdns.A).A[3]; last%2 != 0 { // zone-b: .2 .4 .6
				t.Fatalf("answer %d is %v, not in the client's zone-b: %v", i, rr, r.Answer)
			}
		}
	}
	// EDNS0 client subnet names the client behind a forwarder.
	m := new(mdns.Msg)
	m.SetQuestion("web.demo.", mdns.TypeA)
	m.SetEdns0(1232, false)
	o := m.IsEdns0()
	o.Option = append(o.Option, &mdns.EDNS0_SUBNET{Code: mdns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: netip.MustParseAddr("10.9.1.0").AsSlice()})
	r, _, err := (&mdns.Client{}).Exchange(m, e.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	for _, rr := range r.Answer[:3] {
		if rr.(*mdns.A).A[3]%2 != 1 {
			t.Fatalf("ECS in zone-a, answers %v", r.Answer)
		}
	}
}

// An endpoint that turns critical leaves the next answer; the answer never
// mixes two registry states (each reads one snapshot).
func TestHealthChangeLeavesAnswers(t *testing.T) {
	e := start(t, demoZone(), nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80")))
	})
	if got := addrs(e.query("udp", "web.demo.", mdns.TypeA, 0).Answer); len(got) != 3 {
		t.Fatalf("%v", got)
	}
	e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80", critical), ep("10.0.0.3:80")))
	if got := addrs(e.query("udp", "web.demo.", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.0.0.1", "10.0.0.3"}) {
		t.Fatalf("after the change: %v", got)
	}
	// Panic threshold, as Get: 1 serving of 3 serves all.
	e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80", critical), ep("10.0.0.2:80", critical), ep("10.0.0.3:80")))
	if got := addrs(e.query("udp", "web.demo.", mdns.TypeA, 0).Answer); len(got) != 3 {
		t.Fatalf("panic: %v", got)
	}
	// Withdrawn: NXDOMAIN at once (the index of names is rebuilt first).
	e.apply("file", "k")
	if r := e.query("udp", "web.demo.", mdns.TypeA, 0); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("withdrawn: %v", r)
	}
}

func TestHostsMapping(t *testing.T) {
	cfg := Config{Zones: []ZoneConfig{{Zone: "mesh.", Hosts: "."}, {Zone: "service.consul", Hosts: "service.dc1.consul"}}}
	e := start(t, cfg, nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80")), svc("api.service.dc1.consul:80", ep("10.0.0.2:80")))
	})
	if got := addrs(e.query("udp", "web.demo.mesh.", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.0.0.1"}) {
		t.Fatalf("strip: %v", got)
	}
	if got := addrs(e.query("udp", "api.service.consul.", mdns.TypeA, 0).Answer); !slices.Equal(got, []string{"10.0.0.2"}) {
		t.Fatalf("replace: %v", got)
	}
	if r := e.query("udp", "demo.mesh.", mdns.TypeA, 0); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("empty non-terminal under a stripped zone: %v", r)
	}
}

func TestVirtualIPs(t *testing.T) {
	cfg := Config{Zones: []ZoneConfig{{Zone: "demo.", VirtualIPs: true}}, VirtualIPs: &VIPConfig{CIDR: "240.0.0.0/16"}}
	e := start(t, cfg, nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:8080", ep("10.0.0.1:18080")), svc("web.demo:9090", ep("10.0.0.1:19090")))
	})
	r := e.query("udp", "web.demo.", mdns.TypeA, 0)
	if len(r.Answer) != 1 {
		t.Fatalf("%v", r)
	}
	ip, _ := netip.AddrFromSlice(r.Answer[0].(*mdns.A).A)
	ip = ip.Unmap()
	if !netip.MustParsePrefix("240.0.0.0/16").Contains(ip) {
		t.Fatalf("VIP %s outside the range", ip)
	}
	host, changed, ok := e.srv.LookupVIP(ip)
	if !ok || host != "web.demo" || changed == nil {
		t.Fatalf("LookupVIP(%s) = %q %v", ip, host, ok)
	}
	r = e.query("udp", "web.demo.", mdns.TypeSRV, 0)
	var ports []uint16
	for _, rr := range r.Answer {
		s := rr.(*mdns.SRV)
		ports = append(ports, s.Port)
		if s.Target != "web.demo." {
			t.Fatalf("target %s", s.Target)
		}
	}
	slices.Sort(ports)
	if !slices.Equal(ports, []uint16{8080, 9090}) || len(addrs(r.Extra)) != 1 {
		t.Fatalf("SRV ports %v extra %v", ports, r.Extra)
	}
	if r := e.query("udp", "web.demo.", mdns.TypeAAAA, 0); len(r.Answer) != 0 || r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("AAAA with an IPv4 range: %v", r)
	}
	// A new host has its VIP at once, and the old answer's channel closes.
	e.apply("file", "k2", svc("api.demo:80", ep("10.0.0.9:80")))
	r = e.query("udp", "api.demo.", mdns.TypeA, 0)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("new host: %v", r)
	}
	<-changed
	api, _ := netip.AddrFromSlice(r.Answer[0].(*mdns.A).A)
	if h, _, _ := e.srv.LookupVIP(api.Unmap()); h != "api.demo" {
		t.Fatalf("api VIP %s maps to %q", api, h)
	}
	// Same registry, a new server (a restart, or another replica): same VIPs.
	set, _ := cfg.Settings()
	other, err := New(Options{Store: e.store, Settings: set})
	if err != nil {
		t.Fatal(err)
	}
	other.refresh(context.Background())
	if v, _ := other.VIP("web.demo"); v != ip {
		t.Fatalf("another server gives web.demo %s, this one %s", v, ip)
	}
}

func TestRejects(t *testing.T) {
	e := start(t, demoZone(), nil, nil)
	m := new(mdns.Msg)
	m.SetQuestion("web.demo.", mdns.TypeA)
	m.Opcode = mdns.OpcodeStatus
	r := e.srv.Answer(m, netip.Addr{}, true)
	if r.Rcode != mdns.RcodeNotImplemented {
		t.Fatalf("opcode STATUS: %s", mdns.RcodeToString[r.Rcode])
	}
	m = new(mdns.Msg)
	m.SetQuestion("web.demo.", mdns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	if r := e.srv.Answer(m, netip.Addr{}, true); r.Rcode != mdns.RcodeBadVers {
		t.Fatalf("EDNS version 1: %s", mdns.RcodeToString[r.Rcode])
	}
	m = new(mdns.Msg)
	m.Question = []mdns.Question{{Name: "a.demo.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}, {Name: "b.demo.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET}}
	if r := e.srv.Answer(m, netip.Addr{}, true); r.Rcode != mdns.RcodeFormatError {
		t.Fatalf("two questions: %s", mdns.RcodeToString[r.Rcode])
	}
	m = new(mdns.Msg)
	m.SetQuestion("demo.", mdns.TypeAXFR)
	if r := e.query("tcp", "demo.", mdns.TypeAXFR, 0); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("AXFR: %v", r)
	}
	// A CHAOS query (version.bind) is not ours.
	m = new(mdns.Msg)
	m.SetQuestion("version.bind.", mdns.TypeTXT)
	m.Question[0].Qclass = mdns.ClassCHAOS
	if r := e.srv.Answer(m, netip.Addr{}, true); r.Rcode != mdns.RcodeRefused {
		t.Fatalf("CHAOS: %s", mdns.RcodeToString[r.Rcode])
	}
	// Garbage over the wire: miekg/dns answers FORMERR or drops it; the
	// server keeps answering.
	c := &mdns.Client{Net: "udp", Timeout: time.Second}
	conn, err := c.Dial(e.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	_, _ = conn.Write(make([]byte, 9000))
	conn.Close()
	if r := e.query("udp", "nope.demo.", mdns.TypeA, 0); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("after garbage: %v", r)
	}
}

func TestStartupWaitsForSync(t *testing.T) {
	store := cache.New()
	set, _ := (Config{Listen: "127.0.0.1:0", Zones: []ZoneConfig{{Zone: "demo."}}}).Settings()
	synced := make(chan struct{})
	s, err := New(Options{Store: store, Settings: set, Synced: synced, StartupTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	m := new(mdns.Msg)
	m.SetQuestion("web.demo.", mdns.TypeA)
	if r := s.Answer(m, netip.Addr{}, true); r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("before sync: %s", mdns.RcodeToString[r.Rcode])
	}
	close(synced)
	if r := s.Answer(m, netip.Addr{}, true); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("after sync: %s", mdns.RcodeToString[r.Rcode])
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{}, "at least one zone"},
		{Config{Zones: []ZoneConfig{{Zone: "."}}}, "root"},
		{Config{Zones: []ZoneConfig{{Zone: "demo."}, {Zone: "DEMO"}}}, "twice"},
		{Config{Zones: []ZoneConfig{{Zone: "demo.", VirtualIPs: true}}}, "virtual_ips"},
		{Config{Zones: []ZoneConfig{{Zone: "demo."}}, Listen: "localhost"}, "ip:port"},
		{Config{Zones: []ZoneConfig{{Zone: "demo."}}, UDPSize: 100}, "udp_size"},
		{Config{Zones: []ZoneConfig{{Zone: "demo."}}, ClientZones: map[string]string{"x": "a"}}, "CIDR"},
		{Config{Zones: []ZoneConfig{{Zone: "demo.", VirtualIPs: true}}, VirtualIPs: &VIPConfig{CIDR: "240.0.0.0/16", Pins: map[string]string{"a.demo": "10.0.0.1"}}}, "usable"},
	} {
		_, err := tc.c.Settings()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
	s, err := Config{Zones: []ZoneConfig{{Zone: "Demo"}, {Zone: "x.demo."}}}.Settings()
	if err != nil {
		t.Fatal(err)
	}
	if s.Listen != DefaultListen || s.TTL != 5 || s.Zones[0].Name != "x.demo." || s.Zones[1].Name != "demo." || s.Zones[1].Hosts != "demo" {
		t.Fatalf("%+v", s)
	}
}

func TestMetrics(t *testing.T) {
	store := cache.New()
	if _, err := store.Apply("file", []discovery.Group{{Key: "k", Services: []discovery.Service{svc("web.demo:80", ep("10.0.0.1:80"))}}}); err != nil {
		t.Fatal(err)
	}
	set, _ := Config{Listen: "127.0.0.1:0", Zones: []ZoneConfig{{Zone: "demo.", VirtualIPs: true}}, VirtualIPs: &VIPConfig{CIDR: "240.0.0.0/16"}}.Settings()
	reg := prometheus.NewRegistry()
	s, err := New(Options{Store: store, Settings: set, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	e := &env{t: t, store: store, srv: s}
	e.query("udp", "web.demo.", mdns.TypeA, 0)
	e.query("udp", "nope.demo.", mdns.TypeA, 0)
	e.query("udp", "x.other.", mdns.TypeA, 0)
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"tributary_dns_answers_total{NOERROR}": 1, "tributary_dns_answers_total{NXDOMAIN}": 1, "tributary_dns_answers_total{REFUSED}": 1,
		"tributary_dns_names": 1, "tributary_dns_virtual_ips": 1, "tributary_dns_virtual_ip_collisions": 0,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
}

// Queries racing with registry changes: every answer is one of the states
// written (never a mix), and once the writes stop the answer is the last.
func TestConcurrentQueriesAndChanges(t *testing.T) {
	e := start(t, demoZone(), nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80")))
	})
	states := map[string]bool{"[10.0.0.1 10.0.0.2 10.0.0.3]": true, "[10.0.0.1 10.0.0.3]": true}
	stop := make(chan struct{})
	errs := make(chan string, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m := new(mdns.Msg)
		m.SetQuestion("web.demo.", mdns.TypeA)
		for {
			select {
			case <-stop:
				return
			default:
			}
			got := fmt.Sprint(addrs(e.srv.Answer(m, netip.Addr{}, false).Answer))
			if !states[got] {
				select {
				case errs <- got:
				default:
				}
			}
		}
	}()
	for i := range 200 {
		if i%2 == 0 {
			e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80", critical), ep("10.0.0.3:80")))
		} else {
			e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80")))
		}
	}
	e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"), ep("10.0.0.2:80", critical), ep("10.0.0.3:80")))
	close(stop)
	<-done
	select {
	case got := <-errs:
		t.Fatalf("an answer of no state written: %s", got)
	default:
	}
	if got := addrs(e.query("udp", "web.demo.", mdns.TypeA, 0).Answer); fmt.Sprint(got) != "[10.0.0.1 10.0.0.3]" {
		t.Fatalf("after the last write: %v", got)
	}
}

// An IPv6 range answers AAAA; A is NODATA. ANY gives the address records.
func TestVirtualIPv6AndANY(t *testing.T) {
	cfg := Config{Zones: []ZoneConfig{{Zone: "demo.", VirtualIPs: true}}, VirtualIPs: &VIPConfig{CIDR: "fd00:7472:6962::/64"}}
	e := start(t, cfg, nil, func(e *env) { e.apply("file", "k", svc("web.demo:8080", ep("10.0.0.1:18080"))) })
	r := e.query("udp", "web.demo.", mdns.TypeAAAA, 0)
	if got := addrs(r.Answer); len(got) != 1 || got[0] != "fd00:7472:6962:0:dec5:1356:9e79:40fb" {
		t.Fatalf("AAAA %v", got)
	}
	if r := e.query("udp", "web.demo.", mdns.TypeA, 0); len(r.Answer) != 0 || r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("A with an IPv6 range: %v", r)
	}
	plain := start(t, demoZone(), nil, func(e *env) {
		e.apply("file", "k", svc("web.demo:8080", ep("10.0.0.1:18080"), ep("[2001:db8::1]:18080")))
	})
	if got := addrs(plain.query("tcp", "web.demo.", mdns.TypeANY, 0).Answer); fmt.Sprint(got) != "[10.0.0.1 2001:db8::1]" {
		t.Fatalf("ANY %v", got)
	}
}

// The index derived change by change equals the one built from scratch.
func TestIndexIncremental(t *testing.T) {
	cfg := Config{Zones: []ZoneConfig{{Zone: "demo."}, {Zone: "virtual.demo.", Hosts: "demo", VirtualIPs: true}},
		VirtualIPs: &VIPConfig{CIDR: "10.9.0.0/26"}}
	set, err := cfg.Settings()
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Store: cache.New(), Settings: set, Authorities: []discovery.Authority{{Host: "rule.x.demo", Port: 80}}})
	if err != nil {
		t.Fatal(err)
	}
	var idx *index
	present := map[string]bool{}
	for step := range 200 {
		for k := range 5 {
			h := fmt.Sprintf("s%d.p%d.demo", (step*7+k*13)%60, (step+k)%3)
			present[h] = !present[h]
		}
		var hosts []string
		for h, ok := range present {
			if ok {
				hosts = append(hosts, h)
			}
		}
		slices.Sort(hosts)
		idx = s.buildIndex(context.Background(), idx, hosts, nil)
		fresh := s.buildIndex(context.Background(), nil, hosts, nil)
		if idx.names.Len() != fresh.names.Len() || !slices.Equal(idx.hosts, fresh.hosts) || !slices.Equal(idx.vipHosts, fresh.vipHosts) {
			t.Fatalf("step %d: %d names vs %d", step, idx.names.Len(), fresh.names.Len())
		}
		for _, h := range fresh.hosts {
			for _, n := range []string{h + ".", strings.TrimSuffix(h, ".demo") + ".virtual.demo."} {
				if !idx.has(n) {
					t.Fatalf("step %d: %s missing", step, n)
				}
				if _, parent, _ := cutLabel(n); parent != "demo." && parent != "virtual.demo." && !idx.has(parent) {
					t.Fatalf("step %d: empty non-terminal %s missing", step, parent)
				}
			}
			a, ok := idx.vips.Lookup(h)
			b, okb := fresh.vips.Lookup(h)
			if a != b || ok != okb {
				t.Fatalf("step %d: %s VIP %v %v, from scratch %v %v", step, h, a, ok, b, okb)
			}
		}
	}
	if !idx.has("rule.x.demo.") || !idx.has("x.demo.") {
		t.Fatal("a configured authority's name is missing")
	}
}

// GetProfile streams of virtual IPs wake when the virtual IP table
// changes, not for every service that comes or goes.
func TestVIPChangedChannel(t *testing.T) {
	cfg := Config{Zones: []ZoneConfig{{Zone: "demo."}, {Zone: "virtual.demo.", Hosts: "demo", VirtualIPs: true}, {Zone: "other."}},
		VirtualIPs: &VIPConfig{CIDR: "240.0.0.0/16"}}
	e := start(t, cfg, nil, func(e *env) { e.apply("file", "k", svc("web.demo:80", ep("10.0.0.1:80"))) })
	vipAddr, ok := e.srv.VIP("web.demo")
	if !ok {
		t.Fatal("no VIP")
	}
	_, changed, _ := e.srv.LookupVIP(vipAddr)
	e.apply("file", "k2", svc("x.other:80", ep("10.0.0.2:80"))) // no name in the VIP zone
	if _, again, _ := e.srv.LookupVIP(vipAddr); again != changed {
		t.Fatal("a host outside the zones with virtual IPs replaced the table's channel")
	}
	e.apply("file", "k3", svc("api.demo:80", ep("10.0.0.3:80")))
	e.srv.LookupVIP(vipAddr) // brings the index up to date
	select {
	case <-changed:
	default:
		t.Fatal("a new host with a virtual IP did not close the channel")
	}
}
