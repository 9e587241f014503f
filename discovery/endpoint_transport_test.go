package discovery

import (
	"net/netip"
	"testing"
)

// An endpoint whose only change is its opaque-transport port must count as
// changed both for the registry (Equal: the row is rewritten) and for the
// proxy (SameWire: the stream is sent an add), since the port decides
// where the proxy connects for opaque traffic.
func TestOpaqueTransportIsContent(t *testing.T) {
	a := Endpoint{Addr: netip.MustParseAddrPort("10.0.0.1:3306"), Protocol: ProtocolOpaque, OpaqueTransport: 4143}
	for _, tc := range []struct {
		name string
		port uint16
		same bool
	}{
		{"same port", 4143, true},
		{"other port", 4144, false},
		{"none", 0, false},
	} {
		b := a
		b.OpaqueTransport = tc.port
		if got := a.Equal(&b); got != tc.same {
			t.Errorf("%s: Equal = %v, want %v", tc.name, got, tc.same)
		}
		if got := a.SameWire(&b); got != tc.same {
			t.Errorf("%s: SameWire = %v, want %v", tc.name, got, tc.same)
		}
	}
}
