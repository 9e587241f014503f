package dns

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// BenchmarkRebuild is one rebuild of the index of names at 100,000 hosts,
// without and with virtual IPs.
func BenchmarkRebuild(b *testing.B) {
	n := 100000
	store := cache.New()
	svcs := make([]discovery.Service, n)
	for i := range svcs {
		ip := netip.AddrFrom4([4]byte{10, byte(1 + i/62500), byte(i / 250 % 250), byte(1 + i%250)})
		svcs[i] = discovery.Service{Authority: discovery.Authority{Host: fmt.Sprintf("svc%d.demo", i), Port: 80},
			Endpoints: []discovery.Endpoint{{Addr: netip.AddrPortFrom(ip, 80)}}}
	}
	store.Apply("file", []discovery.Group{{Key: "k", Services: svcs}})
	for _, vips := range []bool{false, true} {
		b.Run(fmt.Sprint("vips=", vips), func(b *testing.B) {
			cfg := Config{Zones: []ZoneConfig{{Zone: "demo.", VirtualIPs: vips}}}
			if vips {
				cfg.VirtualIPs = &VIPConfig{CIDR: "240.0.0.0/4"}
			}
			set, _ := cfg.Settings()
			s, _ := New(Options{Store: store, Settings: set, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				s.refresh(context.Background())
			}
		})
	}
}
