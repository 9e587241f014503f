//go:build integration

package kubernetes

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

var (
	crdGVR      = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	workloadGVR = schema.GroupVersionResource{Group: "workload.linkerd.io", Version: "v1beta1", Resource: "externalworkloads"}
)

func (c *cluster) dynamic(t testing.TB) dynamic.Interface {
	t.Helper()
	d, err := dynamic.NewForConfig(c.servers[len(c.servers)-1].restConfig())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// installCRDs creates Linkerd's ExternalWorkload and ServiceProfile CRDs
// (testdata) in c, and waits until ExternalWorkloads can be listed.
func installCRDs(t *testing.T, c *cluster) {
	t.Helper()
	d := c.dynamic(t)
	for _, file := range []string{"externalworkload-crd.yaml", "serviceprofile-crd.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			if _, err := d.Resource(crdGVR).Create(t.Context(), &obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatalf("%s: %v", file, err)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := d.Resource(workloadGVR).List(t.Context(), metav1.ListOptions{Limit: 1})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ExternalWorkloads not served: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// externalWorkload creates an ExternalWorkload, then sets its Ready
// condition through the status subresource, as Linkerd's agent on the VM
// would.
func (f *fixture) externalWorkload(d dynamic.Interface, name string, lbls map[string]string, identity, serverName, ip string, ready bool, ports ...map[string]any) {
	f.t.Helper()
	var ps []any
	for _, p := range ports {
		ps = append(ps, p)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "workload.linkerd.io/v1beta1",
		"kind":       "ExternalWorkload",
		"metadata":   map[string]any{"name": name, "namespace": f.ns},
		"spec": map[string]any{
			"meshTLS":     map[string]any{"identity": identity, "serverName": serverName},
			"workloadIPs": []any{map[string]any{"ip": ip}},
			"ports":       ps,
		},
	}}
	obj.SetLabels(lbls)
	if _, err := d.Resource(workloadGVR).Namespace(f.ns).Create(f.ctx, obj, metav1.CreateOptions{}); err != nil {
		f.t.Fatalf("externalworkload %s: %v", name, err)
	}
	f.setWorkloadReady(d, name, ready)
}

func (f *fixture) setWorkloadReady(d dynamic.Interface, name string, ready bool) {
	f.t.Helper()
	r := d.Resource(workloadGVR).Namespace(f.ns)
	obj, err := r.Get(f.ctx, name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	status := "False"
	if ready {
		status = "True"
	}
	cond := map[string]any{"type": "Ready", "status": status, "lastTransitionTime": time.Now().UTC().Format(time.RFC3339)}
	if err := unstructured.SetNestedSlice(obj.Object, []any{cond}, "status", "conditions"); err != nil {
		f.t.Fatal(err)
	}
	if _, err := r.UpdateStatus(f.ctx, obj, metav1.UpdateOptions{}); err != nil {
		f.t.Fatalf("externalworkload %s status: %v", name, err)
	}
}

func ewPort(name string, port int64) map[string]any {
	return map[string]any{"name": name, "port": port, "protocol": "TCP"}
}

// meshedPod is a pod as Linkerd's proxy injector leaves it: the
// control-plane label, and the proxy container with its listen addresses.
func meshedPod(name string, owner []metav1.OwnerReference, inbound string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            name,
			Labels:          map[string]string{"app": "web", "linkerd.io/control-plane-ns": "linkerd", "pod-template-hash": "5c9d7"},
			Annotations:     annotations,
			OwnerReferences: owner,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers: []corev1.Container{
				{Name: "app", Image: "registry.invalid/app:1", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "mysql", ContainerPort: 3306}}},
				{Name: "linkerd-proxy", Image: "registry.invalid/proxy:1", Env: []corev1.EnvVar{
					{Name: "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", Value: inbound},
					{Name: "LINKERD2_PROXY_ADMIN_LISTEN_ADDR", Value: "0.0.0.0:4191"},
					{Name: "LINKERD2_PROXY_CONTROL_LISTEN_ADDR", Value: "0.0.0.0:4190"},
				}},
			},
		},
	}
}

// testMeshExpansion: a Service selecting a meshed pod, an unmeshed pod and
// an ExternalWorkload (no Linkerd controller runs, so the source matches
// the selector against the workload itself); each is served with the
// identity, hint and labels Linkerd's controller gives it.
func testMeshExpansion(t *testing.T, e *env) {
	installCRDs(t, e.east)
	f := newFixture(t, e.east)
	d := e.east.dynamic(t)
	rs := []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5c9d7", UID: "11111111-2222-3333-4444-555555555555", Controller: ptr(true)}}
	meshed := f.pod(meshedPod("web-5c9d7-a", rs, "0.0.0.0:4143", map[string]string{"config.linkerd.io/opaque-ports": "mysql"}))
	plain := f.pod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "plain-0", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "plain"},
	})
	vmID, vmServer := "spiffe://example.org/ns/"+f.ns+"/vm/billing", "billing."+f.ns+".vm.example.org"
	f.externalWorkload(d, "billing-vm", map[string]string{"app": "web", corev1.LabelTopologyZone: "on-prem"}, vmID, vmServer, "10.9.0.1", true,
		ewPort("http", 8080), ewPort("mysql", 3306), ewPort("linkerd-proxy", 4200))

	f.createService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{svcPort("http", 80, intstr.FromString("http")), svcPort("mysql", 3306, intstr.FromString("mysql"))},
		},
	})
	f.slice("web", "web-pods", []discoveryv1.EndpointPort{slicePort("http", 8080), slicePort("mysql", 3306)},
		ep("10.6.1.1", podRef(f.ns, meshed.Name, meshed.UID)),
		ep("10.6.1.2", podRef(f.ns, plain.Name, plain.UID)))

	kc := e.east.kubeconfig(t, t.TempDir(), tributaryToken)
	s := start(t, source("east", kc, "namespaces: ["+f.ns+"]"))
	web := get(t, s, f.host("web")+":80")
	web.expect("add:10.6.1.1:8080,10.6.1.2:8080,10.9.0.1:8080")

	type want struct {
		id, server string
		uri        bool
		hint       string
		labels     map[string]string
	}
	webID := "web." + f.ns + ".serviceaccount.identity.linkerd.cluster.local"
	check := func(st *stream, addr string, w want) {
		t.Helper()
		wa := st.addr(addr)
		tls := wa.GetTlsIdentity()
		var id, server string
		uri := false
		switch {
		case tls.GetUriLikeIdentity() != nil:
			id, server, uri = tls.GetUriLikeIdentity().GetUri(), tls.GetServerName().GetName(), true
		case tls.GetDnsLikeIdentity() != nil:
			id, server = tls.GetDnsLikeIdentity().GetName(), tls.GetServerName().GetName()
		}
		if id != w.id || server != w.server || uri != w.uri {
			t.Errorf("%s: identity %q (server %q, uri %v), want %q (%q, %v)", addr, id, server, uri, w.id, w.server, w.uri)
		}
		hint := ""
		switch wa.GetProtocolHint().GetProtocol().(type) {
		case *pb.ProtocolHint_H2_:
			hint = "h2"
		case *pb.ProtocolHint_Opaque_:
			hint = "opaque"
		}
		if hint != w.hint {
			t.Errorf("%s: hint %q, want %q", addr, hint, w.hint)
		}
		got := wa.GetMetricLabels()
		for k, v := range w.labels {
			if got[k] != v {
				t.Errorf("%s: label %s=%q, want %q (all: %v)", addr, k, got[k], v, got)
			}
		}
	}
	common := map[string]string{"namespace": f.ns, "service": "web", "cluster": "east", "source": "east"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range common {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	check(web, "10.6.1.1:8080", want{id: webID, server: webID, hint: "h2",
		labels: with("pod", "web-5c9d7-a", "deployment", "web", "serviceaccount", "web", "control_plane_ns", "linkerd", "pod_template_hash", "5c9d7")})
	check(web, "10.6.1.2:8080", want{labels: with("pod", "plain-0", "serviceaccount", "plain", "control_plane_ns", "")})
	check(web, "10.9.0.1:8080", want{id: vmID, server: vmServer, uri: true, hint: "h2",
		labels: with("external_workload", "billing-vm", "zone", "on-prem", "pod", "")})

	// The opaque port: opaque hints for the meshed pod (by its annotation,
	// which names the container port) and the workload (Linkerd's default
	// opaque ports include 3306); the transport port is each one's proxy.
	db := get(t, s, f.host("web")+":3306")
	db.expect("add:10.6.1.1:3306,10.6.1.2:3306,10.9.0.1:3306")
	check(db, "10.6.1.1:3306", want{id: webID, server: webID, hint: "opaque"})
	check(db, "10.6.1.2:3306", want{})
	check(db, "10.9.0.1:3306", want{id: vmID, server: vmServer, uri: true, hint: "opaque"})
	for addr, port := range map[string]uint32{"10.6.1.1:3306": 4143, "10.9.0.1:3306": 4200} {
		if ot := db.addr(addr).GetProtocolHint().GetOpaqueTransport(); ot == nil || ot.GetInboundPort() != port {
			t.Errorf("%s: opaque_transport %v, want inbound port %d", addr, ot, port)
		}
	}
	// Not on ports that are not opaque, nor for the unmeshed pod.
	for _, addr := range []string{"10.6.1.1:8080", "10.9.0.1:8080"} {
		if ot := web.addr(addr).GetProtocolHint().GetOpaqueTransport(); ot != nil {
			t.Errorf("%s (h2): opaque_transport %v, want none", addr, ot)
		}
	}
	if h := db.addr("10.6.1.2:3306").GetProtocolHint(); h != nil {
		t.Errorf("unmeshed pod on an opaque port: hint %v, want none", h)
	}

	// Ready False: the workload goes; True: it is back.
	f.setWorkloadReady(d, "billing-vm", false)
	web.expect("remove:10.9.0.1:8080")
	f.setWorkloadReady(d, "billing-vm", true)
	web.expect("add:10.9.0.1:8080")
	check(web, "10.9.0.1:8080", want{id: vmID, server: vmServer, uri: true, hint: "h2"})

	// A slice of Linkerd's external-workload controller wins over the
	// selector: only what it lists is served for workloads.
	ewSlice := f.slice("web", "web-ew", []discoveryv1.EndpointPort{slicePort("http", 8080), slicePort("mysql", 3306)},
		ep("10.9.0.1", workloadRef(f.ns, "billing-vm"), notReady()))
	web.expect("remove:10.9.0.1:8080")
	// The controller marks it ready: served from the slice, with what the
	// workload says of itself.
	f.setEndpoints(ewSlice, ep("10.9.0.1", workloadRef(f.ns, "billing-vm"), zone("on-prem")))
	web.expect("add:10.9.0.1:8080")
	check(web, "10.9.0.1:8080", want{id: vmID, server: vmServer, uri: true, hint: "h2",
		labels: with("external_workload", "billing-vm", "zone", "on-prem")})
}

func workloadRef(ns, name string) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.TargetRef = &corev1.ObjectReference{Kind: "ExternalWorkload", Namespace: ns, Name: name, UID: types.UID("")}
	}
}

// testWithoutWorkloadCRD: in a cluster without the ExternalWorkload CRD
// (west never gets it), pods are served and the source is neither stale
// nor failing.
func testWithoutWorkloadCRD(t *testing.T, e *env) {
	f := newFixture(t, e.west)
	p := f.pod(meshedPod("web-5c9d7-a", nil, "0.0.0.0:4143", nil))
	f.service("web", svcPort("http", 80, intstr.FromInt32(8080)))
	f.slice("web", "web-1", []discoveryv1.EndpointPort{slicePort("http", 8080)}, ep("10.7.1.1", podRef(f.ns, p.Name, p.UID)))
	kc := e.west.kubeconfig(t, t.TempDir(), tributaryToken)
	s := start(t, source("west", kc, "namespaces: ["+f.ns+"]"))
	web := get(t, s, f.host("web")+":80")
	web.expect("add:10.7.1.1:8080")
	if _, ok := web.addr("10.7.1.1:8080").GetProtocolHint().GetProtocol().(*pb.ProtocolHint_H2_); !ok {
		t.Errorf("meshed pod without the CRD: hint %v, want h2", web.addr("10.7.1.1:8080").GetProtocolHint())
	}
	st := sourceStatuses(t, s.Admin)["west"]
	if !st.Synced || st.Stale || st.LastError != "" {
		t.Errorf("source status without the CRD: %+v", st)
	}
}
