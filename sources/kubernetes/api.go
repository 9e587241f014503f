package kubernetes

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// The source talks to the API server through two plain REST clients that
// know only the types it reads (core/v1 and discovery.k8s.io/v1), and
// feeds client-go's reflectors and shared informers with them. The
// generated clientset and informer factory would do the same but link in
// every API group Kubernetes has: about 65 MB of binary and their scheme
// registrations at every start.
var (
	apiScheme = runtime.NewScheme()
	apiCodecs = serializer.NewCodecFactory(apiScheme)
)

func init() {
	utilruntime.Must(corev1.AddToScheme(apiScheme))
	utilruntime.Must(discoveryv1.AddToScheme(apiScheme))
}

// Resources the source watches.
const (
	resServices       = "services"
	resEndpointSlices = "endpointslices"
	resPods           = "pods"
	resNodes          = "nodes"
)

// listWatchFunc returns the ListerWatcher of a resource in a namespace
// ("" for all), with a label selector ("" for everything).
type listWatchFunc func(resource, namespace, selector string) cache.ListerWatcher

// restListWatch builds the production listWatchFunc on rc.
func restListWatch(rc *rest.Config) (listWatchFunc, error) {
	core, err := restClient(rc, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	disc, err := restClient(rc, "/apis", discoveryv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return func(resource, namespace, selector string) cache.ListerWatcher {
		c := core
		if resource == resEndpointSlices {
			c = disc
		}
		return cache.NewFilteredListWatchFromClient(c, resource, namespace, func(o *metav1.ListOptions) {
			o.LabelSelector = selector
		})
	}, nil
}

func restClient(rc *rest.Config, apiPath string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(rc)
	c.APIPath = apiPath
	c.GroupVersion = &gv
	c.NegotiatedSerializer = apiCodecs.WithoutConversion()
	rc2, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
	}
	return rc2, nil
}

// newInformer is a shared informer for one resource, its objects slimmed
// before they are cached.
func newInformer(lw cache.ListerWatcher, example runtime.Object, what string, indexers cache.Indexers) cache.SharedIndexInformer {
	inf := cache.NewSharedIndexInformerWithOptions(lw, example, cache.SharedIndexInformerOptions{
		Indexers:          indexers,
		ObjectDescription: what,
	})
	_ = inf.SetTransform(slim) // only fails once the informer runs
	return inf
}
