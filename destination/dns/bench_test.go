package dns

import (
	"fmt"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// BenchmarkAnswer is one A answer, the handler alone (no sockets), at
// 1,000 and 100,000 names.
func BenchmarkAnswer(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("names=%d", n), func(b *testing.B) {
			store := cache.New()
			svcs := make([]discovery.Service, n)
			for i := range svcs {
				ip := netip.AddrFrom4([4]byte{10, byte(1 + i/62500), byte(i / 250 % 250), byte(1 + i%250)})
				svcs[i] = discovery.Service{Authority: discovery.Authority{Host: fmt.Sprintf("svc%d.demo", i), Port: 80},
					Endpoints: []discovery.Endpoint{{Addr: netip.AddrPortFrom(ip, 80)}}}
			}
			if _, err := store.Apply("file", []discovery.Group{{Key: "k", Services: svcs}}); err != nil {
				b.Fatal(err)
			}
			set, err := Config{Zones: []ZoneConfig{{Zone: "demo."}}}.Settings()
			if err != nil {
				b.Fatal(err)
			}
			s, err := New(Options{Store: store, Settings: set})
			if err != nil {
				b.Fatal(err)
			}
			queries := make([]*mdns.Msg, 1024)
			for i := range queries {
				queries[i] = new(mdns.Msg).SetQuestion(fmt.Sprintf("svc%d.demo.", (i*7919)%n), mdns.TypeA)
			}
			client := netip.MustParseAddr("127.0.0.1")
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if r := s.Answer(queries[i%len(queries)], client, true); len(r.Answer) != 1 {
					b.Fatal(r)
				}
			}
		})
	}
}
