//go:build integration

package kubernetes

import (
	"net/netip"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	httppb "github.com/linkerd/linkerd2-proxy-api/go/http_types"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var serviceProfileGVR = schema.GroupVersionResource{Group: "linkerd.io", Version: "v1alpha2", Resource: "serviceprofiles"}

// booksProfile is a ServiceProfile spec with every part GetProfile serves.
func booksProfile(timeout string) map[string]any {
	return map[string]any{
		"routes": []any{
			map[string]any{
				"name": "GET /books/{id}",
				"condition": map[string]any{
					"method":    "GET",
					"pathRegex": "/books/[^/]*",
				},
				"responseClasses": []any{map[string]any{
					"condition": map[string]any{"status": map[string]any{"min": int64(500), "max": int64(599)}},
					"isFailure": true,
				}},
				"isRetryable": true,
				"timeout":     timeout,
			},
			map[string]any{
				"name":      "POST /books",
				"condition": map[string]any{"method": "POST"},
			},
		},
		"retryBudget": map[string]any{"retryRatio": 0.3, "minRetriesPerSecond": int64(5), "ttl": "15s"},
		"dstOverrides": []any{
			map[string]any{"authority": "web-v1.example.svc.cluster.local", "weight": "500m"},
			map[string]any{"authority": "web-v2.example.svc.cluster.local:8080", "weight": "500m"},
		},
	}
}

// booksWire is booksProfile as Linkerd's profile translator writes it.
func booksWire(fqn string, timeout time.Duration) *pb.DestinationProfile {
	var to *durationpb.Duration
	if timeout != 0 {
		to = durationpb.New(timeout)
	}
	get := &httppb.HttpMethod{Type: &httppb.HttpMethod_Registered_{Registered: httppb.HttpMethod_GET}}
	post := &httppb.HttpMethod{Type: &httppb.HttpMethod_Registered_{Registered: httppb.HttpMethod_POST}}
	return &pb.DestinationProfile{
		FullyQualifiedName: fqn,
		Routes: []*pb.Route{
			{
				Condition: &pb.RequestMatch{Match: &pb.RequestMatch_All{All: &pb.RequestMatch_Seq{Matches: []*pb.RequestMatch{
					{Match: &pb.RequestMatch_Method{Method: get}},
					{Match: &pb.RequestMatch_Path{Path: &pb.PathMatch{Regex: "/books/[^/]*"}}},
				}}}},
				ResponseClasses: []*pb.ResponseClass{{
					Condition: &pb.ResponseMatch{Match: &pb.ResponseMatch_Status{Status: &pb.HttpStatusRange{Min: 500, Max: 599}}},
					IsFailure: true,
				}},
				MetricsLabels: map[string]string{"route": "GET /books/{id}"},
				IsRetryable:   true,
				Timeout:       to,
			},
			{
				Condition:       &pb.RequestMatch{Match: &pb.RequestMatch_Method{Method: post}},
				ResponseClasses: []*pb.ResponseClass{},
				MetricsLabels:   map[string]string{"route": "POST /books"},
			},
		},
		RetryBudget: &pb.RetryBudget{RetryRatio: 0.3, MinRetriesPerSecond: 5, Ttl: durationpb.New(15 * time.Second)},
		DstOverrides: []*pb.WeightedDst{
			{Authority: "web-v1.example.svc.cluster.local:80", Weight: 5000},
			{Authority: "web-v2.example.svc.cluster.local:8080", Weight: 5000},
		},
	}
}

// testServiceProfiles: a ServiceProfile for a Service is served by
// GetProfile of its ClusterIP and of its name, with its routes, retry
// budget and traffic split, updated live when it changes, and gone when it
// is deleted. A client whose namespace has a ServiceProfile of the same
// name gets that one instead, as with Linkerd.
func testServiceProfiles(t *testing.T, e *env) {
	installCRDs(t, e.east)
	d := e.east.dynamic(t)
	f := newFixture(t, e.east)
	client := fixtureIn(t, e.east, f.ns+"-client")
	svc := f.createService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "books"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "books"},
			Ports:    []corev1.ServicePort{svcPort("http", 80, intstr.FromInt32(8080))},
		},
	})
	fqn := f.host("books")
	sp := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
		"metadata": map[string]any{"name": fqn, "namespace": f.ns},
		"spec":     booksProfile("300ms"),
	}}
	res := d.Resource(serviceProfileGVR).Namespace(f.ns)
	created, err := res.Create(t.Context(), sp, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	clientSpec := booksProfile("7s")
	clientSpec["dstOverrides"] = []any{}
	clientSP := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
		"metadata": map[string]any{"name": fqn, "namespace": client.ns},
		"spec":     clientSpec,
	}}
	if _, err := d.Resource(serviceProfileGVR).Namespace(client.ns).Create(t.Context(), clientSP, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	s := start(t, source("east", e.east.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+", "+client.ns+"]"))
	c := s.Client()
	ipPort := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80).String()
	byIP := openProfile(t, c, ipPort)
	byName := openProfile(t, c, fqn+":80")

	// A client in the namespace with its own ServiceProfile gets it, by IP
	// and by name; when it goes, the Service's.
	clientWire := booksWire(fqn, 7*time.Second)
	clientWire.DstOverrides = nil
	for _, path := range []string{ipPort, fqn + ":80"} {
		openProfileFrom(t, c, path, client.ns).expectFinal("the client's namespace's ServiceProfile", clientWire,
			&pb.DestinationProfile{RetryBudget: linkerdRetryBudget()}, &pb.DestinationProfile{})
	}
	fromClient := openProfileFrom(t, c, fqn+":80", client.ns)
	fromClient.expect("the client's namespace's ServiceProfile", clientWire)
	if err := d.Resource(serviceProfileGVR).Namespace(client.ns).Delete(t.Context(), fqn, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	fromClient.expect("the client's namespace's ServiceProfile deleted", booksWire(fqn, 300*time.Millisecond))

	bare := &pb.DestinationProfile{FullyQualifiedName: fqn, RetryBudget: linkerdRetryBudget()}
	for _, p := range []*profiles{byIP, byName} {
		// The first answer may precede the source's first hand-over.
		p.expectFinal("ServiceProfile created", booksWire(fqn, 300*time.Millisecond), &pb.DestinationProfile{RetryBudget: linkerdRetryBudget()}, &pb.DestinationProfile{})
	}

	// Live: the route's timeout changes.
	created.Object["spec"] = booksProfile("2s")
	updated, err := res.Update(t.Context(), created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*profiles{byIP, byName} {
		p.expect("timeout changed", booksWire(fqn, 2*time.Second))
	}

	// Invalid (a status out of range): logged and served as none.
	bad := booksProfile("2s")
	bad["routes"].([]any)[0].(map[string]any)["responseClasses"] = []any{map[string]any{"condition": map[string]any{"status": map[string]any{"min": int64(700)}}}}
	updated.Object["spec"] = bad
	if updated, err = res.Update(t.Context(), updated, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*profiles{byIP, byName} {
		p.expect("invalid ServiceProfile", bare)
	}
	updated.Object["spec"] = booksProfile("1s")
	if _, err = res.Update(t.Context(), updated, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*profiles{byIP, byName} {
		p.expect("ServiceProfile fixed", booksWire(fqn, time.Second))
	}

	if err := res.Delete(t.Context(), fqn, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*profiles{byIP, byName} {
		p.expect("ServiceProfile deleted", bare)
	}
}
