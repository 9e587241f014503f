package cache

import (
	"slices"
	"testing"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

func TestPortsAndHosts(t *testing.T) {
	s := New()
	svc := func(host string, port uint16, eps ...discovery.Endpoint) discovery.Service {
		return discovery.Service{Authority: discovery.Authority{Host: host, Port: port}, Endpoints: eps}
	}
	if _, err := s.Apply("a", []discovery.Group{group("k", svc("web.demo", 8080, ep("10.0.0.1:1")), svc("web.demo", 0), svc("web.demo2", 80))}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply("b", []discovery.Group{group("k", svc("WEB.demo", 8080), svc("api.demo", 9000))}); err != nil {
		t.Fatal(err)
	}
	sn := s.Snapshot()
	if got := sn.Ports(nil, "Web.Demo."); !slices.Equal(got, []uint16{0, 8080}) {
		t.Fatalf("ports %v", got)
	}
	if got := sn.Ports(nil, "nope.demo"); got != nil {
		t.Fatalf("ports of an unknown host %v", got)
	}
	ws := memdb.NewWatchSet()
	if got := sn.Hosts(ws); !slices.Equal(got, []string{"api.demo", "web.demo", "web.demo2"}) {
		t.Fatalf("hosts %v", got)
	}
	// An endpoint change alone does not fire the hosts watch; a new service does.
	if _, err := s.Apply("a", []discovery.Group{group("k", svc("web.demo", 8080, ep("10.0.0.2:1")), svc("web.demo", 0), svc("web.demo2", 80))}); err != nil {
		t.Fatal(err)
	}
	if watchFired(ws) {
		t.Fatal("hosts watch fired for an endpoint change")
	}
	if _, err := s.Apply("c", []discovery.Group{group("k", svc("new.demo", 1))}); err != nil {
		t.Fatal(err)
	}
	if !watchFired(ws) {
		t.Fatal("hosts watch did not fire for a new service")
	}
}

// The hosts watch fires when a service row goes, by a hand-over or by
// dropping its provider, and for a snapshot taken before the change.
func TestHostsWatchFiresWhenARowGoes(t *testing.T) {
	s := New()
	apply(t, s, "a", group("k", svc("web.demo:80", ep("10.0.0.1:80"))), group("k2", svc("api.demo:80")))
	apply(t, s, "b", group("k", svc("db.demo:5432")))
	for _, step := range []struct {
		what   string
		change func()
	}{
		{"a service row withdrawn", func() { apply(t, s, "a", group("k2")) }},
		{"its provider dropped", func() {
			if _, err := s.DropProvider("b"); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		sn := s.Snapshot()
		ws := memdb.NewWatchSet()
		sn.Hosts(ws)
		step.change()
		if !watchFired(ws) {
			t.Errorf("%s: the hosts watch did not fire", step.what)
		}
	}
	if got := s.Snapshot().Hosts(nil); !slices.Equal(got, []string{"web.demo"}) {
		t.Fatalf("hosts %v", got)
	}
}
