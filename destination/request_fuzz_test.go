package destination

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"
)

// requestSeeds are paths proxies send and ones they should not; the corpus
// in testdata/fuzz adds more.
var requestSeeds = []string{
	"web.demo.svc.cluster.local:8080", "web.demo:80", "Web.Demo.:8080", "web.service.dc1.consul",
	"10.0.0.1:80", "10.0.0.1", "[2001:db8::1]:8080", "[::1]", "[::ffff:10.0.0.1]:80", "[fe80::1%eth0]:80",
	"", ":80", "web:0", "web:65536", "web:+80", "web:0x50", "a b:80", "web/x:80", "\xff:80", ".:80", "..:80",
	"[web.demo]:80", "::1", "1.2.3:80", strings.Repeat("a", 300) + ":80",
}

// FuzzParseGetPath: parseGetPath never panics, refuses with ErrBadRequest,
// and an accepted path is a canonical service authority (lower case, a
// port, not an IP) that parses back to itself and that GetProfile reads
// the same way.
func FuzzParseGetPath(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		a, err := parseGetPath(path)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("%q: error %v does not wrap ErrBadRequest", path, err)
			}
			return
		}
		if a.Host == "" || a.Port == 0 || a.Host != strings.ToLower(a.Host) || !utf8.ValidString(a.Host) {
			t.Fatalf("%q: accepted as %+v", path, a)
		}
		// One bracket off each end, not strings.Trim: a zone may hold
		// brackets ("[::1%[]" is an IP with zone "[").
		inner, _ := strings.CutPrefix(a.Host, "[")
		inner, _ = strings.CutSuffix(inner, "]")
		if _, err := netip.ParseAddr(inner); err == nil {
			t.Fatalf("%q: an IP accepted as a service: %+v", path, a)
		}
		again, err := parseGetPath(a.String())
		if err != nil || again != a {
			t.Fatalf("%q: accepted as %v, which reads back as %+v, %v", path, a, again, err)
		}
		pa, ip, err := parseProfileTarget(path)
		if err != nil || pa != a || ip.IsValid() {
			t.Fatalf("%q: Get reads %v, GetProfile reads %v %v %v", path, a, pa, ip, err)
		}
	})
}

// FuzzParseProfileTarget: exactly one of authority and IP:port comes back;
// an IP:port is in the form the registry stores (IPv4 unmapped, no zone)
// and reads back as itself.
func FuzzParseProfileTarget(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		a, ip, err := parseProfileTarget(path)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("%q: error %v does not wrap ErrBadRequest", path, err)
			}
			return
		}
		if (a.Host != "") == ip.IsValid() {
			t.Fatalf("%q: authority %+v and IP %v: want exactly one", path, a, ip)
		}
		if !ip.IsValid() {
			again, _, err := parseProfileTarget(a.String())
			if err != nil || again != a {
				t.Fatalf("%q: %v reads back as %+v, %v", path, a, again, err)
			}
			return
		}
		if ip.Addr().Is4In6() || ip.Addr().Zone() != "" {
			t.Fatalf("%q: IP %v is not in the registry's form (unmapped, no zone)", path, ip)
		}
		_, again, err := parseProfileTarget(ip.String())
		if err != nil || again != ip {
			t.Fatalf("%q: %v reads back as %v, %v", path, ip, again, err)
		}
	})
}

// FuzzParseContextToken: a token within the size bound is never an error
// (a token that is not JSON is ignored); a JSON object is read as
// encoding/json reads it; fields are valid UTF-8.
func FuzzParseContextToken(f *testing.F) {
	for _, s := range []string{
		"", "emojivoto", `{"ns":"emojivoto","nodeName":"node-1","pod":"web-1"}`, `{"zone":"us-east-1a"}`,
		`{"ns":1}`, "{", `{"zone":"\ud800"}`, `{"nodeName":"n","zone":""}`, "{\"ns\":\"\xff\"}", `[1,2]`,
		strings.Repeat("[", 5000), `{"ns":"a","ns":"b"}`, `{"NS":"upper"}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := parseContextToken(s)
		if len(s) > MaxContextTokenLen {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("an oversized token: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		for _, v := range []string{tok.NS, tok.NodeName, tok.Pod, tok.Zone} {
			if !utf8.ValidString(v) {
				t.Fatalf("%q: field %q is not valid UTF-8", s, v)
			}
		}
		var want contextToken
		if strings.HasPrefix(s, "{") && json.Unmarshal([]byte(s), &want) == nil && tok != want {
			t.Fatalf("%q: read %+v, encoding/json reads %+v", s, tok, want)
		}
	})
}
