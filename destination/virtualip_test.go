package destination

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
)

// fakeVIPs is a VirtualIPs whose table the test replaces.
type fakeVIPs struct {
	mu      sync.Mutex
	hosts   map[netip.Addr]string
	changed chan struct{}
}

func (f *fakeVIPs) LookupVIP(ip netip.Addr) (string, <-chan struct{}, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hosts[ip]
	return h, f.changed, ok
}

func (f *fakeVIPs) set(hosts map[netip.Addr]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts = hosts
	close(f.changed)
	f.changed = make(chan struct{})
}

// GetProfile(VIP:port) is the profile of the host the VIP stands for, so
// that a proxy that discovers by IP then calls Get with the name; when
// the table changes, the stream follows.
func TestGetProfileOfVirtualIP(t *testing.T) {
	vip := netip.MustParseAddr("240.0.0.7")
	vips := &fakeVIPs{hosts: map[netip.Addr]string{vip: "web.demo"}, changed: make(chan struct{})}
	h := newHarness(t, Options{VirtualIPs: vips})
	h.apply("p", group("f", "web.demo", 8080, "10.0.0.1:8080"), group("g", "api.demo", 8080, "10.0.0.2:8080"))

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := h.client.GetProfile(ctx, &pb.GetDestination{Path: "240.0.0.7:8080"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.Recv()
	if err != nil || p.GetFullyQualifiedName() != "web.demo" || p.GetEndpoint() != nil {
		t.Fatalf("GetProfile(VIP): %v %v", p, err)
	}
	vips.set(map[netip.Addr]string{vip: "api.demo"})
	if p, err = st.Recv(); err != nil || p.GetFullyQualifiedName() != "api.demo" {
		t.Fatalf("after the table changed: %v %v", p, err)
	}
	// An endpoint address is still an endpoint profile.
	ep, err := h.client.GetProfile(ctx, &pb.GetDestination{Path: "10.0.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	if p, err = ep.Recv(); err != nil || p.GetEndpoint() == nil || p.GetFullyQualifiedName() != "" {
		t.Fatalf("endpoint profile: %v %v", p, err)
	}
}
