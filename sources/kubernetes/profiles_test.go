package kubernetes

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

func parseSpec(t *testing.T, spec map[string]any) *serviceProfile {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
		"metadata": map[string]any{"namespace": "prod", "name": "web.prod.svc.cluster.local"},
		"spec":     spec,
	}}
	out, err := profileFromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	return out.(*serviceProfile)
}

func booksSpec(timeout string) map[string]any {
	return map[string]any{
		"routes": []any{map[string]any{
			"name": "GET /books/{id}",
			"condition": map[string]any{
				"method": "GET", "pathRegex": "/books/[^/]*",
				"any": []any{}, // set, though empty
				"not": map[string]any{"method": "HEAD"},
			},
			"responseClasses": []any{map[string]any{
				"condition": map[string]any{"status": map[string]any{"min": int64(500), "max": int64(599)}},
				"isFailure": true,
			}},
			"isRetryable": true,
			"timeout":     timeout,
		}},
		"retryBudget": map[string]any{"retryRatio": 0.3, "minRetriesPerSecond": int64(5), "ttl": "15s"},
		"dstOverrides": []any{
			map[string]any{"authority": "web-v1.prod.svc.cluster.local", "weight": "500m"},
			map[string]any{"authority": "web-v2.prod.svc.cluster.local:8080", "weight": int64(1)},
		},
	}
}

// A ServiceProfile's spec as Linkerd reads it: durations, quantities as
// decimillis, nil and empty lists apart.
func TestParseServiceProfile(t *testing.T) {
	p := parseSpec(t, booksSpec("250ms"))
	if len(p.problems) != 0 || p.profile == nil {
		t.Fatalf("problems %q, profile %v", p.problems, p.profile)
	}
	not := discovery.RequestMatch{Method: "HEAD"}
	want := &discovery.Profile{
		Routes: []discovery.Route{{
			Name:            "GET /books/{id}",
			Condition:       discovery.RequestMatch{Any: []discovery.RequestMatch{}, Method: "GET", Not: &not, PathRegex: "/books/[^/]*"},
			ResponseClasses: []discovery.ResponseClass{{Condition: discovery.ResponseMatch{Status: &discovery.StatusRange{Min: 500, Max: 599}}, IsFailure: true}},
			IsRetryable:     true,
			Timeout:         250 * time.Millisecond,
		}},
		RetryBudget: &discovery.RetryBudget{RetryRatio: 0.3, MinRetriesPerSecond: 5, TTL: 15 * time.Second},
		DstOverrides: []discovery.WeightedDst{
			{Authority: "web-v1.prod.svc.cluster.local", Weight: 5000},
			{Authority: "web-v2.prod.svc.cluster.local:8080", Weight: 10000},
		},
	}
	if !p.profile.Equal(want) {
		t.Fatalf("got  %+v\nwant %+v", p.profile, want)
	}

	// A timeout that does not parse is dropped, as Linkerd does; the rest stands.
	p = parseSpec(t, booksSpec("soon"))
	if p.profile == nil || p.profile.Routes[0].Timeout != 0 || len(p.problems) != 1 || !strings.Contains(p.problems[0], "timeout") {
		t.Fatalf("bad timeout: problems %q, profile %v", p.problems, p.profile)
	}

	// What Linkerd refuses whole is not served, with the reason.
	for name, mutate := range map[string]func(map[string]any){
		"no condition": func(s map[string]any) { delete(s["routes"].([]any)[0].(map[string]any), "condition") },
		"empty match":  func(s map[string]any) { s["routes"].([]any)[0].(map[string]any)["condition"] = map[string]any{} },
		"bad status": func(s map[string]any) {
			s["routes"].([]any)[0].(map[string]any)["responseClasses"] = []any{map[string]any{"condition": map[string]any{"status": map[string]any{"min": int64(700)}}}}
		},
		"bad ttl":    func(s map[string]any) { s["retryBudget"].(map[string]any)["ttl"] = "a while" },
		"no ttl":     func(s map[string]any) { delete(s["retryBudget"].(map[string]any), "ttl") },
		"unreadable": func(s map[string]any) { s["routes"] = "many" },
	} {
		s := booksSpec("1s")
		mutate(s)
		if p := parseSpec(t, s); p.profile != nil || len(p.problems) == 0 {
			t.Errorf("%s: served %v (problems %q)", name, p.profile, p.problems)
		}
	}
}

func TestServiceOfProfile(t *testing.T) {
	for _, tc := range []struct {
		name, ns, svc string
		ok            bool
	}{
		{"web.prod.svc.cluster.local", "prod", "web", true},
		{"web.dev.svc.cluster.local", "dev", "web", true},
		{"a.web.prod.svc.cluster.local", "", "", false},
		{"web.prod.svc.example.org", "", "", false},
		{".prod.svc.cluster.local", "", "", false},
		{"web..svc.cluster.local", "", "", false},
	} {
		if ns, svc, ok := serviceOfProfile(tc.name, "cluster.local"); ns != tc.ns || svc != tc.svc || ok != tc.ok {
			t.Errorf("%s: %q %q %v", tc.name, ns, svc, ok)
		}
	}
}

// fakeProfiles serves ServiceProfiles from a fake dynamic client, with the
// CRD installed or not, or the list forbidden.
type fakeProfiles struct {
	dc        *dynamicfake.FakeDynamicClient
	present   atomic.Bool
	forbidden atomic.Bool
}

func newFakeProfiles() *fakeProfiles {
	return &fakeProfiles{dc: dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{ServiceProfileGVR: "ServiceProfileList"})}
}

func (f *fakeProfiles) installed(context.Context) (bool, error) { return f.present.Load(), nil }

func (f *fakeProfiles) listWatch(ns string) cache.ListerWatcher {
	r := f.dc.Resource(ServiceProfileGVR).Namespace(ns)
	forbidden := apierrors.NewForbidden(ServiceProfileGVR.GroupResource(), "", nil)
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

func (f *fakeProfiles) obj(ns, name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "linkerd.io/v1alpha2", "kind": "ServiceProfile",
		"metadata": map[string]any{"namespace": ns, "name": name},
		"spec":     spec,
	}}
}

func (f *fakeProfiles) create(t *testing.T, ns, name string, spec map[string]any) {
	t.Helper()
	if _, err := f.dc.Resource(ServiceProfileGVR).Namespace(ns).Create(context.Background(), f.obj(ns, name, spec), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeProfiles) update(t *testing.T, ns, name string, spec map[string]any) {
	t.Helper()
	if _, err := f.dc.Resource(ServiceProfileGVR).Namespace(ns).Update(context.Background(), f.obj(ns, name, spec), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func runWithProfiles(t *testing.T, sp *fakeProfiles, objects ...runtime.Object) *running {
	t.Helper()
	return runWithProfilesIn(t, []string{"prod"}, sp, objects...)
}

func runWithProfilesIn(t *testing.T, namespaces []string, sp *fakeProfiles, objects ...runtime.Object) *running {
	t.Helper()
	cs := fake.NewClientset(objects...)
	src, err := NewSource(Config{Namespaces: namespaces, NodeZones: ptr(false)}, discovery.BuildContext{Name: "east", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	src.inCluster = func() (*rest.Config, error) { return &rest.Config{Host: "https://k8s.invalid"}, nil }
	src.newClient = func(*rest.Config) (listWatchFunc, error) { return fakeListWatch(cs), nil }
	src.newWorkloads = nil
	src.newProfiles = func(*rest.Config) (profileAPI, error) { return sp, nil }
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

// nextProfile waits for the next hand-over of prod/web and returns the
// profile of its services (all the same), checking the op.
func (r *running) nextProfile(op string) *discovery.Profile {
	r.t.Helper()
	p, _ := r.nextProfiles(op)
	return p
}

// nextProfiles is nextProfile with the client profiles.
func (r *running) nextProfiles(op string) (*discovery.Profile, map[string]*discovery.Profile) {
	r.t.Helper()
	for {
		c := r.sink.next(r.t, true)
		if c.Op != op {
			r.t.Fatalf("got %s, want %s", show(c), op)
		}
		for _, g := range c.Groups {
			if g.Key != "prod/web" {
				continue
			}
			if len(g.Services) == 0 {
				r.t.Fatalf("prod/web withdrawn: %s", show(c))
			}
			p, cp := g.Services[0].Profile, g.Services[0].ClientProfiles
			for _, s := range g.Services[1:] {
				if s.Profile != p || !discovery.SameProfiles(s.ClientProfiles, cp) {
					r.t.Fatalf("services of one Service with different profiles: %s", show(c))
				}
			}
			if err := discovery.ValidateGroup(&g); err != nil {
				r.t.Fatal(err)
			}
			return p, cp
		}
	}
}

// The Service's ServiceProfile comes with the first hand-over; a change
// rebuilds the Service, an invalid one is served as none, a deleted one
// goes, and another namespace's FQN touches nothing.
func TestRunWithServiceProfiles(t *testing.T) {
	sp := newFakeProfiles()
	sp.present.Store(true)
	sp.create(t, "prod", "web.prod.svc.cluster.local", booksSpec("1s"))
	r := runWithProfiles(t, sp, selectingService(), podSlice())
	if p := r.nextProfile("replace"); p == nil || p.Routes[0].Timeout != time.Second {
		t.Fatalf("first hand-over: %+v", p)
	}
	sp.update(t, "prod", "web.prod.svc.cluster.local", booksSpec("2s"))
	if p := r.nextProfile("update"); p == nil || p.Routes[0].Timeout != 2*time.Second {
		t.Fatalf("after the change: %+v", p)
	}
	bad := booksSpec("2s")
	bad["retryBudget"].(map[string]any)["ttl"] = "never"
	sp.update(t, "prod", "web.prod.svc.cluster.local", bad)
	if p := r.nextProfile("update"); p != nil {
		t.Fatalf("an invalid profile was served: %+v", p)
	}
	sp.update(t, "prod", "web.prod.svc.cluster.local", booksSpec("3s"))
	if p := r.nextProfile("update"); p == nil || p.Routes[0].Timeout != 3*time.Second {
		t.Fatalf("after the fix: %+v", p)
	}
	if err := sp.dc.Resource(ServiceProfileGVR).Namespace("prod").Delete(context.Background(), "web.prod.svc.cluster.local", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if p := r.nextProfile("update"); p != nil {
		t.Fatalf("after the delete: %+v", p)
	}
	r.noFailures()
}

// Without the CRD, Services are served at once without profiles; once it
// appears, the profiles are read and the Service rebuilt. A forbidden
// list neither fails the source nor holds up the first hand-over.
func TestRunServiceProfileCRDLaterAndForbidden(t *testing.T) {
	sp := newFakeProfiles()
	sp.create(t, "prod", "web.prod.svc.cluster.local", booksSpec("1s"))
	r := runWithProfiles(t, sp, selectingService(), podSlice())
	if p := r.nextProfile("replace"); p != nil {
		t.Fatalf("a profile without the CRD: %+v", p)
	}
	sp.present.Store(true)
	if p := r.nextProfile("update"); p == nil {
		t.Fatal("no profile once the CRD is installed")
	}

	sp2 := newFakeProfiles()
	sp2.present.Store(true)
	sp2.forbidden.Store(true)
	sp2.create(t, "prod", "web.prod.svc.cluster.local", booksSpec("1s"))
	r2 := runWithProfiles(t, sp2, selectingService(), podSlice())
	if p := r2.nextProfile("replace"); p != nil {
		t.Fatalf("a profile from a forbidden list: %+v", p)
	}
	sp2.forbidden.Store(false)
	if p := r2.nextProfile("update"); p == nil {
		t.Fatal("no profile once the list is allowed")
	}
}

// ServiceProfiles of the Service's FQN in other watched namespaces are
// handed over as client profiles, by namespace; an invalid one as an
// empty profile (it shadows the Service's for that namespace, as in
// Linkerd); one of another name touches nothing.
func TestRunWithClientNamespaceProfiles(t *testing.T) {
	sp := newFakeProfiles()
	sp.present.Store(true)
	sp.create(t, "dev", "web.prod.svc.cluster.local", booksSpec("5s"))
	r := runWithProfilesIn(t, []string{"prod", "dev"}, sp, selectingService(), podSlice())
	own, clients := r.nextProfiles("replace")
	if own != nil || len(clients) != 1 || clients["dev"] == nil || clients["dev"].Routes[0].Timeout != 5*time.Second {
		t.Fatalf("first hand-over: %+v %+v", own, clients)
	}
	sp.create(t, "prod", "web.prod.svc.cluster.local", booksSpec("1s"))
	if own, clients = r.nextProfiles("update"); own == nil || own.Routes[0].Timeout != time.Second || len(clients) != 1 {
		t.Fatalf("with its own: %+v %+v", own, clients)
	}
	bad := booksSpec("2s")
	delete(bad["routes"].([]any)[0].(map[string]any), "condition")
	sp.update(t, "dev", "web.prod.svc.cluster.local", bad)
	if own, clients = r.nextProfiles("update"); own == nil || clients["dev"] == nil || len(clients["dev"].Routes) != 0 {
		t.Fatalf("an invalid client profile: %+v %+v", own, clients)
	}
	if err := sp.dc.Resource(ServiceProfileGVR).Namespace("dev").Delete(context.Background(), "web.prod.svc.cluster.local", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if own, clients = r.nextProfiles("update"); own == nil || clients != nil {
		t.Fatalf("after the delete: %+v %+v", own, clients)
	}
}
