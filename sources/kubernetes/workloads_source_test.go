package kubernetes

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/tributary-mesh/tributary/discovery"
)

// fakeWorkloads serves ExternalWorkloads from a fake dynamic client, with
// the CRD installed or not, or the list forbidden.
type fakeWorkloads struct {
	dc        *dynamicfake.FakeDynamicClient
	present   atomic.Bool
	forbidden atomic.Bool
	checks    atomic.Int32
}

func newFakeWorkloads() *fakeWorkloads {
	s := runtime.NewScheme()
	return &fakeWorkloads{dc: dynamicfake.NewSimpleDynamicClientWithCustomListKinds(s,
		map[schema.GroupVersionResource]string{ExternalWorkloadGVR: "ExternalWorkloadList"})}
}

func (f *fakeWorkloads) installed(context.Context) (bool, error) {
	f.checks.Add(1)
	return f.present.Load(), nil
}

func (f *fakeWorkloads) listWatch(ns string) cache.ListerWatcher {
	r := f.dc.Resource(ExternalWorkloadGVR).Namespace(ns)
	forbidden := apierrors.NewForbidden(ExternalWorkloadGVR.GroupResource(), "", nil)
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if f.forbidden.Load() {
				return nil, forbidden
			}
			return r.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			if f.forbidden.Load() {
				return nil, forbidden
			}
			return r.Watch(ctx, o)
		},
	}, f.dc)
}

func (f *fakeWorkloads) create(t *testing.T, ns, name string, lbls map[string]string, ip string, ready bool) {
	t.Helper()
	status := "False"
	if ready {
		status = "True"
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "workload.linkerd.io/v1beta1",
		"kind":       "ExternalWorkload",
		"metadata":   map[string]any{"namespace": ns, "name": name},
		"spec": map[string]any{
			"meshTLS":     map[string]any{"identity": "spiffe://example.org/vm/" + name, "serverName": name + ".vm.example.org"},
			"workloadIPs": []any{map[string]any{"ip": ip}},
			"ports":       []any{map[string]any{"name": "http", "port": int64(8080), "protocol": "TCP"}},
		},
		"status": map[string]any{"conditions": []any{map[string]any{"type": "Ready", "status": status}}},
	}}
	u.SetLabels(lbls)
	if _, err := f.dc.Resource(ExternalWorkloadGVR).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func runWithWorkloads(t *testing.T, wl *fakeWorkloads, objects ...runtime.Object) *running {
	t.Helper()
	cs := fake.NewClientset(objects...)
	src, err := NewSource(Config{Namespaces: []string{"prod"}, NodeZones: ptr(false)}, discovery.BuildContext{Name: "east", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	src.inCluster = func() (*rest.Config, error) { return &rest.Config{Host: "https://k8s.invalid"}, nil }
	src.newClient = func(*rest.Config) (listWatchFunc, error) { return fakeListWatch(cs), nil }
	src.newWorkloads = func(*rest.Config) (workloadAPI, error) { return wl, nil }
	src.newProfiles = nil
	src.crdRecheck = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, src: src, cs: cs, sink: newFakeSink(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		src.Run(ctx, r.sink)
	}()
	t.Cleanup(r.stop)
	return r
}

func selectingService() *corev1.Service {
	s := svc("prod", "web", sport("http", 80))
	s.Spec.Selector = map[string]string{"app": "web"}
	return s
}

func podSlice() *discoveryv1.EndpointSlice {
	return slice("prod", "web", "web-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)}, endpoint("10.0.0.1"))
}

// With the CRD installed, the first hand-over already has the workloads;
// their changes (Ready False, a new one) rebuild the Service.
func TestRunWithExternalWorkloads(t *testing.T) {
	wl := newFakeWorkloads()
	wl.present.Store(true)
	wl.create(t, "prod", "vm-1", map[string]string{"app": "web"}, "192.0.2.1", true)
	r := runWithWorkloads(t, wl, selectingService(), podSlice())
	r.expect("replace", "prod/web web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 192.0.2.1:8080(passing)")

	wl.create(t, "prod", "vm-2", map[string]string{"app": "web"}, "192.0.2.2", true)
	r.expect("update", "prod/web web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 192.0.2.1:8080(passing) 192.0.2.2:8080(passing)")
	wl.create(t, "prod", "vm-3", map[string]string{"app": "other"}, "192.0.2.3", true) // selects nothing: no update
	if err := wl.dc.Resource(ExternalWorkloadGVR).Namespace("prod").Delete(context.Background(), "vm-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.expect("update", "prod/web web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 192.0.2.2:8080(passing)")
}

// Without the CRD, pods are served at once and the source is healthy; once
// the CRD appears, the workloads are read and the Service rebuilt.
func TestRunCRDInstalledLater(t *testing.T) {
	wl := newFakeWorkloads()
	wl.create(t, "prod", "vm-1", map[string]string{"app": "web"}, "192.0.2.1", true)
	r := runWithWorkloads(t, wl, selectingService(), podSlice())
	r.expect("replace", "prod/web web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)")
	for deadline := time.Now().Add(wait); wl.checks.Load() < 3; {
		if time.Now().After(deadline) {
			t.Fatal("the CRD is not checked again")
		}
		time.Sleep(10 * time.Millisecond)
	}
	wl.present.Store(true)
	r.expect("update", "prod/web web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 192.0.2.1:8080(passing)")
	r.noFailures()
}

// A cluster that forbids listing ExternalWorkloads still has its pods
// served, and the source is not marked failed for it; once the list is
// allowed, the workloads are served.
func TestRunWorkloadsForbidden(t *testing.T) {
	wl := newFakeWorkloads()
	wl.present.Store(true)
	wl.forbidden.Store(true)
	wl.create(t, "prod", "vm-1", map[string]string{"app": "web"}, "192.0.2.1", true)
	r := runWithWorkloads(t, wl, selectingService(), podSlice())
	c := r.sink.next(t, false)
	for c.Op == "healthy" {
		c = r.sink.next(t, false)
	}
	if c.Op != "replace" {
		t.Fatalf("first call %s (%v), want replace", c.Op, c.Err)
	}
	if got := show(c); got != `replace(prod/web=["web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)"])` {
		t.Errorf("got %s", got)
	}
	wl.forbidden.Store(false) // the RBAC rule is granted
	r.expect("update", "prod/web web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 192.0.2.1:8080(passing)")
}
