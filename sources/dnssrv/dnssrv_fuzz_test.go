package dnssrv

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

// replayDNS answers every SRV query with the fuzzed message, and A and
// AAAA queries with the records of that type and owner in the message's
// authority section (a stand-in for the rest of the zone).
type replayDNS struct {
	mu  sync.Mutex
	msg *dns.Msg
}

func (r *replayDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	r.mu.Lock()
	m := r.msg
	r.mu.Unlock()
	resp := new(dns.Msg)
	resp.SetReply(req)
	q := req.Question[0]
	if q.Qtype == dns.TypeSRV {
		resp.Rcode = m.Rcode
		resp.Answer, resp.Ns, resp.Extra = m.Answer, m.Ns, m.Extra
	} else {
		for _, rr := range m.Ns {
			if rr.Header().Rrtype == q.Qtype && strings.EqualFold(rr.Header().Name, q.Name) {
				resp.Answer = append(resp.Answer, rr)
			}
		}
	}
	if b, err := resp.Pack(); err != nil || len(b) > 65000 {
		resp = new(dns.Msg)
		resp.SetRcode(req, dns.RcodeServerFailure)
	}
	w.WriteMsg(resp)
}

// FuzzAnswer feeds DNS answers (wire bytes) through a lookup: it must not
// panic, and the group it finds must be well-formed and accepted by the
// registry.
func FuzzAnswer(f *testing.F) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	replay := &replayDNS{}
	server := &dns.Server{PacketConn: pc, Handler: replay, UDPSize: dns.MaxMsgSize}
	started := make(chan struct{})
	server.NotifyStartedFunc = func() { close(started) }
	go server.ActivateAndServe()
	<-started
	f.Cleanup(func() { server.Shutdown() })
	cfg := Config{Resolvers: []string{pc.LocalAddr().String()}, MinRefresh: time.Second, MaxRefresh: time.Minute, Timeout: 100 * time.Millisecond, UDPSize: dns.MaxMsgSize}
	s := &Source{cfg: cfg, log: slog.New(slog.DiscardHandler)}

	const qname = "_http._tcp.api.example.test."
	seed := func(rcode int, answer, ns, extra []dns.RR) {
		m := new(dns.Msg)
		m.SetQuestion(qname, dns.TypeSRV)
		m.Response, m.Rcode = true, rcode
		m.Answer, m.Ns, m.Extra = answer, ns, extra
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(0))
		f.Add(b, uint16(9000))
	}
	hdr := func(n string, t uint16, ttl uint32) dns.RR_Header {
		return dns.RR_Header{Name: n, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	srvRR := func(prio, weight, port uint16, target string) dns.RR {
		return &dns.SRV{Hdr: hdr(qname, dns.TypeSRV, 30), Priority: prio, Weight: weight, Port: port, Target: target}
	}
	a := func(n, ip string) dns.RR { return &dns.A{Hdr: hdr(n, dns.TypeA, 20), A: net.ParseIP(ip)} }
	aaaa := func(n, ip string) dns.RR { return &dns.AAAA{Hdr: hdr(n, dns.TypeAAAA, 20), AAAA: net.ParseIP(ip)} }
	seed(dns.RcodeSuccess,
		[]dns.RR{srvRR(10, 5, 8080, "a.example.test."), srvRR(10, 0, 8080, "B.example.test."), srvRR(20, 0, 8081, "c.example.test."), srvRR(30, 1, 80, "."), srvRR(1, 1, 0, "a.example.test.")},
		[]dns.RR{a("c.example.test.", "10.0.0.3"), aaaa("c.example.test.", "fd00::3")},
		[]dns.RR{a("a.example.test.", "10.0.0.1"), aaaa("a.example.test.", "fd00::1"), a("b.example.test.", "10.0.0.2"), aaaa("b.example.test.", "::ffff:10.0.0.2")})
	seed(dns.RcodeSuccess,
		[]dns.RR{srvRR(20, 3, 9000, "a.example.test."), srvRR(10, 7, 9000, "a.example.test."), srvRR(10, 0, 9001, "x.example.test.")},
		nil, []dns.RR{a("a.example.test.", "10.0.0.1"), a("a.example.test.", "10.0.0.1"), aaaa("A.EXAMPLE.TEST.", "fd00::1")})
	seed(dns.RcodeNameError, nil,
		[]dns.RR{&dns.SOA{Hdr: hdr("test.", dns.TypeSOA, 60), Ns: "ns.test.", Mbox: "h.test.", Minttl: 7}}, nil)
	seed(dns.RcodeSuccess, []dns.RR{a(qname, "10.9.9.9")}, nil, nil)

	f.Fuzz(func(t *testing.T, wire []byte, port uint16) {
		if len(wire) > 4096 {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(wire); err != nil {
			return
		}
		replay.mu.Lock()
		replay.msg = m
		replay.mu.Unlock()
		n := Name{FQDN: qname, Host: "api.example.test", Port: port}
		o := s.lookup(context.Background(), n)
		if o.err != nil || o.empty {
			if len(o.group.Services) != 0 {
				t.Fatalf("an error or empty outcome with services: %+v", o)
			}
			return
		}
		if o.group.Key != n.Key() {
			t.Fatalf("group key %q, want %q", o.group.Key, n.Key())
		}
		sinktest.CheckGroup(t, o.group)
		for _, svc := range o.group.Services {
			if port != 0 && svc.Authority.Port != port {
				t.Fatalf("authority %q, want port %d", svc.Authority, port)
			}
		}
	})
}
