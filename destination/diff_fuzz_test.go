package destination

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/discovery"
)

// fuzzPool is the addresses the diff fuzzer plays with: IPv4 and IPv6, and
// one IP on two ports. Views hold addresses the way sources hand them over
// (IPv4 unmapped, no zone).
var fuzzPool = func() []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range []string{"10.0.0.1:80", "10.0.0.1:81", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80",
		"10.0.1.1:8080", "[2001:db8::1]:80", "[2001:db8::2]:80", "[2001:db8::1]:81", "[fd00::5]:9000", "192.168.0.1:443"} {
		out = append(out, netip.MustParseAddrPort(s))
	}
	return out
}()

var fuzzIdentities = []discovery.Identity{
	{},
	{Kind: discovery.IdentityDNS, Name: "web.ns.serviceaccount.identity.linkerd.cluster.local"},
	{Kind: discovery.IdentitySPIFFE, Name: "spiffe://prod.example/ns/web/sa/web", ServerName: "web.ns.example"},
	{Kind: discovery.IdentitySPIFFE, Name: "spiffe://prod.example/ns/web/sa/api", ServerName: "api.ns.example"},
}

// fuzzViews turns bytes into a sequence of views, two bytes per operation
// on one pool address: add or replace, remove, change weight, zone,
// identity, protocol or labels, flip "exists", clear, and commit (the
// state so far becomes the next view). The last state is always a view.
func fuzzViews(data []byte) []view {
	cur := map[netip.AddrPort]*discovery.Endpoint{}
	exists := true
	var views []view
	commit := func() {
		v := view{exists: exists || len(cur) > 0}
		for _, e := range cur {
			v.endpoints = append(v.endpoints, e)
		}
		// As Federation.Resolve hands them over: sorted, one per address.
		slices.SortFunc(v.endpoints, func(a, b *discovery.Endpoint) int { return a.Addr.Compare(b.Addr) })
		views = append(views, v)
	}
	// Endpoints are immutable once handed over: every change is a copy.
	edit := func(ap netip.AddrPort, f func(*discovery.Endpoint)) {
		e := &discovery.Endpoint{Addr: ap, Source: "s", Key: "k"}
		if old, ok := cur[ap]; ok {
			c := *old
			c.Labels = maps.Clone(old.Labels)
			e = &c
		}
		f(e)
		cur[ap] = e
	}
	for i := 0; i+1 < len(data) && len(views) < 64; i += 2 {
		op, arg := data[i]%10, data[i+1]
		ap := fuzzPool[int(arg)%len(fuzzPool)]
		switch op {
		case 0:
			edit(ap, func(e *discovery.Endpoint) {})
		case 1:
			delete(cur, ap)
		case 2:
			edit(ap, func(e *discovery.Endpoint) { e.Weight = uint32(arg>>4) * 1000 }) // 0 is the default weight
		case 3:
			edit(ap, func(e *discovery.Endpoint) { e.Zone = []string{"", "zone-a", "zone-b"}[arg>>4%3] })
		case 4:
			edit(ap, func(e *discovery.Endpoint) { e.Identity = fuzzIdentities[int(arg>>4)%len(fuzzIdentities)] })
		case 5:
			edit(ap, func(e *discovery.Endpoint) {
				e.Protocol = discovery.Protocol(arg >> 4 % 3)
				e.OpaqueTransport = []uint16{0, 4143, 300}[arg>>6%3] // with any hint, as forced transport is
			})
		case 6:
			edit(ap, func(e *discovery.Endpoint) {
				if arg>>4%2 == 0 {
					e.Labels = nil
				} else {
					e.Labels = map[string]string{"pod": fmt.Sprint("p", arg>>5)}
				}
			})
		case 7:
			edit(ap, func(e *discovery.Endpoint) { e.Source = []string{"s", "t"}[arg>>4%2] })
		case 8:
			exists = !exists
		case 9:
			if arg%4 == 0 {
				clear(cur)
			}
			commit()
		}
	}
	commit()
	return views
}

// FuzzDiff drives random add/remove/modify sequences through the shared
// snapshots (the hub's path: diffs encoded once, from any older version a
// stream still holds) and checks that a client replaying what it is sent
// (EndpointSet, which also checks the wire contract) always holds exactly
// the view: the same addresses with the same wire content, and the same
// existence when empty. Two clients: one takes every version, one lags and
// jumps over versions as a slow client does.
func FuzzDiff(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 9, 1, 1, 0, 2, 0x31, 9, 1}, byte(0))
	f.Add([]byte{0, 0, 0, 7, 0, 8, 9, 1, 3, 0x10, 4, 0x27, 9, 1, 1, 0, 1, 7, 1, 8, 9, 1, 8, 0, 9, 1}, byte(1))
	f.Add([]byte{8, 0, 9, 1, 8, 0, 9, 1, 0, 2, 9, 0, 6, 0x12, 5, 0x23, 7, 0x12, 9, 1}, byte(2))
	f.Add([]byte{0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 9, 1, 1, 1, 1, 3, 1, 5, 2, 0xf2, 9, 3, 0, 9, 9, 0}, byte(0x81))
	f.Fuzz(func(t *testing.T, data []byte, sel byte) {
		zone := []string{"", "zone-a", "zone-b"}[sel%3]
		views := fuzzViews(data)
		snaps := make([]*snapshot, len(views))
		for i := range views {
			snaps[i] = &snapshot{version: uint64(i + 1), view: views[i], zone: zone}
		}
		var every, lagging EndpointSet
		lag := -1 // the version the lagging client holds; -1: nothing yet
		for i, sn := range snaps {
			var prev *snapshot
			if i > 0 {
				prev = snaps[i-1]
			}
			replay(t, &every, sn.messagesFrom(prev), prev, sn)
			check(t, &every, sn, fmt.Sprintf("step %d", i))
			// The lagging client catches up on some steps only.
			if sel>>2&(1<<(i%6)) != 0 || i == len(snaps)-1 {
				var from *snapshot
				if lag >= 0 {
					from = snaps[lag]
				}
				replay(t, &lagging, sn.messagesFrom(from), from, sn)
				check(t, &lagging, sn, fmt.Sprintf("lagging, %d to %d", lag, i))
				lag = i
			}
		}
	})
}

// replay applies encoded messages to a client as it would receive them.
func replay(t *testing.T, set *EndpointSet, msgs []encoded, prev, cur *snapshot) {
	t.Helper()
	if prev == nil && len(msgs) == 0 {
		t.Fatal("the first answer sent nothing")
	}
	if prev != nil && len(msgs) > 0 && sameOnWire(&prev.view, &cur.view, cur.zone) {
		t.Fatalf("sent %d messages for a change the client cannot see", len(msgs))
	}
	for _, m := range msgs {
		var u pb.Update
		if err := proto.Unmarshal(m.b, &u); err != nil {
			t.Fatal(err)
		}
		if m.kind != updateKind(&u) {
			t.Fatalf("message counted as %s is %s", m.kind, updateKind(&u))
		}
		seen := map[netip.AddrPort]bool{}
		for _, a := range append(u.GetAdd().GetAddrs(), wrapAddrs(u.GetRemove().GetAddrs())...) {
			k, _ := AddrPortFromTCP(a.GetAddr())
			if seen[k] {
				t.Fatalf("address %v twice in one message", a.GetAddr())
			}
			seen[k] = true
		}
		if err := set.Apply(&u); err != nil {
			t.Fatal(err)
		}
	}
}

func wrapAddrs(as []*pbnet.TcpAddress) []*pb.WeightedAddr {
	out := make([]*pb.WeightedAddr, len(as))
	for i, a := range as {
		out[i] = &pb.WeightedAddr{Addr: a}
	}
	return out
}

// check asserts the client holds exactly the snapshot's view.
func check(t *testing.T, set *EndpointSet, sn *snapshot, where string) {
	t.Helper()
	var want []netip.AddrPort
	for _, e := range sn.view.endpoints {
		want = append(want, e.Addr)
	}
	if got := set.Sorted(); !slices.Equal(got, want) {
		t.Fatalf("%s: client holds %v, view is %v", where, got, want)
	}
	for _, e := range sn.view.endpoints {
		if w := weightedAddr(e, sn.zone); !proto.Equal(set.Addrs[e.Addr], w) {
			t.Fatalf("%s: client holds %v for %v, view says %v", where, set.Addrs[e.Addr], e.Addr, w)
		}
	}
	if len(sn.view.endpoints) == 0 && set.Exists != sn.view.exists {
		t.Fatalf("%s: client says exists=%v, view %v", where, set.Exists, sn.view.exists)
	}
}

// sameOnWire reports whether a client could tell two views apart.
func sameOnWire(a, b *view, zone string) bool {
	if len(a.endpoints) != len(b.endpoints) {
		return false
	}
	if len(a.endpoints) == 0 {
		return a.exists == b.exists
	}
	for i := range a.endpoints {
		if !proto.Equal(weightedAddr(a.endpoints[i], zone), weightedAddr(b.endpoints[i], zone)) {
			return false
		}
	}
	return true
}
