package main

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"github.com/linkerd/linkerd2-proxy-api/go/outbound"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination/policy"
	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/sources/kubernetes"
)

// GetProfile(ClusterIP:port) needs the server to ask every kubernetes
// source's cluster IPs: serve finds them among the built sources, in
// config order, and only them.
func TestSourceVIPsAreTheKubernetesSources(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "tributary.yaml")
	if err := os.WriteFile(cfg, []byte(`sources:
  - name: east
    kind: kubernetes
  - name: local
    kind: file
    paths: ["services/*.yaml"]
  - name: west
    kind: kubernetes
    cluster_domain: west.local
`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	instances, err := c.BuildSources(nil)
	if err != nil {
		t.Fatal(err)
	}
	vips := sourceVIPs(instances)
	if len(vips) != 2 {
		t.Fatalf("%d lookups, want the 2 kubernetes sources", len(vips))
	}
	for i, name := range []string{"east", "west"} {
		var want any
		for _, in := range instances {
			if in.Config.Name == name {
				want = in.Source
			}
		}
		if _, ok := vips[i].(*kubernetes.Source); !ok || vips[i] != want {
			t.Errorf("lookup %d is %T, want source %s", i, vips[i], name)
		}
	}
}

// The policy API's opaque protocol follows the registry's service rows, as
// GetProfile's opaque_protocol does; a port the host is not declared with
// is undefined.
func TestPolicyPort(t *testing.T) {
	store := cache.New()
	db := discovery.Service{Authority: discovery.Authority{Host: "db.demo", Port: 5432}, Opaque: true,
		Endpoints: []discovery.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.9:5432")}}}
	if _, err := store.Apply("local", []discovery.Group{{Key: "db", Services: []discovery.Service{db, webDemo()}}}); err != nil {
		t.Fatal(err)
	}
	port := policyPort(store, nil)
	if pt := port("db.demo", 5432); !pt.Opaque || pt.Undefined || len(pt.Changed) == 0 {
		t.Errorf("db.demo:5432: %+v, want opaque, defined, with watch channels", pt)
	}
	if pt := port("web.demo", 8080); pt.Opaque || pt.Undefined {
		t.Errorf("web.demo:8080: %+v, want detected, defined", pt)
	}
	if pt := port("web.demo", 9999); !pt.Undefined {
		t.Errorf("web.demo:9999: %+v, want undefined", pt)
	}
	if pt := port("nowhere.demo", 80); pt.Opaque || pt.Undefined {
		t.Errorf("nowhere.demo:80: %+v, want neither: a host with no rows may yet appear", pt)
	}
}

// fixedVIP is a virtual IP table of one address that never changes.
type fixedVIP struct {
	ip   netip.Addr
	host string
}

func (f fixedVIP) LookupVIP(ip netip.Addr) (string, <-chan struct{}, bool) {
	return f.host, nil, ip == f.ip
}

// A policy Watch on a VIP:port follows the registry: detect, opaque when
// the service is marked opaque, detect again when the mark goes; and
// Linkerd's undefined-port policy while the service does not declare the
// port.
func TestPolicyWatchFollowsRegistry(t *testing.T) {
	store := cache.New()
	apply := func(svcs ...discovery.Service) {
		t.Helper()
		if _, err := store.Apply("local", []discovery.Group{{Key: "db", Services: svcs}}); err != nil {
			t.Fatal(err)
		}
	}
	db := func(port uint16, opaque bool) discovery.Service {
		return discovery.Service{Authority: discovery.Authority{Host: "db.demo", Port: port}, Opaque: opaque,
			Endpoints: []discovery.Endpoint{{Addr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.9"), port)}}}
	}
	apply(db(5432, false))
	vip := netip.MustParseAddr("240.0.0.5")
	srv, err := policy.New(policy.Options{VirtualIPs: []policy.VirtualIPs{fixedVIP{vip, "db.demo"}}, Port: policyPort(store, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	served := make(chan struct{})
	go func() { defer close(served); _ = g.Serve(ln) }()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cc.Close(); g.Stop(); <-served }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := outbound.NewOutboundPoliciesClient(cc).Watch(ctx, &outbound.TrafficSpec{Target: &outbound.TrafficSpec_Addr{
		Addr: &pbnet.TcpAddress{Ip: policy.IPAddress(vip), Port: 5432},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// protocol is the next policy's protocol kind, or "undefined-port".
	protocol := func() string {
		t.Helper()
		p, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch k := p.GetProtocol().GetKind().(type) {
		case *outbound.ProxyProtocol_Detect_:
			return "detect"
		case *outbound.ProxyProtocol_Opaque_:
			if k.Opaque.GetRoutes()[0].GetMetadata().GetDefault() == "undefined-port" {
				return "undefined-port"
			}
			return "opaque"
		}
		return "none"
	}
	for i, step := range []struct {
		svcs []discovery.Service
		want string
	}{
		{nil, "detect"},
		{[]discovery.Service{db(5432, true)}, "opaque"},
		{[]discovery.Service{db(5432, false)}, "detect"},
		{[]discovery.Service{db(6543, false)}, "undefined-port"},
		{[]discovery.Service{db(6543, false), db(5432, true)}, "opaque"},
	} {
		if step.svcs != nil {
			apply(step.svcs...)
		}
		if got := protocol(); got != step.want {
			t.Fatalf("step %d: protocol %s, want %s", i, got, step.want)
		}
	}
}
