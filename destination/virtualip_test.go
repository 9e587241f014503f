package destination

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/discovery"
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
	h := newHarness(t, Options{VirtualIPs: []VirtualIPs{vips}})
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

// A proxy asks GetProfile(ClusterIP:port) with the address the application
// dialled. The server asks every lookup in order — the DNS interface's
// virtual IPs, then each Kubernetes source's cluster IPs — and answers as
// Linkerd's controller does for a ClusterIP: the Service's name,
// opaque_protocol for the requested port, the default retry budget, no
// endpoint; for a port the Service does not define, an empty profile. A
// change in any lookup asked, or in the registry, updates the stream.
func TestGetProfileOfClusterIP(t *testing.T) {
	const db, web = "db.prod.svc.cluster.local", "web.prod.svc.cluster.local"
	v4, v6 := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::a")
	dnsVIPs := &fakeVIPs{hosts: map[netip.Addr]string{netip.MustParseAddr("240.0.0.7"): "api.demo"}, changed: make(chan struct{})}
	k8s := &fakeVIPs{hosts: map[netip.Addr]string{v4: db, v6: db}, changed: make(chan struct{})} // dual-stack
	h := newHarness(t, Options{VirtualIPs: []VirtualIPs{dnsVIPs, k8s}})
	opaque := group("k/db", db, 3306, "10.244.0.5:3306")
	opaque.Services[0].Opaque = true
	opaque.Services[0].Endpoints[0].Protocol = discovery.ProtocolOpaque
	opaque.Services[0].Endpoints[0].OpaqueTransport = 4143
	h.apply("k", opaque, group("k/web", web, 3306, "10.244.0.6:3306"), group("d", "api.demo", 8080, "10.0.0.2:8080"))

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	open := func(path string) pb.Destination_GetProfileClient {
		t.Helper()
		st, err := h.client.GetProfile(ctx, &pb.GetDestination{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	recv := func(st pb.Destination_GetProfileClient, where string, want *pb.DestinationProfile) {
		t.Helper()
		p, err := st.Recv()
		if err != nil || !proto.Equal(p, want) {
			t.Fatalf("%s: got %v (%v), want %v", where, p, err, want)
		}
	}
	dbProfile := &pb.DestinationProfile{FullyQualifiedName: db, OpaqueProtocol: true, RetryBudget: defaultRetryBudget()}

	st4 := open("10.96.0.10:3306")
	recv(st4, "IPv4 ClusterIP", dbProfile)
	recv(open("[fd00:10:96::a]:3306"), "IPv6 ClusterIP", dbProfile)
	recv(open("[::ffff:10.96.0.10]:3306"), "IPv4-mapped ClusterIP", dbProfile)
	recv(open("10.96.0.10:9999"), "a port the Service does not define", &pb.DestinationProfile{})
	recv(open("240.0.0.7:8080"), "the DNS interface's VIP, asked first",
		&pb.DestinationProfile{FullyQualifiedName: "api.demo", RetryBudget: defaultRetryBudget()})

	// The Service's opaque ports change: the same stream follows.
	opaque.Services[0].Opaque = false
	h.apply("k", opaque)
	recv(st4, "opaque port dropped", &pb.DestinationProfile{FullyQualifiedName: db, RetryBudget: defaultRetryBudget()})
	// The cluster IP moves to another Service (the second lookup changes).
	k8s.set(map[netip.Addr]string{v4: web})
	recv(st4, "cluster IP reassigned", &pb.DestinationProfile{FullyQualifiedName: web, RetryBudget: defaultRetryBudget()})
	// The first lookup claims the IP: it wins.
	dnsVIPs.set(map[netip.Addr]string{v4: db})
	recv(st4, "the first lookup wins", &pb.DestinationProfile{FullyQualifiedName: db, RetryBudget: defaultRetryBudget()})
	// Nobody claims it: an address no endpoint has, the empty endpoint profile.
	dnsVIPs.set(nil)
	k8s.set(nil)
	recv(st4, "cluster IP released", &pb.DestinationProfile{RetryBudget: defaultRetryBudget()})
}
