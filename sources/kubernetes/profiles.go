package kubernetes

import (
	"context"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/tributary-mesh/tributary/discovery"
)

// ServiceProfiles (linkerd.io/v1alpha2) declare a service's HTTP routes,
// retry budget and traffic split. Linkerd names one by the FQN of the
// Service it describes (<svc>.<ns>.svc.<cluster-domain>), and serves the
// one in the client's namespace before the one in the Service's. The
// source hands them over with the Service: the one in the Service's
// namespace as discovery.Service.Profile, those in other watched
// namespaces as ClientProfiles, by namespace.

// ServiceProfileGVR is the resource the source reads.
var ServiceProfileGVR = schema.GroupVersionResource{Group: "linkerd.io", Version: "v1alpha2", Resource: "serviceprofiles"}

const kindServiceProfile = "ServiceProfile"

// serviceProfile is a ServiceProfile as the source caches it: parsed once,
// when it enters the informer, and immutable from then on.
type serviceProfile struct {
	metav1.TypeMeta
	metav1.ObjectMeta // namespace, name and version only

	profile  *discovery.Profile // nil when the spec is invalid
	problems []string           // what was malformed: skipped parts, or why profile is nil
}

func (p *serviceProfile) DeepCopyObject() runtime.Object {
	c := *p
	return &c
}

// rawProfile mirrors the CRD's spec (Linkerd's
// controller/gen/apis/serviceprofile/v1alpha2 types).
type rawProfile struct {
	Spec struct {
		Routes []*struct {
			Name            string           `json:"name"`
			Condition       *rawRequestMatch `json:"condition"`
			ResponseClasses []*struct {
				Condition *rawResponseMatch `json:"condition"`
				IsFailure bool              `json:"isFailure"`
			} `json:"responseClasses"`
			IsRetryable bool   `json:"isRetryable"`
			Timeout     string `json:"timeout"`
		} `json:"routes"`
		RetryBudget *struct {
			RetryRatio          float32 `json:"retryRatio"`
			MinRetriesPerSecond uint32  `json:"minRetriesPerSecond"`
			TTL                 string  `json:"ttl"`
		} `json:"retryBudget"`
		DstOverrides []*struct {
			Authority string            `json:"authority"`
			Weight    resource.Quantity `json:"weight"`
		} `json:"dstOverrides"`
	} `json:"spec"`
}

type rawRequestMatch struct {
	All       []*rawRequestMatch `json:"all"`
	Not       *rawRequestMatch   `json:"not"`
	Any       []*rawRequestMatch `json:"any"`
	PathRegex string             `json:"pathRegex"`
	Method    string             `json:"method"`
}

type rawResponseMatch struct {
	All    []*rawResponseMatch `json:"all"`
	Not    *rawResponseMatch   `json:"not"`
	Any    []*rawResponseMatch `json:"any"`
	Status *struct {
		Min uint32 `json:"min"`
		Max uint32 `json:"max"`
	} `json:"status"`
}

// profileFromUnstructured is the informer's transform: it parses a
// ServiceProfile as Linkerd's profile translator reads it. What Linkerd
// refuses whole (a missing condition, a match without a kind, an
// unreadable retry budget TTL) leaves profile nil, with the reason in
// problems; a route timeout that does not parse is dropped (the route has
// no timeout), as Linkerd does, and recorded.
func profileFromUnstructured(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil // already parsed, or a tombstone
	}
	p := &serviceProfile{
		TypeMeta: metav1.TypeMeta{APIVersion: ServiceProfileGVR.GroupVersion().String(), Kind: kindServiceProfile},
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       u.GetNamespace(),
			Name:            u.GetName(),
			UID:             u.GetUID(),
			ResourceVersion: u.GetResourceVersion(),
		},
	}
	var raw rawProfile
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &raw); err != nil {
		p.problems = append(p.problems, "unreadable: "+err.Error())
		return p, nil
	}
	prof, skipped, err := parseProfile(&raw)
	p.problems = append(p.problems, skipped...)
	if err != nil {
		p.problems = append(p.problems, "not served: "+err.Error())
		return p, nil
	}
	p.profile = prof
	return p, nil
}

// parseProfile converts a spec. skipped lists the parts dropped; err, a
// spec that cannot be served at all.
func parseProfile(raw *rawProfile) (prof *discovery.Profile, skipped []string, err error) {
	prof = &discovery.Profile{}
	for i, r := range raw.Spec.Routes {
		if r == nil {
			return nil, skipped, fmt.Errorf("route %d: empty", i)
		}
		if r.Condition == nil {
			return nil, skipped, fmt.Errorf("route %d (%q): missing request match", i, r.Name)
		}
		route := discovery.Route{Name: r.Name, IsRetryable: r.IsRetryable, Condition: requestMatch(r.Condition)}
		for j, rc := range r.ResponseClasses {
			if rc == nil || rc.Condition == nil {
				return nil, skipped, fmt.Errorf("route %d (%q): response class %d: missing response match", i, r.Name, j)
			}
			route.ResponseClasses = append(route.ResponseClasses, discovery.ResponseClass{Condition: responseMatch(rc.Condition), IsFailure: rc.IsFailure})
		}
		if r.Timeout != "" {
			d, err := time.ParseDuration(r.Timeout)
			switch {
			case err != nil:
				skipped = append(skipped, fmt.Sprintf("route %d (%q): timeout %q: %v; the route has no timeout", i, r.Name, r.Timeout, err))
			case d < 0:
				skipped = append(skipped, fmt.Sprintf("route %d (%q): timeout %q is negative; the route has no timeout", i, r.Name, r.Timeout))
			default:
				route.Timeout = d
			}
		}
		prof.Routes = append(prof.Routes, route)
	}
	if b := raw.Spec.RetryBudget; b != nil {
		ttl, err := time.ParseDuration(b.TTL)
		if err != nil {
			return nil, skipped, fmt.Errorf("retryBudget: ttl %q: %w", b.TTL, err)
		}
		if ttl < 0 {
			return nil, skipped, fmt.Errorf("retryBudget: ttl %q is negative", b.TTL)
		}
		prof.RetryBudget = &discovery.RetryBudget{RetryRatio: b.RetryRatio, MinRetriesPerSecond: b.MinRetriesPerSecond, TTL: ttl}
	}
	for i, d := range raw.Spec.DstOverrides {
		if d == nil {
			continue
		}
		// Linkerd sends the weight in decimillis (10000 is a weight of 1):
		// its milli-value × 10, truncated to 32 bits.
		w := d.Weight.MilliValue() * 10
		if w < 0 || w > 1<<32-1 {
			skipped = append(skipped, fmt.Sprintf("dstOverrides %d (%q): weight %s out of range; skipped", i, d.Authority, d.Weight.String()))
			continue
		}
		prof.DstOverrides = append(prof.DstOverrides, discovery.WeightedDst{Authority: d.Authority, Weight: uint32(w)})
	}
	if err := prof.Validate(); err != nil {
		return nil, skipped, err
	}
	return prof, skipped, nil
}

// requestMatch converts a match, keeping an empty all or any set (as
// Linkerd does: it checks for nil).
func requestMatch(m *rawRequestMatch) discovery.RequestMatch {
	out := discovery.RequestMatch{Method: m.Method, PathRegex: m.PathRegex}
	if m.All != nil {
		out.All = requestMatches(m.All)
	}
	if m.Any != nil {
		out.Any = requestMatches(m.Any)
	}
	if m.Not != nil {
		n := requestMatch(m.Not)
		out.Not = &n
	}
	return out
}

func requestMatches(ms []*rawRequestMatch) []discovery.RequestMatch {
	out := make([]discovery.RequestMatch, 0, len(ms))
	for _, m := range ms {
		if m == nil {
			m = &rawRequestMatch{} // Validate refuses it: a match must set a kind
		}
		out = append(out, requestMatch(m))
	}
	return out
}

func responseMatch(m *rawResponseMatch) discovery.ResponseMatch {
	var out discovery.ResponseMatch
	if m.All != nil {
		out.All = responseMatches(m.All)
	}
	if m.Any != nil {
		out.Any = responseMatches(m.Any)
	}
	if m.Status != nil {
		out.Status = &discovery.StatusRange{Min: m.Status.Min, Max: m.Status.Max}
	}
	if m.Not != nil {
		n := responseMatch(m.Not)
		out.Not = &n
	}
	return out
}

func responseMatches(ms []*rawResponseMatch) []discovery.ResponseMatch {
	out := make([]discovery.ResponseMatch, 0, len(ms))
	for _, m := range ms {
		if m == nil {
			m = &rawResponseMatch{}
		}
		out = append(out, responseMatch(m))
	}
	return out
}

// serviceOfProfile is the Service (namespace and name) a ServiceProfile
// named name describes, when the name is a Service's FQN under domain.
func serviceOfProfile(name, domain string) (ns, svc string, ok bool) {
	rest, ok := strings.CutSuffix(name, ".svc."+domain)
	if !ok {
		return "", "", false
	}
	svc, ns, ok = strings.Cut(rest, ".")
	if !ok || svc == "" || ns == "" || strings.Contains(ns, ".") {
		return "", "", false
	}
	return ns, svc, true
}

// profileAPI is how the source reaches ServiceProfiles.
type profileAPI = crdAPI

// dynamicResource is a profileAPI for one custom resource through
// client-go's dynamic client (JSON: CRDs have no protobuf form).
type dynamicResource struct {
	c   dynamic.Interface
	gvr schema.GroupVersionResource
}

// restProfiles is the production profileAPI.
func restProfiles(rc *rest.Config) (profileAPI, error) {
	c, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", ServiceProfileGVR.GroupVersion(), err)
	}
	return dynamicResource{c: c, gvr: ServiceProfileGVR}, nil
}

func (d dynamicResource) installed(ctx context.Context) (bool, error) {
	_, err := d.c.Resource(d.gvr).List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}

func (d dynamicResource) listWatch(namespace string) cache.ListerWatcher {
	r := d.c.Resource(d.gvr).Namespace(namespace)
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return r.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return r.Watch(ctx, o)
		},
	}, d.c)
}
