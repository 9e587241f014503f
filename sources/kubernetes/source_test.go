package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The recording sink and log buffer are shared by every source's tests;
// fakeSink is local so these tests can add helpers to it.
type (
	call      = sinktest.Call
	logBuffer = sinktest.LogBuffer
)

type fakeSink struct{ *sinktest.Sink }

func newFakeSink() *fakeSink { return &fakeSink{sinktest.New(1000)} }

// show is a call with each group's services described, as the tests below
// compare whole hand-overs.
func show(c call) string {
	if c.Op == "failed" {
		return fmt.Sprintf("failed(%v)", c.Err)
	}
	var parts []string
	for _, g := range c.Groups {
		parts = append(parts, fmt.Sprintf("%s=%q", g.Key, describe(g.Services)))
	}
	return c.Op + "(" + strings.Join(parts, "; ") + ")"
}

// wait bounds every wait for the source; tests never assert durations.
const wait = 10 * time.Second

// next returns the next call that is not Healthy/Failed when skipHealth.
func (f *fakeSink) next(t *testing.T, skipHealth bool) call {
	t.Helper()
	for {
		select {
		case c := <-f.Calls:
			if skipHealth && (c.Op == "healthy" || c.Op == "failed") {
				continue
			}
			return c
		case <-time.After(wait):
			t.Fatal("no sink call")
			return call{}
		}
	}
}

// fakeListWatch serves the source's lists and watches from a fake clientset.
func fakeListWatch(cs *fake.Clientset) listWatchFunc {
	return func(resource, ns, selector string) cache.ListerWatcher {
		opts := func(o metav1.ListOptions) metav1.ListOptions {
			o.LabelSelector = selector
			return o
		}
		var list func(context.Context, metav1.ListOptions) (runtime.Object, error)
		var watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)
		switch resource {
		case resServices:
			c := cs.CoreV1().Services(ns)
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, opts(o)) }
			watchFn = func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return c.Watch(ctx, opts(o)) }
		case resEndpointSlices:
			c := cs.DiscoveryV1().EndpointSlices(ns)
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, opts(o)) }
			watchFn = func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return c.Watch(ctx, opts(o)) }
		case resPods:
			c := cs.CoreV1().Pods(ns)
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, opts(o)) }
			watchFn = func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return c.Watch(ctx, opts(o)) }
		case resNodes:
			c := cs.CoreV1().Nodes()
			list = func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return c.List(ctx, opts(o)) }
			watchFn = func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return c.Watch(ctx, opts(o)) }
		default:
			panic("unknown resource " + resource)
		}
		return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{ListWithContextFunc: list, WatchFuncWithContext: watchFn}, cs)
	}
}

// running is a source running on a fake clientset.
type running struct {
	t      *testing.T
	src    *Source
	cs     *fake.Clientset
	sink   *fakeSink
	cancel context.CancelFunc
	done   chan struct{}
}

func runFake(t *testing.T, cfg Config, objects ...runtime.Object) *running {
	t.Helper()
	cs := fake.NewClientset(objects...)
	return runWith(t, cfg, cs)
}

func runWith(t *testing.T, cfg Config, cs *fake.Clientset) *running {
	t.Helper()
	src, err := NewSource(cfg, discovery.BuildContext{Name: "east", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	src.inCluster = func() (*rest.Config, error) { return &rest.Config{Host: "https://k8s.invalid"}, nil }
	src.newClient = func(*rest.Config) (listWatchFunc, error) { return fakeListWatch(cs), nil }
	src.newWorkloads = nil
	src.newProfiles = nil
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: t, src: src, cs: cs, sink: newFakeSink(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		src.Run(ctx, r.sink)
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(wait):
		r.t.Fatal("Run did not return after cancel")
	}
}

// expect checks the next group hand-over.
func (r *running) expect(op string, want ...string) {
	r.t.Helper()
	c := r.sink.next(r.t, true)
	var got []string
	for _, g := range c.Groups {
		got = append(got, g.Key+" "+strings.Join(describe(g.Services), " | "))
	}
	if c.Op != op || !slices.Equal(got, want) {
		r.t.Fatalf("got %s\n  %q\nwant %s\n  %q", c.Op, got, op, want)
	}
}

// noFailures drains the calls waiting and reports any Failed among them.
func (r *running) noFailures() {
	r.t.Helper()
	for {
		select {
		case c := <-r.sink.Calls:
			if c.Op == "failed" {
				r.t.Errorf("the source failed: %v", c.Err)
			}
		default:
			return
		}
	}
}

func (r *running) ctx() context.Context { return context.Background() }

func TestRunSyncsThenHandsOverWholeGroups(t *testing.T) {
	meshed := map[string]string{LinkerdControlPlaneLabel: "linkerd"}
	p1 := pod("prod", "web-1", "web", meshed, nil)
	r := runFake(t, Config{Namespaces: []string{"prod"}},
		svc("prod", "web", sport("http", 80)),
		slice("prod", "web", "web-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
			endpoint("10.0.0.1", withPod("prod", "web-1", p1.UID))),
		p1,
		svc("prod", "empty", sport("http", 80)),
		svc("other", "web", sport("http", 80)), // not a watched namespace
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{corev1.LabelTopologyZone: "z1"}}},
	)
	c := r.sink.next(t, true)
	if c.Op != "replace" || len(c.Groups) != 2 {
		t.Fatalf("first hand-over must be one Replace of everything: %v", c)
	}
	if want := `replace(prod/empty=["empty.prod.svc.cluster.local:80 = "]; prod/web=["web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)"])`; show(c) != want {
		t.Errorf("replace:\n got %s\nwant %s", show(c), want)
	}
	if id := c.Groups[1].Services[0].Endpoints[0].Identity; id.Name != "web.prod.serviceaccount.identity.linkerd.cluster.local" {
		t.Errorf("identity %+v", id)
	}
	if z, ok := r.src.NodeZone("n1"); !ok || z != "z1" {
		t.Errorf("NodeZone(n1) = %q, %v", z, ok)
	}
	if _, ok := r.src.NodeZone("n2"); ok {
		t.Error("NodeZone of an unknown node")
	}

	// A second slice: the whole group again.
	ctx := r.ctx()
	_, err := r.cs.DiscoveryV1().EndpointSlices("prod").Create(ctx,
		slice("prod", "web", "web-b", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8081)}, endpoint("10.0.0.2")),
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.expect("update", "prod/web web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 10.0.0.2:8081(passing)")

	// A pod update that changes nothing read (status), then one that
	// does (its service account): only the second is handed over.
	p := p1.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	if p, err = r.cs.CoreV1().Pods("prod").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	p.Spec.ServiceAccountName = "web2"
	if _, err = r.cs.CoreV1().Pods("prod").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c = r.sink.next(t, true)
	if got := c.Groups[0].Services[0].Endpoints[0].Identity.Name; c.Op != "update" || got != "web2.prod.serviceaccount.identity.linkerd.cluster.local" {
		t.Fatalf("after the service account change: %v (identity %q)", c, got)
	}

	// Changes in a namespace not watched are never seen.
	if err := r.cs.CoreV1().Services("other").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The Service is deleted: its group is withdrawn (empty).
	if err := r.cs.CoreV1().Services("prod").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.expect("update", "prod/web ")
	// Its slices going after it changes nothing more; a new Service does.
	if err := r.cs.DiscoveryV1().EndpointSlices("prod").Delete(ctx, "web-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.cs.CoreV1().Services("prod").Create(ctx, svc("prod", "api", sport("grpc", 9000)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.expect("update", "prod/api api.prod.svc.cluster.local:9000 = ")
}

func TestRunMalformedObjectsAreSkippedAndCounted(t *testing.T) {
	var logs logBuffer
	cs := fake.NewClientset(
		svc("prod", "web", sport("http", 80)),
		slice("prod", "web", "web-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
			endpoint("10.0.0.1"), endpoint("10.0.0.300")),
	)
	src, err := NewSource(Config{NodeZones: ptr(false)}, discovery.BuildContext{Name: "east", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	src.newClient = func(*rest.Config) (listWatchFunc, error) { return fakeListWatch(cs), nil }
	src.newWorkloads = nil
	src.newProfiles = nil
	src.inCluster = func() (*rest.Config, error) { return &rest.Config{Host: "https://k8s.invalid"}, nil }
	sink := newFakeSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx, sink) }()
	defer func() { cancel(); <-done }()

	if c := sink.next(t, true); show(c) != `replace(prod/web=["web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)"])` {
		t.Fatalf("the valid sibling must apply: %s", show(c))
	}
	if src.Rejected() != 1 {
		t.Errorf("Rejected() = %d, want 1", src.Rejected())
	}
	// A rebuild meets the same problem: counted again, logged once.
	if _, err := cs.CoreV1().Services("prod").Update(context.Background(), svc("prod", "web", sport("http", 80), sport("admin", 9090)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.next(t, true)
	if src.Rejected() != 2 || strings.Count(logs.String(), "skipping malformed") != 1 {
		t.Errorf("Rejected() = %d; log:\n%s", src.Rejected(), logs.String())
	}
}

func TestRunLabelSelectorScopesServices(t *testing.T) {
	web := svc("prod", "web", sport("http", 80))
	web.Labels = map[string]string{"mesh": "on"}
	r := runFake(t, Config{LabelSelector: "mesh=on", NodeZones: ptr(false)},
		web,
		svc("prod", "db", sport("pg", 5432)),
		slice("prod", "db", "db-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("pg", 5432)}, endpoint("10.0.0.9")),
	)
	r.expect("replace", "prod/web web.prod.svc.cluster.local:80 = ")
	if _, ok := r.src.NodeZone("any"); ok {
		t.Error("NodeZone without node_zones")
	}
	db, err := r.cs.CoreV1().Services("prod").Get(r.ctx(), "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	db.Labels = map[string]string{"mesh": "on"}
	if _, err := r.cs.CoreV1().Services("prod").Update(r.ctx(), db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// 5432 is among Linkerd's default opaque ports.
	r.expect("update", "prod/db db.prod.svc.cluster.local:5432[opaque] = 10.0.0.9:5432(passing)")
}

func TestRunListFailureIsReportedAndRetried(t *testing.T) {
	cs := fake.NewClientset(svc("prod", "web", sport("http", 80)))
	var failing atomic.Bool
	failing.Store(true)
	cs.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		if failing.Load() {
			return true, nil, errors.New("the API server is on fire")
		}
		return false, nil, nil
	})
	r := runWith(t, Config{NodeZones: ptr(false)}, cs)
	c := r.sink.next(t, false)
	if c.Op != "failed" || !strings.Contains(c.Err.Error(), "services in all namespaces") || !strings.Contains(c.Err.Error(), "on fire") {
		t.Fatalf("want a Failed naming what could not be listed, got %v", c)
	}
	failing.Store(false)
	r.expect("replace", "prod/web web.prod.svc.cluster.local:80 = ")
}

func TestRunInClusterConfigRetried(t *testing.T) {
	src, err := NewSource(Config{NodeZones: ptr(false)}, discovery.BuildContext{Name: "local"})
	if err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int32
	src.inCluster = func() (*rest.Config, error) {
		if attempts.Add(1) == 1 {
			return nil, rest.ErrNotInCluster
		}
		return &rest.Config{Host: "https://10.0.0.1:443"}, nil
	}
	cs := fake.NewClientset()
	var seenUA string
	var mu sync.Mutex
	src.newClient = func(rc *rest.Config) (listWatchFunc, error) {
		mu.Lock()
		seenUA = rc.UserAgent
		mu.Unlock()
		return fakeListWatch(cs), nil
	}
	src.newWorkloads = nil
	src.newProfiles = nil
	sink := newFakeSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx, sink) }()
	defer func() { cancel(); <-done }()
	if c := sink.next(t, false); c.Op != "failed" || !errors.Is(c.Err, rest.ErrNotInCluster) {
		t.Fatalf("want Failed(not in cluster), got %v", c)
	}
	if c := sink.next(t, false); c.Op != "replace" || len(c.Groups) != 0 {
		t.Fatalf("want an empty Replace once connected, got %v", c)
	}
	mu.Lock()
	defer mu.Unlock()
	if seenUA != "tributary (source local)" {
		t.Errorf("user agent %q", seenUA)
	}
}

func TestRunStopsBeforeSync(t *testing.T) {
	cs := fake.NewClientset()
	cs.PrependReactor("list", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("unreachable")
	})
	r := runWith(t, Config{}, cs)
	if c := r.sink.next(t, false); c.Op != "failed" {
		t.Fatalf("got %v", c)
	}
	r.stop() // must return although nothing ever synced
}

func TestSlimKeepsWhatIsRead(t *testing.T) {
	p := pod("prod", "web-1", "web", map[string]string{"a": "b"}, controller("ReplicaSet", "web-1x"))
	p.Annotations = map[string]string{"big": strings.Repeat("x", 1000)}
	p.Spec.Containers = []corev1.Container{{Name: "app", Image: "app"}}
	p.Spec.NodeName = "n1"
	p.Status.PodIP = "10.0.0.1"
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	out, _ := slim(p)
	sp := out.(*corev1.Pod)
	if sp.Spec.ServiceAccountName != "web" || sp.Spec.NodeName != "n1" || sp.Labels["a"] != "b" || len(sp.OwnerReferences) != 1 {
		t.Errorf("slim dropped what is read: %+v", sp)
	}
	if sp.Annotations != nil || sp.Spec.Containers != nil || sp.Status.PodIP != "" || sp.ManagedFields != nil {
		t.Errorf("slim kept what is not read: %+v", sp)
	}
	again, _ := slim(sp)
	if again.(*corev1.Pod).Spec.ServiceAccountName != "web" {
		t.Error("slim is not idempotent")
	}

	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{corev1.LabelTopologyZone: "z1", "other": "x"}},
		Status: corev1.NodeStatus{Images: []corev1.ContainerImage{{Names: []string{"big"}}}}}
	out, _ = slim(n)
	sn := out.(*corev1.Node)
	if z, ok := nodeZone(sn); !ok || z != "z1" || len(sn.Labels) != 1 || sn.Status.Images != nil {
		t.Errorf("slim node: %+v", sn)
	}

	s := svc("prod", "web", sport("http", 80))
	s.Annotations = map[string]string{OpaquePortsAnnotation: "80", "kubectl.kubernetes.io/last-applied-configuration": "{...}"}
	out, _ = slim(s)
	if a := out.(*corev1.Service).Annotations; len(a) != 1 || a[OpaquePortsAnnotation] != "80" {
		t.Errorf("slim service annotations: %v", a)
	}
}
