package discovery

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseAuthority(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Authority
		err  bool
	}{
		{in: "web.demo:8080", want: Authority{"web.demo", 8080}},
		{in: "Web.Demo.", want: Authority{"web.demo", 80}},
		{in: "[::1]:9000", want: Authority{"[::1]", 9000}},
		{in: "[2001:db8::1]", want: Authority{"[2001:db8::1]", 80}},
		{in: "", err: true},
		{in: ":80", err: true},
		{in: "..:80", err: true},
		{in: ".web:80", err: true},
		{in: "a..b:80", err: true},
		{in: ":]", err: true},
		{in: "::1:80", err: true},
		{in: "[zz]:80", err: true},
		{in: "[10.0.0.1]:80", err: true},
		{in: "web:0", err: true},
		{in: "web:65536", err: true},
		{in: "web:http", err: true},
		{in: "we b:80", err: true},
		{in: "web\x7f:80", err: true},
		{in: "wéb:80", err: true},
		{in: "a/b:80", err: true},
	} {
		got, err := ParseAuthority(tc.in, 80)
		if tc.err {
			if !errors.Is(err, ErrInvalidAuthority) {
				t.Errorf("%q: got %v, %v; want ErrInvalidAuthority", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %v, %v; want %v", tc.in, got, err, tc.want)
			continue
		}
		// What it prints parses back to itself.
		if again, err := ParseAuthority(got.String(), 80); err != nil || again != got {
			t.Errorf("%q: %q does not parse back: %v %v", tc.in, got.String(), again, err)
		}
	}
}

func TestAuthorityAddr(t *testing.T) {
	for _, tc := range []struct {
		host string
		want string // "" when the host is not an IP literal
	}{
		{"10.0.0.1", "10.0.0.1"},
		{"[2001:db8::1]", "2001:db8::1"},
		{"[fe80::1%eth0]", "fe80::1%eth0"},
		// The zone holds a bracket: cutting more than one bracket per end
		// (strings.Trim) leaves "::1%", which is no IP.
		{"[::1%[]", "::1%["},
		{"[::1%]]", "::1%]"},
		{"[::1", ""},
		{"::1]", ""},
		{"web.demo", ""},
		{"[web.demo]", ""},
	} {
		ip, ok := Authority{Host: tc.host, Port: 80}.Addr()
		got := ""
		if ok {
			got = ip.String()
		}
		if got != tc.want {
			t.Errorf("%q: Addr() = %q, %v; want %q", tc.host, got, ok, tc.want)
		}
	}
}

func TestCanonicalHost(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" for an error
	}{
		{"web.demo", "web.demo"},
		{"Web.Demo.", "web.demo"},
		{"[::1]", "[::1]"},
		{"[FE80::1%Eth0]", "[fe80::1%eth0]"},
		{"10.0.0.1", "10.0.0.1"},
		{"", ""},
		{".", ""},
		{"a..b", ""},
		{".a", ""},
		{"a..", ""},
		{"a:b", ""},
		{"[10.0.0.1]", ""},
		{"[::1", ""},
		{"a b", ""},
		{"a\x00b", ""},
		{"a/b", ""},
		{"\u212aeb", ""}, // the Kelvin sign lower-cases to "k" but is not ASCII
		{strings.Repeat("a", MaxHostLen), strings.Repeat("a", MaxHostLen)},
		{strings.Repeat("a", MaxHostLen) + ".", strings.Repeat("a", MaxHostLen)},
		{strings.Repeat("a", MaxHostLen+1), ""},
	} {
		got, err := CanonicalHost(tc.in)
		if tc.want == "" {
			if !errors.Is(err, ErrInvalidAuthority) {
				t.Errorf("%q: got %q, %v; want ErrInvalidAuthority", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// FuzzCanonicalHost holds CanonicalHost to ParseAuthority: a host is
// accepted, and canonicalised, exactly as ParseAuthority treats it in an
// authority with a port.
func FuzzCanonicalHost(f *testing.F) {
	for _, s := range []string{"web.demo", "Web.Demo.", "[::1]", "[fe80::1%a:b]", "a..b", "a:b", "", ".", "\u212a", "[::1]:80", "a.]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		got, err := CanonicalHost(h)
		want, perr := ParseAuthority(h+":1", 0)
		if (err == nil) != (perr == nil) {
			t.Fatalf("CanonicalHost(%q) = %q, %v; ParseAuthority(%q) = %v, %v", h, got, err, h+":1", want, perr)
		}
		if err == nil && (got != want.Host || want.Port != 1) {
			t.Fatalf("CanonicalHost(%q) = %q; ParseAuthority gives %v", h, got, want)
		}
		if err != nil && !errors.Is(err, ErrInvalidAuthority) {
			t.Fatalf("CanonicalHost(%q): %v does not wrap ErrInvalidAuthority", h, err)
		}
	})
}

func TestCanonicalHostAllocatesOnlyForUpperCase(t *testing.T) {
	for h, want := range map[string]float64{"web.demo.svc.cluster.local": 0, "web.demo.": 0, "[::1]": 0, "Web.Demo": 1} {
		if got := testing.AllocsPerRun(100, func() { _, _ = CanonicalHost(h) }); got != want {
			t.Errorf("CanonicalHost(%q): %v allocations, want %v", h, got, want)
		}
	}
}

func TestValidateGroup(t *testing.T) {
	ep := func(s string) Endpoint { return Endpoint{Addr: netip.MustParseAddrPort(s)} }
	svc := func(host string, eps ...Endpoint) Service {
		return Service{Authority: Authority{Host: host, Port: 80}, Endpoints: eps}
	}
	for _, tc := range []struct {
		name string
		g    Group
		ok   bool
	}{
		{"well-formed", Group{Key: "k", Services: []Service{svc("web.demo", ep("10.0.0.1:80"), ep("[fe80::1%eth0]:80"))}}, true},
		{"withdrawal", Group{Key: "k"}, true},
		{"host not canonical is fine", Group{Key: "k", Services: []Service{svc("Web.Demo.")}}, true},
		{"empty key", Group{}, false},
		{"NUL in key", Group{Key: "a\x00"}, false},
		{"empty host", Group{Key: "k", Services: []Service{svc("")}}, false},
		{"empty label", Group{Key: "k", Services: []Service{svc("a..b")}}, false},
		{"zero address", Group{Key: "k", Services: []Service{svc("web", Endpoint{})}}, false},
		{"port 0", Group{Key: "k", Services: []Service{svc("web", ep("10.0.0.1:0"))}}, false},
		{"NUL in zone", Group{Key: "k", Services: []Service{svc("web", ep("[fe80::1%a\x00]:80"))}}, false},
	} {
		if err := ValidateGroup(&tc.g); (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok = %v", tc.name, err, tc.ok)
		}
	}
}
