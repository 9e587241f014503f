package destination

import (
	"net/netip"
	"slices"
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
	endpoints []*discovery.Endpoint // serving only, one per address, sorted by address
	changed   time.Time             // when the newest change in it was handed to the store
}

// translator turns successive views of one Get stream into the updates the
// wire contract asks for. It remembers only what this client was last sent;
// it never queues: given the newest view it emits the difference at once.
//
// Contract (linkerd2-proxy-api destination.proto):
//   - the first call always yields a message: add(all) or no_endpoints{exists};
//   - later calls yield add for new or changed endpoints, then remove for
//     gone ones; never an empty add or remove;
//   - a set that becomes empty yields no_endpoints{exists} (a remove of the
//     last endpoint means the same; no_endpoints also says whether the
//     service still exists);
//   - nothing changed, nothing sent.
type translator struct {
	clientZone string
	started    bool
	exists     bool // what the last no_endpoints said, when sent is empty
	sent       map[netip.AddrPort]*discovery.Endpoint
}

func newTranslator(clientZone string) *translator {
	return &translator{clientZone: clientZone}
}

func (t *translator) next(v view) []*pb.Update {
	if len(v.endpoints) == 0 {
		if t.started && len(t.sent) == 0 && t.exists == v.exists {
			return nil
		}
		t.started, t.exists, t.sent = true, v.exists, nil
		return []*pb.Update{noEndpoints(v.exists)}
	}

	next := make(map[netip.AddrPort]*discovery.Endpoint, len(v.endpoints))
	var add []*pb.WeightedAddr
	for _, e := range v.endpoints {
		next[e.Addr] = e
		old, ok := t.sent[e.Addr]
		if ok && (old == e || old.SameWire(e)) {
			continue
		}
		add = append(add, weightedAddr(e, t.clientZone))
	}
	var gone []netip.AddrPort
	for addr := range t.sent {
		if _, ok := next[addr]; !ok {
			gone = append(gone, addr)
		}
	}
	t.started, t.sent = true, next

	var out []*pb.Update
	if len(add) > 0 {
		out = append(out, &pb.Update{Update: &pb.Update_Add{Add: &pb.WeightedAddrSet{Addrs: add}}})
	}
	if len(gone) > 0 {
		slices.SortFunc(gone, netip.AddrPort.Compare)
		remove := make([]*pbnet.TcpAddress, len(gone))
		for i, addr := range gone {
			remove[i] = tcpAddress(addr)
		}
		out = append(out, &pb.Update{Update: &pb.Update_Remove{Remove: &pb.AddrSet{Addrs: remove}}})
	}
	return out
}

func noEndpoints(exists bool) *pb.Update {
	return &pb.Update{Update: &pb.Update_NoEndpoints{NoEndpoints: &pb.NoEndpoints{Exists: exists}}}
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
