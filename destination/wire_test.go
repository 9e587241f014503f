package destination

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/discovery"
)

// updateKind names an update as the metrics count it.
func updateKind(u *pb.Update) string {
	switch u.GetUpdate().(type) {
	case *pb.Update_Add:
		return "add"
	case *pb.Update_Remove:
		return "remove"
	default:
		return "no_endpoints"
	}
}

// marshalled is what proto.Marshal, with map keys in order, makes of
// diff's updates: the reference encodeDiff must equal byte for byte.
func marshalled(t *testing.T, us []*pb.Update) []encoded {
	t.Helper()
	var out []encoded
	for _, u := range us {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, encoded{kind: updateKind(u), b: b})
	}
	return out
}

func sameEncoded(t *testing.T, where string, got, want []encoded) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d messages, want %d", where, len(got), len(want))
	}
	for i := range got {
		if got[i].kind != want[i].kind || !bytes.Equal(got[i].b, want[i].b) {
			var u pb.Update
			err := proto.Unmarshal(got[i].b, &u)
			t.Fatalf("%s: message %d is %s %x (%v, %v),\nwant %s %x", where, i, got[i].kind, got[i].b, &u, err, want[i].kind, want[i].b)
		}
	}
}

func TestEncodedUpdatesMatchProto(t *testing.T) {
	long := strings.Repeat("x", 300) // lengths past one varint byte, at every level
	eps := []*discovery.Endpoint{
		{Addr: netip.MustParseAddrPort("10.0.0.1:8080")},
		{Addr: netip.MustParseAddrPort("0.0.0.0:0"), Weight: 7},
		{Addr: netip.MustParseAddrPort("[::]:1")},
		{Addr: netip.MustParseAddrPort("[::1]:443"), Zone: "zone-a", Source: "consul/dc1",
			Labels:   map[string]string{"pod": "web-1", "zone": "ignored", "source": "ignored", "zone_locality": "ignored", "a": "", "": "empty key"},
			Identity: discovery.Identity{Kind: discovery.IdentityDNS, Name: "web.ns.serviceaccount.identity.linkerd.cluster.local"},
			Protocol: discovery.ProtocolH2},
		{Addr: netip.MustParseAddrPort("[2001:db8::ffff:0:1]:9000"), Zone: "zone-b",
			Identity: discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://prod/ns/web/sa/" + long, ServerName: "web." + long},
			Protocol: discovery.ProtocolOpaque, Labels: map[string]string{long: long}},
		{Addr: netip.MustParseAddrPort("192.168.1.1:1"), Identity: discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://no/server/name"}},
		{Addr: netip.MustParseAddrPort("[::ffff:10.1.1.1]:80"), Source: "file"},
		// opaque_transport with each hint (Linkerd sends it with h2 too when
		// it forces opaque transport), alone, and at a port past one varint byte.
		{Addr: netip.MustParseAddrPort("10.0.0.2:3306"), Protocol: discovery.ProtocolOpaque, OpaqueTransport: 4143,
			Identity: discovery.Identity{Kind: discovery.IdentityDNS, Name: "db.ns.serviceaccount.identity.linkerd.cluster.local"}},
		{Addr: netip.MustParseAddrPort("10.0.0.3:8080"), Protocol: discovery.ProtocolH2, OpaqueTransport: 65535},
		{Addr: netip.MustParseAddrPort("10.0.0.4:8080"), OpaqueTransport: 1},
		{Addr: netip.MustParseAddrPort("[fd00::5]:6379"), Protocol: discovery.ProtocolOpaque, OpaqueTransport: 127},
	}
	many := map[string]string{}
	for i := range 40 { // more than the label keys kept on the stack
		many[fmt.Sprint("k", i)] = fmt.Sprint("v", i)
	}
	eps = append(eps, &discovery.Endpoint{Addr: netip.MustParseAddrPort("10.9.9.9:9"), Labels: many, Zone: "zone-a"})

	sorted := func(es ...*discovery.Endpoint) []*discovery.Endpoint {
		v := append([]*discovery.Endpoint(nil), es...)
		for i := range v { // insertion sort by address, as views are
			for j := i; j > 0 && v[j].Addr.Compare(v[j-1].Addr) < 0; j-- {
				v[j], v[j-1] = v[j-1], v[j]
			}
		}
		return v
	}
	all := &view{exists: true, endpoints: sorted(eps...)}
	half := &view{exists: true, endpoints: sorted(eps[:4]...)}
	for _, zone := range []string{"", "zone-a", "zone-b"} {
		for _, c := range []struct {
			name      string
			prev, cur *view
		}{
			{"first, all", nil, all},
			{"first, none", nil, &view{exists: true}},
			{"first, absent", nil, &view{}},
			{"grow", half, all},
			{"shrink", all, half},
			{"to empty", all, &view{exists: true}},
			{"gone", &view{exists: true}, &view{}},
			{"unchanged", all, all},
		} {
			where := fmt.Sprintf("%s, zone %q", c.name, zone)
			sameEncoded(t, where, encodeDiff(c.prev, c.cur, zone), marshalled(t, diff(c.prev, c.cur, zone)))
		}
	}
}

func BenchmarkEncodeDiff(b *testing.B) {
	prev := &view{exists: true}
	for i := range 10 {
		prev.endpoints = append(prev.endpoints, &discovery.Endpoint{
			Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 8080), Source: "bench", Zone: "zone-a",
			Labels:   map[string]string{"bench_ts": "1764118800000000000", "bench_seq": fmt.Sprint(i)},
			Identity: discovery.Identity{Kind: discovery.IdentityDNS, Name: "web.ns.serviceaccount.identity.linkerd.cluster.local"},
		})
	}
	cur := &view{exists: true, endpoints: append([]*discovery.Endpoint(nil), prev.endpoints...)}
	changed := *cur.endpoints[3]
	changed.Weight = 5
	cur.endpoints[3] = &changed
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			encodeDiff(prev, cur, "zone-a")
		}
	})
	b.Run("proto.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, u := range diff(prev, cur, "zone-a") {
				if _, err := proto.Marshal(u); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
