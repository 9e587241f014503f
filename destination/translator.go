package destination

import (
	"net/netip"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"

	"github.com/tributary-mesh/tributary/discovery"
)

// view is what a client is served for one authority at one moment: the
// result of the federation rules over a consistent registry snapshot.
type view struct {
	exists    bool
	opaque    bool
	profile   *discovery.Profile            // the first member's that has one; GetProfile's
	clients   map[string]*discovery.Profile // that member's client profiles
	endpoints []*discovery.Endpoint         // serving only, one per address, sorted by address
	changed   time.Time                     // when the newest change in it was handed to the store
	// version is the newest store version among its members' hosts. Store
	// versions are global and increase with every change, so it moves
	// whenever any member changes: it identifies the view.
	version uint64
}

// delta is what a client holding prev (nil: nothing sent yet) must be sent
// to hold cur, as the wire contract asks (linkerd2-proxy-api
// destination.proto): nothing (none), no_endpoints{cur.exists}, or an add of
// the endpoints in add (in address order) and then a remove of the addresses
// in remove.
//   - the first message is always sent: add(all) or no_endpoints{exists};
//   - later, add for new or changed endpoints, then remove for gone ones;
//     never an empty add or remove;
//   - a set that becomes empty yields no_endpoints{exists} (a remove of the
//     last endpoint means the same; no_endpoints also says whether the
//     service still exists);
//   - nothing changed that the client sees, nothing sent.
type delta struct {
	none, noEndpoints bool
	add               []*discovery.Endpoint
	remove            []netip.AddrPort
}

// changes computes the delta from prev to cur. Both views are sorted by
// address, so it is one merge walk. The hub encodes it (encodeDiff).
func changes(prev, cur *view) delta {
	if len(cur.endpoints) == 0 {
		if prev != nil && len(prev.endpoints) == 0 && prev.exists == cur.exists {
			return delta{none: true}
		}
		return delta{noEndpoints: true}
	}
	var old []*discovery.Endpoint
	if prev != nil {
		old = prev.endpoints
	}
	var d delta
	i, j := 0, 0
	for i < len(old) || j < len(cur.endpoints) {
		var c int
		switch {
		case i == len(old):
			c = 1
		case j == len(cur.endpoints):
			c = -1
		default:
			c = old[i].Addr.Compare(cur.endpoints[j].Addr)
		}
		switch {
		case c < 0:
			d.remove = append(d.remove, old[i].Addr)
			i++
		case c > 0:
			d.add = append(d.add, cur.endpoints[j])
			j++
		default:
			if o, n := old[i], cur.endpoints[j]; o != n && !o.SameWire(n) {
				d.add = append(d.add, n)
			}
			i, j = i+1, j+1
		}
	}
	d.none = len(d.add) == 0 && len(d.remove) == 0
	return d
}

// weightedAddr is the wire form of an endpoint for a client in clientZone.
func weightedAddr(e *discovery.Endpoint, clientZone string) *pb.WeightedAddr {
	labels := make(map[string]string, len(e.Labels)+3)
	for k, v := range e.Labels {
		labels[k] = v
	}
	if e.Source != "" {
		labels["source"] = e.Source
	}
	if e.Zone != "" {
		labels["zone"] = e.Zone
		if clientZone != "" {
			if clientZone == e.Zone {
				labels["zone_locality"] = "local"
			} else {
				labels["zone_locality"] = "remote"
			}
		}
	}
	wa := &pb.WeightedAddr{
		Addr:         tcpAddress(e.Addr),
		Weight:       e.EffectiveWeight(),
		MetricLabels: labels,
		TlsIdentity:  tlsIdentity(e.Identity),
	}
	switch e.Protocol {
	case discovery.ProtocolH2:
		wa.ProtocolHint = &pb.ProtocolHint{Protocol: &pb.ProtocolHint_H2_{H2: &pb.ProtocolHint_H2{}}}
	case discovery.ProtocolOpaque:
		wa.ProtocolHint = &pb.ProtocolHint{Protocol: &pb.ProtocolHint_Opaque_{Opaque: &pb.ProtocolHint_Opaque{}}}
	}
	// The target proxy's inbound port, whatever the hint: Linkerd's
	// controller sends it with the opaque hint for opaque ports, and with
	// h2 (or no protocol) when it forces opaque transport on every port.
	// The source decides which ports carry it.
	if e.OpaqueTransport != 0 {
		if wa.ProtocolHint == nil {
			wa.ProtocolHint = &pb.ProtocolHint{}
		}
		wa.ProtocolHint.OpaqueTransport = &pb.ProtocolHint_OpaqueTransport{InboundPort: uint32(e.OpaqueTransport)}
	}
	return wa
}

// tlsIdentity is nil when the identity is unknown: never guessed.
func tlsIdentity(id discovery.Identity) *pb.TlsIdentity {
	switch id.Kind {
	case discovery.IdentityDNS:
		return &pb.TlsIdentity{
			Strategy:   &pb.TlsIdentity_DnsLikeIdentity_{DnsLikeIdentity: &pb.TlsIdentity_DnsLikeIdentity{Name: id.Name}},
			ServerName: &pb.TlsIdentity_DnsLikeIdentity{Name: id.Name},
		}
	case discovery.IdentitySPIFFE:
		if id.ServerName == "" {
			return nil // the proxy rejects a URI identity without a server name
		}
		return &pb.TlsIdentity{
			Strategy:   &pb.TlsIdentity_UriLikeIdentity_{UriLikeIdentity: &pb.TlsIdentity_UriLikeIdentity{Uri: id.Name}},
			ServerName: &pb.TlsIdentity_DnsLikeIdentity{Name: id.ServerName},
		}
	}
	return nil
}

func tcpAddress(ap netip.AddrPort) *pbnet.TcpAddress {
	ip := ap.Addr().Unmap()
	var pip *pbnet.IPAddress
	if ip.Is4() {
		b := ip.As4()
		pip = &pbnet.IPAddress{Ip: &pbnet.IPAddress_Ipv4{Ipv4: uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])}}
	} else {
		b := ip.As16()
		var hi, lo uint64
		for i := 0; i < 8; i++ {
			hi = hi<<8 | uint64(b[i])
			lo = lo<<8 | uint64(b[i+8])
		}
		pip = &pbnet.IPAddress{Ip: &pbnet.IPAddress_Ipv6{Ipv6: &pbnet.IPv6{First: hi, Last: lo}}}
	}
	return &pbnet.TcpAddress{Ip: pip, Port: uint32(ap.Port())}
}

// AddrPortFromTCP converts a wire address back; the reverse of tcpAddress.
func AddrPortFromTCP(a *pbnet.TcpAddress) (netip.AddrPort, bool) {
	if a == nil || a.GetIp() == nil || a.GetPort() > 65535 {
		return netip.AddrPort{}, false
	}
	switch ip := a.GetIp().GetIp().(type) {
	case *pbnet.IPAddress_Ipv4:
		v := ip.Ipv4
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), uint16(a.GetPort())), true
	case *pbnet.IPAddress_Ipv6:
		var b [16]byte
		hi, lo := ip.Ipv6.GetFirst(), ip.Ipv6.GetLast()
		for i := 7; i >= 0; i-- {
			b[i], b[i+8] = byte(hi), byte(lo)
			hi, lo = hi>>8, lo>>8
		}
		return netip.AddrPortFrom(netip.AddrFrom16(b), uint16(a.GetPort())), true
	}
	return netip.AddrPort{}, false
}
