//go:build integration

package kubernetes

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// testServicesAndScaling: first messages (endpoints, exists-without-ready-
// endpoints, unknown), scale up and down, a second slice, deletions.
func testServicesAndScaling(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	web := f.slice("web", "web-1", http, ep("10.1.0.1"), ep("10.1.0.2"))
	f.service("idle", svcPort("http", 80, intstr.FromInt32(8080)))
	f.service("down", svcPort("http", 80, intstr.FromInt32(8080)))
	f.slice("down", "down-1", http, ep("10.1.1.1", notReady()))

	kc := e.east.kubeconfig(t, t.TempDir(), tributaryToken)
	s := start(t, source("east", kc, "namespaces: ["+f.ns+"]"))

	ws := get(t, s, f.host("web")+":80")
	ws.expect("add:10.1.0.1:8080,10.1.0.2:8080")
	get(t, s, f.host("idle")+":80").expect("none:true")
	get(t, s, f.host("down")+":80").expect("none:true")
	unknown := get(t, s, f.host("later")+":80")
	unknown.expect("none:false")
	get(t, s, f.host("web")+":81").expect("none:false") // not a port of the Service

	// Scale up, then down.
	web = f.setEndpoints(web, ep("10.1.0.1"), ep("10.1.0.2"), ep("10.1.0.3"))
	ws.expect("add:10.1.0.3:8080")
	web = f.setEndpoints(web, ep("10.1.0.2"), ep("10.1.0.3"))
	ws.expect("remove:10.1.0.1:8080")
	// A second slice of the same Service adds to it; deleting it takes its endpoints away.
	f.slice("web", "web-2", http, ep("10.1.0.9"))
	ws.expect("add:10.1.0.9:8080")
	f.deleteSlice("web-2")
	ws.expect("remove:10.1.0.9:8080")
	// Every endpoint gone: the Service still exists.
	f.setEndpoints(web)
	ws.expect("none:true")

	// A Service created later reaches a stream opened before it existed.
	f.service("later", svcPort("http", 80, intstr.FromInt32(8080)))
	unknown.expect("none:true")
	f.slice("later", "later-1", http, ep("10.1.2.1"))
	unknown.expect("add:10.1.2.1:8080")
	// Deleted (its slice left behind, as without the garbage collector): unknown again.
	f.deleteService("later")
	unknown.expect("none:false")
}

// testReadinessAndTermination: readiness flips; terminating endpoints are
// evicted, or with serve_terminating kept while no endpoint is ready.
func testReadinessAndTermination(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	sl := f.slice("web", "web-1", http, ep("10.2.0.1"), ep("10.2.0.2"))

	kc := e.east.kubeconfig(t, t.TempDir(), tributaryToken)
	evict := get(t, start(t, source("east", kc, "namespaces: ["+f.ns+"]")), f.host("web")+":80")
	drain := get(t, start(t, source("east", kc, "namespaces: ["+f.ns+"]", "serve_terminating: true")), f.host("web")+":80")
	both := func(want ...string) {
		t.Helper()
		evict.expect(want...)
		drain.expect(want...)
	}
	both("add:10.2.0.1:8080,10.2.0.2:8080")

	sl = f.setEndpoints(sl, ep("10.2.0.1"), ep("10.2.0.2", notReady()))
	both("remove:10.2.0.2:8080")
	sl = f.setEndpoints(sl, ep("10.2.0.1"), ep("10.2.0.2"))
	both("add:10.2.0.2:8080")

	// A rollout: 10.2.0.1 terminates while it still serves. A ready
	// endpoint remains, so both stop sending it new connections.
	sl = f.setEndpoints(sl, ep("10.2.0.1", terminating(true)), ep("10.2.0.2"))
	both("remove:10.2.0.1:8080")
	// Every endpoint is terminating and no new one is ready yet: evicting
	// leaves the Service empty; serve_terminating keeps the draining ones.
	sl = f.setEndpoints(sl, ep("10.2.0.1", terminating(true)), ep("10.2.0.2", terminating(true)))
	evict.expect("none:true")
	drain.expect("add:10.2.0.1:8080")
	// One stops serving: it goes.
	sl = f.setEndpoints(sl, ep("10.2.0.1", terminating(false)), ep("10.2.0.2", terminating(true)))
	drain.expect("remove:10.2.0.1:8080")
	// A new pod is ready: only it is served.
	f.setEndpoints(sl, ep("10.2.0.2", terminating(true)), ep("10.2.0.3"))
	evict.expect("add:10.2.0.3:8080")
	drain.expect("add:10.2.0.3:8080", "remove:10.2.0.2:8080")
}

// testNamedTargetPorts: each endpoint's port is the slice port named like
// the Service port, which differs between pod versions.
func testNamedTargetPorts(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	f.service("web",
		svcPort("http", 80, intstr.FromString("web")),
		svcPort("admin", 9090, intstr.FromString("metrics")),
		svcPort("grpc", 9000, intstr.FromInt32(9000)))
	f.slice("web", "web-v1", []discoveryv1.EndpointPort{slicePort("http", 8080), slicePort("admin", 9091)}, ep("10.3.0.1"))
	f.slice("web", "web-v2", []discoveryv1.EndpointPort{slicePort("http", 8081), slicePort("admin", 9092)}, ep("10.3.0.2"))

	s := start(t, source("east", e.east.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))
	get(t, s, f.host("web")+":80").expect("add:10.3.0.1:8080,10.3.0.2:8081")
	get(t, s, f.host("web")+":9090").expect("add:10.3.0.1:9091,10.3.0.2:9092")
	// No pod publishes the target of grpc: the port exists, with no endpoints.
	get(t, s, f.host("web")+":9000").expect("none:true")
}

// testHeadlessPodNames: <hostname>.<svc>.<ns>.svc.cluster.local names one pod.
func testHeadlessPodNames(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	pg := []discoveryv1.EndpointPort{slicePort("pg", 5432)}
	f.createService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "pg"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{svcPort("pg", 5432, intstr.FromInt32(5432))}},
	})
	sl := f.slice("pg", "pg-1", pg, ep("10.4.0.1", hostname("pg-0")), ep("10.4.0.2", hostname("pg-1")))

	s := start(t, source("east", e.east.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))
	all := get(t, s, f.host("pg")+":5432")
	all.expect("add:10.4.0.1:5432,10.4.0.2:5432")
	pg0 := get(t, s, "pg-0."+f.host("pg")+":5432")
	pg0.expect("add:10.4.0.1:5432")
	pg1 := get(t, s, "pg-1."+f.host("pg")+":5432")
	pg1.expect("add:10.4.0.2:5432")

	// pg-1 not ready: its name still exists, without endpoints.
	sl = f.setEndpoints(sl, ep("10.4.0.1", hostname("pg-0")), ep("10.4.0.2", hostname("pg-1"), notReady()))
	pg1.expect("none:true")
	all.expect("remove:10.4.0.2:5432")
	// Scaled down: pg-1's name is gone.
	sl = f.setEndpoints(sl, ep("10.4.0.1", hostname("pg-0")))
	pg1.expect("none:false")
	// pg-0 recreated with a new address.
	f.setEndpoints(sl, ep("10.4.0.9", hostname("pg-0")))
	pg0.expect("add:10.4.0.9:5432", "remove:10.4.0.1:5432")
}

// node creates a Node with a zone label.
func (f *fixture) node(name, zone string) {
	f.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: zone}}}
	if _, err := f.cs.CoreV1().Nodes().Create(f.ctx, n, metav1.CreateOptions{}); err != nil {
		f.t.Fatalf("node %s: %v", name, err)
	}
}

func token(ns, node string) string {
	return fmt.Sprintf(`{"ns":%q,"nodeName":%q}`, ns, node)
}

// testZonesHintsAndLocality: zone from endpoint.zone, zone_locality for a
// client that names its node (hints: testTopologyHintsFiltering).
func testZonesHintsAndLocality(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	nodeA, nodeB := f.ns+"-node-a", f.ns+"-node-b"
	f.node(nodeA, "zone-a")
	f.node(nodeB, "zone-b")
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	f.slice("web", "web-1", http,
		ep("10.5.0.1", zone("zone-a")),
		ep("10.5.0.2", zone("zone-b")))

	s := start(t, source("east", e.east.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))
	fromA := getWithToken(t, s, f.host("web")+":80", token(f.ns, nodeA))
	fromA.expect("add:10.5.0.1:8080,10.5.0.2:8080")
	labels := func(st *stream, addr string) map[string]string {
		t.Helper()
		return st.addr(addr).GetMetricLabels()
	}
	check := func(st *stream, addr, key, want string) {
		t.Helper()
		if got := labels(st, addr)[key]; got != want {
			t.Errorf("%s %s=%q, want %q (labels %v)", addr, key, got, want, labels(st, addr))
		}
	}
	check(fromA, "10.5.0.1:8080", "zone", "zone-a")
	check(fromA, "10.5.0.1:8080", "zone_locality", "local")
	check(fromA, "10.5.0.2:8080", "zone", "zone-b")
	check(fromA, "10.5.0.2:8080", "zone_locality", "remote")

	// A node this cluster does not know: no locality either way.
	unknown := getWithToken(t, s, f.host("web")+":80", token(f.ns, "elsewhere"))
	unknown.expect("add:10.5.0.1:8080,10.5.0.2:8080")
	if l, ok := labels(unknown, "10.5.0.1:8080")["zone_locality"]; ok {
		t.Errorf("zone_locality %q for a client on an unknown node", l)
	}

	// A node that joins later is known once the watch brings it.
	nodeC := f.ns + "-node-c"
	f.node(nodeC, "zone-b")
	deadline := time.Now().Add(harness.WaitFor)
	for {
		fromC := getWithToken(t, s, f.host("web")+":80", token(f.ns, nodeC))
		fromC.expect("add:10.5.0.1:8080,10.5.0.2:8080")
		if labels(fromC, "10.5.0.2:8080")["zone_locality"] == "local" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s never got its zone: %v", nodeC, labels(fromC, "10.5.0.2:8080"))
		}
		time.Sleep(50 * time.Millisecond)
	}

}

// testTopologyHintsFiltering is the destination side of topology hints:
// a client in zone Z gets only the endpoints hinted for Z when every
// ready endpoint has hints and one is for Z; otherwise it gets all of them
// (kube-proxy's rule).
func testTopologyHintsFiltering(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	nodeA := f.ns + "-node-a"
	f.node(nodeA, "zone-a")
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	sl := f.slice("web", "web-1", http,
		ep("10.5.1.1", zone("zone-a"), hints("zone-a")),
		ep("10.5.1.2", zone("zone-b"), hints("zone-b")))
	s := start(t, source("east", e.east.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))
	fromA := getWithToken(t, s, f.host("web")+":80", token(f.ns, nodeA))
	fromA.expect("add:10.5.1.1:8080")
	noZone := get(t, s, f.host("web")+":80")
	noZone.expect("add:10.5.1.1:8080,10.5.1.2:8080")
	// An endpoint without hints: hints are ignored, every endpoint is served.
	sl = f.setEndpoints(sl,
		ep("10.5.1.1", zone("zone-a"), hints("zone-a")),
		ep("10.5.1.2", zone("zone-b"), hints("zone-b")),
		ep("10.5.1.3", zone("zone-b")))
	fromA.expect("add:10.5.1.2:8080,10.5.1.3:8080")
	// Hints again, none for zone-a: all.
	f.setEndpoints(sl,
		ep("10.5.1.2", zone("zone-b"), hints("zone-b")),
		ep("10.5.1.3", zone("zone-b"), hints("zone-b")))
	fromA.expect("remove:10.5.1.1:8080")
}

// testIdentityAndLabels: identities from the pods' service accounts, only
// for meshed pods in linkerd mode, SPIFFE in spiffe mode, none for a pod
// that is not known (yet); metric labels from the pod and its owner.
func testIdentityAndLabels(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	meshed := map[string]string{"linkerd.io/control-plane-ns": "linkerd", "pod-template-hash": "5c9d7"}
	rs := func(name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name, UID: "11111111-2222-3333-4444-555555555555", Controller: ptr(true)}}
	}
	p1 := f.pod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5c9d7-x1", Labels: meshed, OwnerReferences: rs("web-5c9d7")},
		Spec:       corev1.PodSpec{ServiceAccountName: "web"},
	})
	p2 := f.pod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy-0", OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "legacy", UID: "11111111-2222-3333-4444-666666666666", Controller: ptr(true)}}},
		Spec:       corev1.PodSpec{ServiceAccountName: "legacy"},
	})
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	f.slice("web", "web-1", http,
		ep("10.6.0.1", podRef(f.ns, p1.Name, p1.UID)),
		ep("10.6.0.2", podRef(f.ns, p2.Name, p2.UID)),
		ep("10.6.0.3", podRef(f.ns, "web-5c9d7-x3", "")))

	kc := e.east.kubeconfig(t, t.TempDir(), tributaryToken)
	l := get(t, start(t, source("east", kc, "namespaces: ["+f.ns+"]")), f.host("web")+":80")
	sp := get(t, start(t, source("east", kc, "namespaces: ["+f.ns+"]", "identity: spiffe", "trust_domain: example.org")), f.host("web")+":80")
	l.expect("add:10.6.0.1:8080,10.6.0.2:8080,10.6.0.3:8080")
	sp.expect("add:10.6.0.1:8080,10.6.0.2:8080,10.6.0.3:8080")

	dns := func(st *stream, addr string) (name, server string) {
		t.Helper()
		id := st.addr(addr).GetTlsIdentity()
		if id == nil {
			return "", ""
		}
		if id.GetUriLikeIdentity() != nil {
			return id.GetUriLikeIdentity().GetUri(), id.GetServerName().GetName()
		}
		return id.GetDnsLikeIdentity().GetName(), id.GetServerName().GetName()
	}
	webID := "web." + f.ns + ".serviceaccount.identity.linkerd.cluster.local"
	expectID := func(st *stream, addr, name, server string) {
		t.Helper()
		if n, s := dns(st, addr); n != name || s != server {
			t.Errorf("%s: identity %q (server name %q), want %q (%q)", addr, n, s, name, server)
		}
	}
	expectID(l, "10.6.0.1:8080", webID, webID)
	expectID(l, "10.6.0.2:8080", "", "") // not meshed
	expectID(l, "10.6.0.3:8080", "", "") // pod unknown
	expectID(sp, "10.6.0.1:8080", "spiffe://example.org/ns/"+f.ns+"/sa/web", "web."+f.ns+".serviceaccount.identity.linkerd.example.org")
	expectID(sp, "10.6.0.2:8080", "spiffe://example.org/ns/"+f.ns+"/sa/legacy", "legacy."+f.ns+".serviceaccount.identity.linkerd.example.org")
	expectID(sp, "10.6.0.3:8080", "", "")

	want := map[string]map[string]string{
		"10.6.0.1:8080": {"pod": "web-5c9d7-x1", "serviceaccount": "web", "owner_kind": "Deployment", "owner_name": "web"},
		"10.6.0.2:8080": {"pod": "legacy-0", "serviceaccount": "legacy", "owner_kind": "StatefulSet", "owner_name": "legacy"},
		"10.6.0.3:8080": {"pod": "web-5c9d7-x3", "serviceaccount": "", "owner_kind": "", "owner_name": ""},
	}
	for addr, w := range want {
		got := l.addr(addr).GetMetricLabels()
		w["namespace"], w["service"], w["cluster"], w["source"] = f.ns, "web", "east", "east"
		for k, v := range w {
			if got[k] != v {
				t.Errorf("%s: label %s=%q, want %q (all: %v)", addr, k, got[k], v, got)
			}
		}
	}

	// The third pod shows up: its endpoint gains its identity and labels.
	f.pod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5c9d7-x3", Labels: meshed, OwnerReferences: rs("web-5c9d7")},
		Spec:       corev1.PodSpec{ServiceAccountName: "web"},
	})
	l.expect("add:10.6.0.3:8080")
	sp.expect("add:10.6.0.3:8080")
	expectID(l, "10.6.0.3:8080", webID, webID)
	expectID(sp, "10.6.0.3:8080", "spiffe://example.org/ns/"+f.ns+"/sa/web", "web."+f.ns+".serviceaccount.identity.linkerd.example.org")
	if got := l.addr("10.6.0.3:8080").GetMetricLabels()["owner_name"]; got != "web" {
		t.Errorf("owner_name after the pod appeared: %q", got)
	}
}

// testTwoClustersFederate: one source per cluster; the same Service name
// in both is one authority, the union of both, deduplicated by address
// with source priority.
func testTwoClustersFederate(t *testing.T, e *env) {
	const ns = "t-federation"
	fe, fw := fixtureIn(t, e.east, ns), fixtureIn(t, e.west, ns)
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	fe.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	fe.slice("web", "web-1", http, ep("10.7.0.1"), ep("10.7.0.9"))
	fw.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	slW := fw.slice("web", "web-1", http, ep("10.7.1.1"), ep("10.7.0.9"))

	dir := t.TempDir()
	s := start(t,
		source("east", e.east.kubeconfig(t, dir, tributaryToken), "namespaces: ["+ns+"]", "priority: 1"),
		source("west", e.west.kubeconfig(t, dir, tributaryToken), "namespaces: ["+ns+"]"))
	st := get(t, s, fe.host("web")+":80")
	st.expect("add:10.7.0.1:8080,10.7.0.9:8080,10.7.1.1:8080")
	from := func(addr string) string {
		t.Helper()
		l := st.addr(addr).GetMetricLabels()
		if l["cluster"] != l["source"] {
			t.Errorf("%s: cluster %q but source %q", addr, l["cluster"], l["source"])
		}
		return l["cluster"]
	}
	if from("10.7.0.1:8080") != "east" || from("10.7.1.1:8080") != "west" || from("10.7.0.9:8080") != "east" {
		t.Errorf("provenance: 10.7.0.1 %s, 10.7.1.1 %s, 10.7.0.9 %s (want east, west, and east by priority)",
			from("10.7.0.1:8080"), from("10.7.1.1:8080"), from("10.7.0.9:8080"))
	}

	// West scales down: only its own endpoint goes.
	fw.setEndpoints(slW, ep("10.7.0.9"))
	st.expect("remove:10.7.1.1:8080")
	// East drops the Service: the shared address stays, now served by west.
	fe.deleteService("web")
	st.expect("add:10.7.0.9:8080", "remove:10.7.0.1:8080")
	if from("10.7.0.9:8080") != "west" {
		t.Errorf("10.7.0.9 should now come from west")
	}
}

// testOutage: the API server tributary talks to goes down; the last state
// stays served, marked stale; changes are made meanwhile through the
// cluster's other API server; on restart the re-list reconciles them all
// (deletions included) and nothing but them reaches the streams.
//
// The outage lasts as long as the checks and the restart take (a few
// seconds), not the 20 s of the issue: nothing depends on its length but
// client-go's reconnect backoff (0.8 s doubling, jittered, capped at
// 30 s), which a longer outage only makes the test wait out.
func testOutage(t *testing.T, e *env) {
	f := newFixture(t, e.west) // writes through west's second API server
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	for _, name := range []string{"s1", "s2", "s3", "s5"} {
		f.service(name, svcPort("http", 80, intstr.FromInt32(8080)))
	}
	sl1 := f.slice("s1", "s1-1", http, ep("10.8.1.1"), ep("10.8.1.2"))
	sl2 := f.slice("s2", "s2-1", http, ep("10.8.2.1"), ep("10.8.2.2"))
	f.slice("s3", "s3-1", http, ep("10.8.3.1"))
	sl5 := f.slice("s5", "s5-1", http, ep("10.8.5.1"))

	s := start(t, source("west", e.west.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))
	s1, s2, s3, s4, s5 := get(t, s, f.host("s1")+":80"), get(t, s, f.host("s2")+":80"), get(t, s, f.host("s3")+":80"), get(t, s, f.host("s4")+":80"), get(t, s, f.host("s5")+":80")
	s1.expect("add:10.8.1.1:8080,10.8.1.2:8080")
	s2.expect("add:10.8.2.1:8080,10.8.2.2:8080")
	s3.expect("add:10.8.3.1:8080")
	s4.expect("none:false")
	s5.expect("add:10.8.5.1:8080")

	api := e.west.servers[0]
	stopAt := time.Now()
	api.crash()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = api.start() // leave the cluster whole for later tests
		}
	})
	st := waitStatus(t, s.Admin, "west", 30*time.Second, "stale", func(st sourceStatus) bool { return st.Stale })
	if !strings.Contains(st.LastError, api.url()) {
		t.Errorf("the error should name the API server: %q", st.LastError)
	}
	if code, body := httpGet(s.Admin, "/readyz"); code != 200 || !strings.Contains(body, "source west (kubernetes): synced, stale: ") {
		t.Errorf("/readyz while stale: %d %s", code, body)
	}
	if v, _ := metricValue(t, s.Admin, `tributary_source_stale{kind="kubernetes",source="west"}`); v != "1" {
		t.Errorf("tributary_source_stale = %q, want 1", v)
	}

	// Meanwhile: s1 scales up, s2 down, s3 is deleted, s4 is created.
	sl1 = f.setEndpoints(sl1, ep("10.8.1.1"), ep("10.8.1.2"), ep("10.8.1.3"))
	f.setEndpoints(sl2, ep("10.8.2.1"))
	f.deleteService("s3")
	f.deleteSlice("s3-1")
	f.service("s4", svcPort("http", 80, intstr.FromInt32(8080)))
	f.slice("s4", "s4-1", http, ep("10.8.4.1"))

	// The last good state is still what is served, marked stale.
	_, reg := httpGet(s.Admin, "/debug/registry?authority="+f.host("s3")+":80")
	if !strings.Contains(reg, `"10.8.3.1:8080"`) || !strings.Contains(reg, `"stale": true`) {
		t.Errorf("registry during the outage should keep s3, stale: %s", reg)
	}

	startAt := time.Now()
	if err := api.start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	t.Logf("API server restarted in %v; outage %v", time.Since(startAt).Round(100*time.Millisecond), time.Since(stopAt).Round(100*time.Millisecond))
	// Reconnecting follows client-go's backoff: up to ~50 s after a
	// 10 s outage in the worst jitter; this wait is only a hang guard.
	const reconcile = 90 * time.Second
	restartedAt := time.Now()
	s1.expectWithin(reconcile, "add:10.8.1.3:8080")
	s2.expectWithin(reconcile, "remove:10.8.2.2:8080")
	// Each informer reconnects on its own backoff: when the slices come
	// back before the Services, s3 is briefly a Service without endpoints
	// (as it is without any outage while the garbage collector deletes a
	// deleted Service's slices); when the Services come first, so is s4.
	s3.expectFinal(reconcile, "none:false", "none:true")
	s4.expectFinal(reconcile, "add:10.8.4.1:8080", "none:true")
	t.Logf("reconciled %v after the API server was back", time.Since(restartedAt).Round(100*time.Millisecond))
	waitStatus(t, s.Admin, "west", reconcile, "healthy again", func(st sourceStatus) bool { return !st.Stale })

	// Only real differences were pushed: the next message on an untouched
	// service, and on s1, is the next real change.
	f.setEndpoints(sl5, ep("10.8.5.1"), ep("10.8.5.2"))
	s5.expect("add:10.8.5.2:8080")
	f.setEndpoints(sl1, ep("10.8.1.2"), ep("10.8.1.3"))
	s1.expect("remove:10.8.1.1:8080")
}

// testNotReadyUntilSynced: a source that cannot list (no RBAC yet) holds
// /readyz at 503 and says why; once allowed, it syncs and serves.
func testNotReadyUntilSynced(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	f.slice("web", "web-1", []discoveryv1.EndpointPort{slicePort("http", 8080)}, ep("10.9.0.1"))

	dir := t.TempDir()
	p := startUnready(t, dir, source("east", e.east.kubeconfig(t, dir, nobodyToken), "namespaces: ["+f.ns+"]"))
	deadline := time.Now().Add(harness.WaitFor)
	for {
		code, body := httpGet(p.admin, "/readyz")
		if code == 503 && strings.Contains(body, "not synced, stale:") && strings.Contains(body, "forbidden") {
			break
		}
		if code == 200 {
			t.Fatalf("ready without being allowed to list anything: %s", body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never explained the failure: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Grant the manifest's roles to the user: the source syncs.
	for _, role := range []string{"tributary-discovery", "tributary-nodes"} {
		_, err := f.cs.RbacV1().ClusterRoleBindings().Create(f.ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role + "-nobody"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: nobodyUser}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	// client-go retries a failed list with backoff (0.8 s doubling).
	deadline = time.Now().Add(90 * time.Second)
	for {
		code, body := httpGet(p.admin, "/readyz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never became ready: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	openStream(t, pb.NewDestinationClient(p.conn), f.host("web")+":80", "").expect("add:10.9.0.1:8080")
	if st := sourceStatuses(t, p.admin)["east"]; st.Stale || !st.Synced {
		t.Errorf("after the grant: %+v", st)
	}
}

// testSpecialServices: address families, services that assert nothing
// (ExternalName, UDP-only), FQDN slices and slices without a Service
// label ignored, opaque ports.
func testSpecialServices(t *testing.T, e *env) {
	f := newFixture(t, e.east)
	http := []discoveryv1.EndpointPort{slicePort("http", 8080)}
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	f.slice("web", "web-1", http, ep("10.10.0.1"))
	f.sliceOf(discoveryv1.AddressTypeFQDN, "web", "web-fqdn", http, ep("web.example.com"))
	f.sliceOf(discoveryv1.AddressTypeIPv6, "web", "web-v6", http, ep("fd00::10:1")) // dual stack: IPv4 wins
	f.service("v6", svcPort("http", 80, intstr.FromInt32(8080)))
	f.sliceOf(discoveryv1.AddressTypeIPv6, "v6", "v6-1", http, ep("fd00::10:2"))
	stray := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "stray", Labels: map[string]string{"app": "web"}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: http, Endpoints: []discoveryv1.Endpoint{ep("10.10.0.99")},
	}
	if _, err := f.cs.DiscoveryV1().EndpointSlices(f.ns).Create(f.ctx, stray, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.createService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}})
	f.service("dns", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	f.createService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "mysql", Annotations: map[string]string{"config.linkerd.io/opaque-ports": "not-a-port, 3306"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{svcPort("mysql", 3306, intstr.FromInt32(3306))}},
	})

	s := start(t, source("east", e.east.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))
	get(t, s, f.host("web")+":80").expect("add:10.10.0.1:8080")
	get(t, s, f.host("v6")+":80").expect("add:[fd00::10:2]:8080")
	get(t, s, f.host("ext")+":80").expect("none:false")
	get(t, s, f.host("dns")+":53").expect("none:false")
	get(t, s, f.host("mysql")+":3306").expect("none:true")

	prof, err := s.Client().GetProfile(context.Background(), &pb.GetDestination{Scheme: "k8s", Path: f.host("mysql") + ":3306"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := prof.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !p.GetOpaqueProtocol() || p.GetFullyQualifiedName() != f.host("mysql") {
		t.Errorf("mysql profile: opaque %v, name %q", p.GetOpaqueProtocol(), p.GetFullyQualifiedName())
	}
	// The malformed part of the annotation is logged, the rest applied.
	s.WaitLog("not-a-port")
}

// testDeployManifests: deploy/kubernetes/deployment.yaml is accepted by the
// API server (server-side dry run) and its embedded config by `tributary
// check`. (rbac.yaml is applied for real when each cluster starts.)
func testDeployManifests(t *testing.T, e *env) {
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cs := e.east.admin(t)
	ctx := context.Background()
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	kinds := map[string]bool{}
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			_, err = cs.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, dry)
			cfg := filepath.Join(t.TempDir(), "tributary.yaml")
			if werr := os.WriteFile(cfg, []byte(o.Data["tributary.yaml"]), 0o644); werr != nil {
				t.Fatal(werr)
			}
			if out, cerr := exec.Command(harness.Bin, "check", cfg).CombinedOutput(); cerr != nil {
				t.Errorf("tributary check of the ConfigMap's config: %v\n%s", cerr, out)
			}
		case *appsv1.Deployment:
			_, err = cs.AppsV1().Deployments(o.Namespace).Create(ctx, o, dry)
			if sa := o.Spec.Template.Spec.ServiceAccountName; sa != "tributary" {
				t.Errorf("the Deployment runs as %q, not the service account rbac.yaml grants", sa)
			}
		case *corev1.Service:
			_, err = cs.CoreV1().Services(o.Namespace).Create(ctx, o, dry)
		default:
			t.Fatalf("unexpected %T in deployment.yaml", obj)
		}
		if err != nil {
			t.Errorf("%T: %v", obj, err)
		}
		kinds[fmt.Sprintf("%T", obj)] = true
	}
	if len(kinds) != 3 {
		t.Errorf("deployment.yaml holds %v; want a ConfigMap, a Deployment and a Service", kinds)
	}
}
