package cache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

// A reader of an address wakes when a row of another service, provider or
// key starts or stops using it, and when its own row changes or goes.
func TestEndpointsByAddrWakesOnEveryKindOfChange(t *testing.T) {
	addr := netip.MustParseAddrPort("10.0.0.1:80")
	s := New()
	watch := func() memdb.WatchSet {
		ws := memdb.NewWatchSet()
		s.Snapshot().EndpointsByAddr(ws, addr)
		return ws
	}
	rows := func() []string {
		var out []string
		for _, m := range s.Snapshot().EndpointsByAddr(nil, addr) {
			out = append(out, fmt.Sprintf("%s %s/%s w%d", m.Authority, m.Endpoint.Source, m.Endpoint.Key, m.Endpoint.Weight))
		}
		return out
	}
	steps := []struct {
		what   string
		change func()
		want   []string
	}{
		{"first row of an unknown address", func() {
			apply(t, s, "p", group("k", svc("web.demo:80", ep("10.0.0.1:80", weight(1)))))
		}, []string{"web.demo:80 p/k w1"}},
		{"another service takes it", func() {
			apply(t, s, "q", group("k", svc("alias.demo:80", ep("10.0.0.1:80", weight(2)))))
		}, []string{"alias.demo:80 q/k w2", "web.demo:80 p/k w1"}},
		{"a row of it changes", func() {
			apply(t, s, "p", group("k", svc("web.demo:80", ep("10.0.0.1:80", weight(3)))))
		}, []string{"alias.demo:80 q/k w2", "web.demo:80 p/k w3"}},
		{"a row of it leaves", func() {
			apply(t, s, "p", group("k", svc("web.demo:80", ep("10.0.0.9:80"))))
		}, []string{"alias.demo:80 q/k w2"}},
		{"its provider is dropped", func() {
			if _, err := s.DropProvider("q"); err != nil {
				t.Fatal(err)
			}
		}, nil},
		{"it comes back under the first service", func() {
			apply(t, s, "p", group("k", svc("web.demo:80", ep("10.0.0.9:80"), ep("10.0.0.1:80", weight(4)))))
		}, []string{"web.demo:80 p/k w4"}},
	}
	for _, st := range steps {
		ws := watch()
		st.change()
		if !watchFired(ws) {
			t.Errorf("%s: the reader of %s was not woken", st.what, addr)
		}
		if got := rows(); !slices.Equal(got, st.want) {
			t.Errorf("%s: rows %q, want %q", st.what, got, st.want)
		}
	}

	// Rows of other addresses do not wake it, in its bucket or not.
	ws := watch()
	apply(t, s, "p", group("other", svc("db.demo:5432", ep("10.0.0.2:5432"), ep("10.0.0.1:81"))))
	apply(t, s, "p", group("other", svc("db.demo:5432", ep("10.0.0.2:5432", weight(7)), ep("10.0.0.1:81", weight(7)))))
	if watchFired(ws) && s.addrs.bucket(addr) != s.addrs.bucket(netip.MustParseAddrPort("10.0.0.2:5432")) &&
		s.addrs.bucket(addr) != s.addrs.bucket(netip.MustParseAddrPort("10.0.0.1:81")) {
		t.Error("rows of other addresses woke the reader of 10.0.0.1:80")
	}
}

// Readers that follow addresses while several providers write them end
// with what the store holds: the table is read at call time and the rows
// at the snapshot's, and every window between the two is watched.
func TestEndpointsByAddrReadersConverge(t *testing.T) {
	s := New()
	addrs := make([]netip.AddrPort, 8)
	for i := range addrs {
		addrs[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80)
	}
	describe := func(ms []AddrMatch) string {
		var out []string
		for _, m := range ms {
			out = append(out, fmt.Sprintf("%s %s/%s w%d", m.Authority, m.Endpoint.Source, m.Endpoint.Key, m.Endpoint.Weight))
		}
		return fmt.Sprint(out)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var readers sync.WaitGroup
	last := make([]string, len(addrs))
	for i, a := range addrs {
		readers.Go(func() {
			for {
				ws := memdb.NewWatchSet()
				last[i] = describe(s.Snapshot().EndpointsByAddr(ws, a))
				if ws.WatchCtx(ctx) != nil {
					// Stopped: a watch that fired meanwhile means one
					// more read, as the watcher would have made.
					if watchFired(ws) {
						last[i] = describe(s.Snapshot().EndpointsByAddr(nil, a))
					}
					return
				}
			}
		})
	}
	var writers sync.WaitGroup
	for w := range 3 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range 400 {
				var eps []discovery.Endpoint
				for _, a := range addrs {
					if rng.IntN(3) == 0 {
						eps = append(eps, ep(a.String(), weight(uint32(rng.IntN(5)+1))))
					}
				}
				host := fmt.Sprintf("svc-%d.demo:80", rng.IntN(3))
				apply(t, s, fmt.Sprintf("p%d", w), group(fmt.Sprintf("k%d", rng.IntN(2)), svc(host, eps...)))
			}
		})
	}
	writers.Wait()
	stop()
	readers.Wait()
	for i, a := range addrs {
		// What a reader saw after its last wake is what the store holds.
		if want := describe(s.Snapshot().EndpointsByAddr(nil, a)); last[i] != want {
			t.Errorf("%s: reader ended with %s, the store has %s", a, last[i], want)
		}
	}
}
