package discovery

import (
	"errors"
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
