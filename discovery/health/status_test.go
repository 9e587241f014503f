package health

import (
	"net/netip"
	"testing"

	"github.com/tributary-mesh/tributary/discovery"
)

// TestCheckStateSaysWhyCritical: the read accessor names the check, the
// address probed, the last failure's error and time and the failures in a
// row; it keeps the last error after the endpoint recovers; and it knows
// nothing of an unchecked source, authority or address.
func TestCheckStateSaysWhyCritical(t *testing.T) {
	web := discovery.Authority{Host: "web", Port: 80}
	cfg := &Checks{Default: fast(nil), Services: map[discovery.Authority]*Check{
		{Host: "db", Port: 5432}: fast(func(hc *Check) { hc.Type = CheckNone }),
		{Host: "api", Port: 80}:  fast(func(hc *Check) { hc.Port = 9000 }),
	}}
	f := newFixture(t, cfg, 4)
	f.sink.Replace([]discovery.Group{
		grp("k", "web", 80, "10.0.0.1:80", "10.0.0.2:80"),
		grp("d", "db", 5432, "10.0.0.3:5432"),
		grp("a", "api", 80, "10.0.0.4:80"),
	})
	ep1, ep2 := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80")

	// Known before the first check: no verdict, no error.
	if st, ok := f.c.CheckState("src", web, ep2); !ok || st.Type != CheckTCP || st.Verdict != discovery.HealthUnknown || st.LastError != "" || !st.LastCheck.IsZero() {
		t.Fatalf("before any check: %+v %v", st, ok)
	}
	f.probes.set("10.0.0.2:80", true)
	f.start()
	f.rec.waitHealth(t, "k", "10.0.0.1:80=passing 10.0.0.2:80=critical")
	f.probes.waitProbes(t, "10.0.0.2:80", 3)

	st, ok := f.c.CheckState("src", web, ep2)
	if !ok || st.Verdict != discovery.HealthCritical || st.LastError != "down" || st.LastErrorTime.IsZero() ||
		st.ConsecutiveFailures < 1 || st.ConsecutiveSuccesses != 0 || st.Target != ep2 || st.LastCheck.Before(st.LastErrorTime) {
		t.Fatalf("failing endpoint: %+v %v", st, ok)
	}
	if st, ok := f.c.CheckState("src", web, ep1); !ok || st.Verdict != discovery.HealthPassing || st.LastError != "" || st.ConsecutiveFailures != 0 {
		t.Fatalf("passing endpoint: %+v %v", st, ok)
	}

	// Recovered: passing, and the last failure is still told.
	f.probes.set("10.0.0.2:80", false)
	f.rec.waitHealth(t, "k", "10.0.0.1:80=passing 10.0.0.2:80=passing")
	if st, ok := f.c.CheckState("src", web, ep2); !ok || st.Verdict != discovery.HealthPassing || st.LastError != "down" || st.ConsecutiveFailures != 0 {
		t.Fatalf("recovered endpoint: %+v %v", st, ok)
	}

	// The check's port: the endpoint is found by its own address, the
	// target is the probed one.
	if st, ok := f.c.CheckState("src", discovery.Authority{Host: "api", Port: 80}, netip.MustParseAddrPort("10.0.0.4:80")); !ok || st.Target != netip.MustParseAddrPort("10.0.0.4:9000") {
		t.Errorf("check port: %+v %v", st, ok)
	}
	for name, c := range map[string]struct {
		source string
		a      discovery.Authority
		addr   string
	}{
		"other source":    {"nope", web, "10.0.0.1:80"},
		"check none":      {"src", discovery.Authority{Host: "db", Port: 5432}, "10.0.0.3:5432"},
		"unknown address": {"src", web, "10.9.9.9:80"},
	} {
		if st, ok := f.c.CheckState(c.source, c.a, netip.MustParseAddrPort(c.addr)); ok {
			t.Errorf("%s: %+v, want none", name, st)
		}
	}
	if _, ok := f.c.CheckState("src", web, netip.AddrPort{}); ok {
		t.Error("invalid address: found")
	}
}
