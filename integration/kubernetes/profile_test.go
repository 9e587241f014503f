//go:build integration

package kubernetes

import (
	"context"
	"net/netip"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// profiles is a GetProfile stream; it ends with the test.
type profiles struct {
	t    *testing.T
	path string
	msgs chan *pb.DestinationProfile
	errc chan error
}

func openProfile(t *testing.T, client pb.DestinationClient, path string) *profiles {
	t.Helper()
	return openProfileFrom(t, client, path, "client")
}

// openProfileFrom opens a GetProfile stream as a client in namespace ns.
func openProfileFrom(t *testing.T, client pb.DestinationClient, path, ns string) *profiles {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := client.GetProfile(ctx, &pb.GetDestination{Scheme: "k8s", Path: path, ContextToken: `{"ns":"` + ns + `"}`})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	p := &profiles{t: t, path: path, msgs: make(chan *pb.DestinationProfile, 16), errc: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := c.Recv()
			if err != nil {
				p.errc <- err
				return
			}
			p.msgs <- m
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// expect checks the next profile.
func (p *profiles) expect(what string, want *pb.DestinationProfile) *pb.DestinationProfile {
	p.t.Helper()
	m := p.next(what)
	if !proto.Equal(m, want) {
		p.t.Fatalf("GetProfile(%s), %s: got %v, want %v", p.path, what, m, want)
	}
	return m
}

// expectFinal checks that the stream reaches want, passing through nothing
// but allowed.
func (p *profiles) expectFinal(what string, want *pb.DestinationProfile, allowed ...*pb.DestinationProfile) {
	p.t.Helper()
	for {
		m := p.next(what)
		if proto.Equal(m, want) {
			return
		}
		ok := false
		for _, a := range allowed {
			ok = ok || proto.Equal(m, a)
		}
		if !ok {
			p.t.Fatalf("GetProfile(%s), %s: got %v, want %v", p.path, what, m, want)
		}
	}
}

// next is the next profile.
func (p *profiles) next(what string) *pb.DestinationProfile {
	p.t.Helper()
	select {
	case m := <-p.msgs:
		return m
	case err := <-p.errc:
		p.t.Fatalf("GetProfile(%s), %s: stream ended: %v", p.path, what, err)
	case <-time.After(harness.WaitFor):
		p.t.Fatalf("GetProfile(%s), %s: no profile within %v", p.path, what, harness.WaitFor)
	}
	return nil
}

// linkerdRetryBudget is the budget Linkerd's controller sends by default.
func linkerdRetryBudget() *pb.RetryBudget {
	return &pb.RetryBudget{RetryRatio: 0.2, MinRetriesPerSecond: 10, Ttl: durationpb.New(10 * time.Second)}
}

// testProfileByClusterIP follows a stock proxy's lookup flow against a
// real API server: the application dials a Service's ClusterIP, the proxy
// asks GetProfile(ClusterIP:port), learns the Service's name, and calls
// Get(name:port). A dual-stack Service (the API server allocates an IPv4
// and an IPv6 cluster IP) selects a meshed pod whose proxy listens on a
// non-default inbound port, and an unmeshed pod.
func testProfileByClusterIP(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	rs := []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5c9d7", UID: "21111111-2222-3333-4444-555555555555", Controller: ptr(true)}}
	meshed := f.pod(meshedPod("web-5c9d7-a", rs, "0.0.0.0:4243", nil)) // 3306 is opaque by Linkerd's default list
	plain := f.pod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "plain-0", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "plain"},
	})
	dual := corev1.IPFamilyPolicyRequireDualStack
	svc := f.createService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector:       map[string]string{"app": "web"},
			IPFamilyPolicy: &dual,
			IPFamilies:     []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol},
			Ports:          []corev1.ServicePort{svcPort("http", 80, intstr.FromString("http")), svcPort("mysql", 3306, intstr.FromString("mysql"))},
		},
	})
	var v4, v6 netip.Addr
	for _, s := range svc.Spec.ClusterIPs {
		a := netip.MustParseAddr(s)
		if a.Is4() {
			v4 = a
		} else {
			v6 = a
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		t.Fatalf("the API server allocated cluster IPs %v, want one of each family", svc.Spec.ClusterIPs)
	}
	// A single-stack IPv6 Service, as in an IPv6-only cluster.
	single := corev1.IPFamilyPolicySingleStack
	only6 := f.createService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "v6only"},
		Spec: corev1.ServiceSpec{
			IPFamilyPolicy: &single,
			IPFamilies:     []corev1.IPFamily{corev1.IPv6Protocol},
			Ports:          []corev1.ServicePort{svcPort("http", 80, intstr.FromInt32(8080))},
		},
	})
	f.sliceOf(discoveryv1.AddressTypeIPv6, "v6only", "v6only-1", []discoveryv1.EndpointPort{slicePort("http", 8080)}, ep("fd00::6:1"))
	f.slice("web", "web-pods", []discoveryv1.EndpointPort{slicePort("http", 8080), slicePort("mysql", 3306)},
		ep("10.6.2.1", podRef(f.ns, meshed.Name, meshed.UID)),
		ep("10.6.2.2", podRef(f.ns, plain.Name, plain.UID)))

	s := start(t, source("east", e.east.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))
	c := s.Client()
	fqn := f.host("web")
	httpProfile := &pb.DestinationProfile{FullyQualifiedName: fqn, RetryBudget: linkerdRetryBudget()}
	dbProfile := &pb.DestinationProfile{FullyQualifiedName: fqn, OpaqueProtocol: true, RetryBudget: linkerdRetryBudget()}

	// GetProfile by either cluster IP → the name, then Get by the name.
	byV4 := openProfile(t, c, netip.AddrPortFrom(v4, 80).String())
	p := byV4.expect("IPv4 ClusterIP, http", httpProfile)
	openProfile(t, c, netip.AddrPortFrom(v6, 80).String()).expect("IPv6 ClusterIP, http", httpProfile)
	openProfile(t, c, netip.AddrPortFrom(v4, 3306).String()).expect("IPv4 ClusterIP, mysql", dbProfile)
	p6 := openProfile(t, c, netip.AddrPortFrom(v6, 3306).String()).expect("IPv6 ClusterIP, mysql", dbProfile)
	openProfile(t, c, netip.AddrPortFrom(v4, 9999).String()).expect("a port the Service does not define", &pb.DestinationProfile{})
	openProfile(t, c, netip.MustParseAddrPort("[::ffff:"+v4.String()+"]:80").String()).expect("IPv4-mapped", httpProfile)
	openProfile(t, c, netip.AddrPortFrom(netip.MustParseAddr(only6.Spec.ClusterIP), 80).String()).
		expect("single-stack IPv6 ClusterIP", &pb.DestinationProfile{FullyQualifiedName: f.host("v6only"), RetryBudget: linkerdRetryBudget()})

	webID := "web." + f.ns + ".serviceaccount.identity.linkerd.cluster.local"
	web := get(t, s, p.GetFullyQualifiedName()+":80")
	web.expect("add:10.6.2.1:8080,10.6.2.2:8080")
	if wa := web.addr("10.6.2.1:8080"); wa.GetTlsIdentity().GetDnsLikeIdentity().GetName() != webID ||
		wa.GetProtocolHint().GetH2() == nil || wa.GetProtocolHint().GetOpaqueTransport() != nil {
		t.Errorf("meshed pod on http: identity %v, hint %v; want %s, h2 without opaque transport", wa.GetTlsIdentity(), wa.GetProtocolHint(), webID)
	}
	if wa := web.addr("10.6.2.2:8080"); wa.GetTlsIdentity() != nil || wa.GetProtocolHint() != nil {
		t.Errorf("unmeshed pod: identity %v, hint %v; want neither", wa.GetTlsIdentity(), wa.GetProtocolHint())
	}
	db := get(t, s, p6.GetFullyQualifiedName()+":3306")
	db.expect("add:10.6.2.1:3306,10.6.2.2:3306")
	if wa := db.addr("10.6.2.1:3306"); wa.GetTlsIdentity().GetDnsLikeIdentity().GetName() != webID ||
		wa.GetProtocolHint().GetOpaque() == nil || wa.GetProtocolHint().GetOpaqueTransport().GetInboundPort() != 4243 {
		t.Errorf("meshed pod on an opaque port: identity %v, hint %v; want %s, opaque with opaque_transport{inbound_port: 4243}",
			wa.GetTlsIdentity(), wa.GetProtocolHint(), webID)
	}
	if wa := db.addr("10.6.2.2:3306"); wa.GetProtocolHint() != nil {
		t.Errorf("unmeshed pod on an opaque port: hint %v, want none", wa.GetProtocolHint())
	}
	// GetProfile by the pod's IP: the endpoint, with its opaque transport.
	pod := openProfile(t, c, "10.6.2.1:3306").next("pod IP")
	if pod.GetFullyQualifiedName() != "" || !pod.GetOpaqueProtocol() ||
		pod.GetEndpoint().GetProtocolHint().GetOpaqueTransport().GetInboundPort() != 4243 ||
		pod.GetEndpoint().GetTlsIdentity().GetDnsLikeIdentity().GetName() != webID {
		t.Errorf("GetProfile(pod IP:3306) = %v; want the endpoint, opaque, with opaque_transport 4243 and %s", pod, webID)
	}

	// Live: the Service's opaque ports change, then the Service goes.
	svc.Annotations = map[string]string{"config.linkerd.io/opaque-ports": "80"}
	if _, err := f.cs.CoreV1().Services(f.ns).Update(f.ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	byV4.expect("port 80 made opaque", &pb.DestinationProfile{FullyQualifiedName: fqn, OpaqueProtocol: true, RetryBudget: linkerdRetryBudget()})
	f.deleteService("web")
	// No longer a cluster IP, nor an endpoint's: the empty endpoint profile
	// (on the way, at most the empty profile of a name without its port).
	byV4.expectFinal("Service deleted", &pb.DestinationProfile{RetryBudget: linkerdRetryBudget()}, &pb.DestinationProfile{})
}
