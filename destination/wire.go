package destination

import (
	"net/netip"
	"slices"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/tributary-mesh/tributary/discovery"
)

// The hub's updates are written straight into wire form, without building
// the protobuf structs and label maps first: under churn, proto.Marshal of
// those was the largest allocation per change after the registry's own.
// The field numbers are linkerd2-proxy-api v0.20.0's (destination.proto,
// net.proto); FuzzDiff and TestEncodedUpdatesMatchProto hold every message
// to what proto.Marshal makes of diff's structs.
const (
	fUpdateAdd         protowire.Number = 1 // Update.add: WeightedAddrSet
	fUpdateRemove      protowire.Number = 2 // Update.remove: AddrSet
	fUpdateNoEndpoints protowire.Number = 3 // Update.no_endpoints: NoEndpoints
	fSetAddrs          protowire.Number = 1 // WeightedAddrSet.addrs, AddrSet.addrs
	fNoEndpointsExists protowire.Number = 1

	fWAddr     protowire.Number = 1 // WeightedAddr.addr: TcpAddress
	fWWeight   protowire.Number = 3
	fWLabels   protowire.Number = 4 // map<string, string>: entries {key = 1, value = 2}
	fWTLS      protowire.Number = 5 // TlsIdentity
	fWProtocol protowire.Number = 6 // ProtocolHint

	fTCPIP   protowire.Number = 1 // TcpAddress.ip: IPAddress
	fTCPPort protowire.Number = 2
	fIPv4    protowire.Number = 1 // IPAddress.ipv4: fixed32
	fIPv6    protowire.Number = 2 // IPAddress.ipv6: IPv6 {first = 1, last = 2: fixed64}

	fTLSDNS        protowire.Number = 1 // TlsIdentity.dns_like_identity {name = 1}
	fTLSURI        protowire.Number = 3 // TlsIdentity.uri_like_identity {uri = 1}
	fTLSServerName protowire.Number = 4 // TlsIdentity.server_name {name = 1}

	fHintH2        protowire.Number = 1 // ProtocolHint.h2 {}
	fHintTransport protowire.Number = 2 // ProtocolHint.opaque_transport {inbound_port = 1}
	fHintOpaque    protowire.Number = 3 // ProtocolHint.opaque {}
)

// scratch holds the buffers updates are written in before they are copied
// out at their exact size.
var scratch = sync.Pool{New: func() any { return new([]byte) }}

// finish copies an update out of a scratch buffer.
func finish(kind string, b []byte) encoded {
	c := append(make([]byte, 0, len(b)), b...)
	return encoded{kind: kind, b: c, msg: newPreEncoded(c)}
}

// encodeDiff is changes(prev, cur) in wire form, one encoded message per
// update; the tests hold it byte for byte to proto.Marshal of the reference
// diff (reference_test.go).
func encodeDiff(prev, cur *view, clientZone string) []encoded {
	buf := scratch.Get().(*[]byte)
	defer scratch.Put(buf)
	d := changes(prev, cur)
	switch {
	case d.none:
		return nil
	case d.noEndpoints:
		b := appendMessage((*buf)[:0], fUpdateNoEndpoints, func(b []byte) []byte {
			if cur.exists {
				b = protowire.AppendTag(b, fNoEndpointsExists, protowire.VarintType)
				b = protowire.AppendVarint(b, 1)
			}
			return b
		})
		*buf = b
		return []encoded{finish("no_endpoints", b)}
	}
	out := make([]encoded, 0, 2)
	if len(d.add) > 0 {
		b := appendMessage((*buf)[:0], fUpdateAdd, func(b []byte) []byte {
			for _, e := range d.add {
				b = appendMessage(b, fSetAddrs, func(b []byte) []byte { return appendWeightedAddr(b, e, clientZone) })
			}
			return b
		})
		*buf = b
		out = append(out, finish("add", b))
	}
	if len(d.remove) > 0 {
		b := appendMessage((*buf)[:0], fUpdateRemove, func(b []byte) []byte {
			for _, a := range d.remove {
				b = appendMessage(b, fSetAddrs, func(b []byte) []byte { return appendTCPAddress(b, a) })
			}
			return b
		})
		*buf = b
		out = append(out, finish("remove", b))
	}
	return out
}

// appendMessage appends field num holding the message that body appends.
// One byte is set aside for the length, enough for nearly every message
// here; a longer body is moved up to make room.
func appendMessage(b []byte, num protowire.Number, body func([]byte) []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	at := len(b)
	b = body(append(b, 0))
	n := len(b) - at - 1
	if n < 0x80 {
		b[at] = byte(n)
		return b
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	b = append(b, make([]byte, extra)...)
	copy(b[at+1+extra:], b[at+1:at+1+n])
	protowire.AppendVarint(b[:at], uint64(n))
	return b
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendWeightedAddr appends the fields of weightedAddr(e, clientZone).
// Labels are written in key order, so equal endpoints encode equally.
func appendWeightedAddr(b []byte, e *discovery.Endpoint, clientZone string) []byte {
	b = appendMessage(b, fWAddr, func(b []byte) []byte { return appendTCPAddress(b, e.Addr) })
	b = protowire.AppendTag(b, fWWeight, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(e.EffectiveWeight()))

	// The labels weightedAddr sets itself replace a source's of the same key.
	locality := ""
	if e.Zone != "" && clientZone != "" {
		locality = "remote"
		if clientZone == e.Zone {
			locality = "local"
		}
	}
	var stack [16]string
	keys := stack[:0]
	for k := range e.Labels {
		if (k == "source" && e.Source != "") || (k == "zone" && e.Zone != "") || (k == "zone_locality" && locality != "") {
			continue
		}
		keys = append(keys, k)
	}
	if e.Source != "" {
		keys = append(keys, "source")
	}
	if e.Zone != "" {
		keys = append(keys, "zone")
	}
	if locality != "" {
		keys = append(keys, "zone_locality")
	}
	slices.Sort(keys)
	for _, k := range keys {
		var v string
		switch {
		case k == "source" && e.Source != "":
			v = e.Source
		case k == "zone" && e.Zone != "":
			v = e.Zone
		case k == "zone_locality" && locality != "":
			v = locality
		default:
			v = e.Labels[k]
		}
		b = appendMessage(b, fWLabels, func(b []byte) []byte {
			return appendString(appendString(b, 1, k), 2, v)
		})
	}

	// proto.Marshal writes a oneof after the other fields: so do we.
	switch id := e.Identity; {
	case id.Kind == discovery.IdentityDNS:
		b = appendMessage(b, fWTLS, func(b []byte) []byte {
			b = appendMessage(b, fTLSServerName, func(b []byte) []byte { return appendString(b, 1, id.Name) })
			return appendMessage(b, fTLSDNS, func(b []byte) []byte { return appendString(b, 1, id.Name) })
		})
	case id.Kind == discovery.IdentitySPIFFE && id.ServerName != "":
		b = appendMessage(b, fWTLS, func(b []byte) []byte {
			b = appendMessage(b, fTLSServerName, func(b []byte) []byte { return appendString(b, 1, id.ServerName) })
			return appendMessage(b, fTLSURI, func(b []byte) []byte { return appendString(b, 1, id.Name) })
		})
	}

	if e.Protocol != discovery.ProtocolH2 && e.Protocol != discovery.ProtocolOpaque && e.OpaqueTransport == 0 {
		return b
	}
	return appendMessage(b, fWProtocol, func(b []byte) []byte {
		// opaque_transport is not in the oneof, so it comes before it.
		if e.OpaqueTransport != 0 {
			b = appendMessage(b, fHintTransport, func(b []byte) []byte {
				b = protowire.AppendTag(b, 1, protowire.VarintType)
				return protowire.AppendVarint(b, uint64(e.OpaqueTransport))
			})
		}
		switch e.Protocol {
		case discovery.ProtocolH2:
			b = appendMessage(b, fHintH2, func(b []byte) []byte { return b })
		case discovery.ProtocolOpaque:
			b = appendMessage(b, fHintOpaque, func(b []byte) []byte { return b })
		}
		return b
	})
}

// appendTCPAddress appends the fields of tcpAddress(a).
func appendTCPAddress(b []byte, a netip.AddrPort) []byte {
	b = appendMessage(b, fTCPIP, func(b []byte) []byte {
		ip := a.Addr().Unmap()
		if ip.Is4() {
			v := ip.As4()
			b = protowire.AppendTag(b, fIPv4, protowire.Fixed32Type)
			return protowire.AppendFixed32(b, uint32(v[0])<<24|uint32(v[1])<<16|uint32(v[2])<<8|uint32(v[3]))
		}
		v := ip.As16()
		var hi, lo uint64
		for i := 0; i < 8; i++ {
			hi = hi<<8 | uint64(v[i])
			lo = lo<<8 | uint64(v[i+8])
		}
		return appendMessage(b, fIPv6, func(b []byte) []byte {
			if hi != 0 { // proto3 leaves zero scalars out, as proto.Marshal does
				b = protowire.AppendTag(b, 1, protowire.Fixed64Type)
				b = protowire.AppendFixed64(b, hi)
			}
			if lo != 0 {
				b = protowire.AppendTag(b, 2, protowire.Fixed64Type)
				b = protowire.AppendFixed64(b, lo)
			}
			return b
		})
	})
	if a.Port() != 0 {
		b = protowire.AppendTag(b, fTCPPort, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(a.Port()))
	}
	return b
}
