package sinktest

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/tributary-mesh/tributary/discovery"
)

// fatalRecorder is a testing.TB whose Fatalf records the failure and stops
// the goroutine, as the real one does.
type fatalRecorder struct {
	testing.TB
	failure string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.failure = fmt.Sprintf(format, args...)
	panic(r)
}

func check(g discovery.Group) (failure string) {
	r := &fatalRecorder{}
	defer func() {
		if p := recover(); p != nil && p != r {
			panic(p)
		}
		failure = r.failure
	}()
	CheckGroup(r, g)
	return ""
}

func TestCheckGroup(t *testing.T) {
	ep := func(s string) discovery.Endpoint { return discovery.Endpoint{Addr: netip.MustParseAddrPort(s)} }
	group := func(host string, eps ...discovery.Endpoint) discovery.Group {
		return discovery.Group{Key: "k", Services: []discovery.Service{{Authority: discovery.Authority{Host: host, Port: 80}, Endpoints: eps}}}
	}
	for _, tc := range []struct {
		name string
		g    discovery.Group
		fail bool
	}{
		{"well-formed", group("web.test", ep("10.0.0.1:80"), ep("[fd00::1]:80")), false},
		{"no services", discovery.Group{Key: "k"}, false},
		{"host not canonical", group("Web.test", ep("10.0.0.1:80")), true},
		{"port 0", group("web.test", ep("10.0.0.1:0")), true},
		{"zone", group("web.test", ep("[fe80::1%eth0]:80")), true},
		{"invalid address", group("web.test", discovery.Endpoint{}), true},
		{"same address twice", group("web.test", ep("10.0.0.1:80"), ep("10.0.0.1:80")), true},
		{"mapped and plain are one backend", group("web.test", ep("10.0.0.1:80"), ep("[::ffff:10.0.0.1]:80")), true},
		{"registry rejects the key", discovery.Group{Key: "bad\x00key", Services: group("web.test", ep("10.0.0.1:80")).Services}, true},
	} {
		if got := check(tc.g); (got != "") != tc.fail {
			t.Errorf("%s: failure %q, want failing = %v", tc.name, got, tc.fail)
		}
	}
}

func TestFuzzInputRunsOutAsZeros(t *testing.T) {
	in := FuzzInput{1, 2, 3}
	if got := []any{in.Byte(), in.U16(), in.Byte(), Pick(&in, "a", "b")}; fmt.Sprint(got) != "[1 515 0 a]" {
		t.Fatalf("read %v", got)
	}
}
