package dns

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// FuzzAnswer feeds arbitrary bytes through what the server does with a
// datagram: miekg/dns's accept check and unpack (which answer FORMERR or
// drop what fails them, before the handler), then Answer. Whatever passes
// must get a response that packs, keeps the query's id, and fits the
// client's UDP size.
func FuzzAnswer(f *testing.F) {
	s := fuzzServer(f)
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  uint16
	}{
		{"web.demo.", mdns.TypeA, 0}, {"web.demo.", mdns.TypeSRV, 4096}, {"big.demo.", mdns.TypeA, 0},
		{"big.demo.", mdns.TypeSRV, 1232}, {"_80._tcp.big.demo.", mdns.TypeSRV, 0}, {"0a000001.addr.demo.", mdns.TypeA, 0},
		{"web.vip.", mdns.TypeA, 0}, {"web.vip.", mdns.TypeSRV, 0}, {"nope.demo.", mdns.TypeAAAA, 512},
		{"demo.", mdns.TypeSOA, 0}, {"x.other.", mdns.TypeA, 0}, {"prod.demo.", mdns.TypeANY, 0},
	} {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns > 0 {
			m.SetEdns0(q.edns, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, true)
	}
	f.Add([]byte{0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}, false)
	f.Fuzz(func(t *testing.T, b []byte, udp bool) {
		var dh mdns.Header
		if len(b) < 12 {
			return
		}
		dh = mdns.Header{Id: uint16(b[0])<<8 | uint16(b[1]), Bits: uint16(b[2])<<8 | uint16(b[3]),
			Qdcount: uint16(b[4])<<8 | uint16(b[5]), Ancount: uint16(b[6])<<8 | uint16(b[7]),
			Nscount: uint16(b[8])<<8 | uint16(b[9]), Arcount: uint16(b[10])<<8 | uint16(b[11])}
		if mdns.DefaultMsgAcceptFunc(dh) != mdns.MsgAccept {
			return // FORMERR, NOTIMP or dropped by miekg/dns
		}
		req := new(mdns.Msg)
		if req.Unpack(b) != nil {
			return // FORMERR by miekg/dns
		}
		resp := s.Answer(req, netip.MustParseAddr("127.0.0.1"), udp)
		if resp == nil {
			return
		}
		out, err := resp.Pack()
		if err != nil {
			t.Fatalf("response does not pack: %v\n%v", err, resp)
		}
		if resp.Id != req.Id || !resp.Response {
			t.Fatalf("id %d for query %d, QR %v", resp.Id, req.Id, resp.Response)
		}
		if udp {
			limit := mdns.MinMsgSize
			if o := req.IsEdns0(); o != nil {
				limit = int(max(min(o.UDPSize(), s.set.UDPSize), mdns.MinMsgSize))
			}
			if len(out) > limit {
				t.Fatalf("UDP response of %d bytes over the client's %d", len(out), limit)
			}
		}
		var back mdns.Msg
		if err := back.Unpack(out); err != nil {
			t.Fatalf("response does not unpack: %v", err)
		}
	})
}

func fuzzServer(f *testing.F) *Server {
	store := cache.New()
	var big []discovery.Endpoint
	for i := range 300 {
		big = append(big, discovery.Endpoint{Addr: netip.MustParseAddrPort(fmt.Sprintf("10.1.%d.%d:80", i/200, 1+i%200))})
		big = append(big, discovery.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)), 443)})
	}
	g := discovery.Group{Key: "k", Services: []discovery.Service{
		{Authority: discovery.Authority{Host: "web.demo", Port: 80}, Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:80")}}},
		{Authority: discovery.Authority{Host: "big.demo", Port: 80}, Endpoints: big},
		{Authority: discovery.Authority{Host: "db.prod.demo", Port: 0}, Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.2:5432")}}},
		{Authority: discovery.Authority{Host: "web.vip", Port: 80}, Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.3:80")}}},
	}}
	if _, err := store.Apply("file", []discovery.Group{g}); err != nil {
		f.Fatal(err)
	}
	set, err := Config{Zones: []ZoneConfig{{Zone: "demo."}, {Zone: "vip.", VirtualIPs: true}},
		VirtualIPs: &VIPConfig{CIDR: "240.0.0.0/12"}}.Settings()
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(Options{Store: store, Settings: set})
	if err != nil {
		f.Fatal(err)
	}
	s.refresh(context.Background())
	return s
}
