package destination

import (
	"net/netip"
	"testing"

	"github.com/tributary-mesh/tributary/discovery"
)

// TestParseProfileTarget: an IP:port is read in the registry's form
// (unmapped, no zone), a name as an authority, and Get refuses every IP
// form GetProfile reads as one.
func TestParseProfileTarget(t *testing.T) {
	for _, tc := range []struct {
		path string
		ip   string // the IP:port read, or ""
		auth discovery.Authority
	}{
		{path: "10.0.0.1:80", ip: "10.0.0.1:80"},
		{path: "10.0.0.1", ip: "10.0.0.1:80"},
		{path: "[::ffff:10.0.0.1]:8080", ip: "10.0.0.1:8080"},
		{path: "[fe80::1%eth0]:80", ip: "[fe80::1]:80"},
		{path: "[::1%[]:80", ip: "[::1]:80"},
		{path: "[2001:db8::1]", ip: "[2001:db8::1]:80"},
		{path: "Web.Demo.:8080", auth: discovery.Authority{Host: "web.demo", Port: 8080}},
	} {
		auth, ip, err := parseProfileTarget(tc.path)
		if err != nil {
			t.Errorf("%q: %v", tc.path, err)
			continue
		}
		if tc.ip != "" {
			if want := netip.MustParseAddrPort(tc.ip); ip != want || auth != (discovery.Authority{}) {
				t.Errorf("%q: read %v %v; want the IP %v", tc.path, auth, ip, want)
			}
			if _, err := parseGetPath(tc.path); err == nil {
				t.Errorf("%q: Get accepts an IP", tc.path)
			}
			continue
		}
		if auth != tc.auth || ip.IsValid() {
			t.Errorf("%q: read %v %v; want the authority %v", tc.path, auth, ip, tc.auth)
		}
	}
}
