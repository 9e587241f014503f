package kubernetes

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

// DefaultCRDRecheck is how often a source whose cluster has no
// ExternalWorkload CRD checks again whether it has been installed.
const DefaultCRDRecheck = time.Minute

// byWorkload indexes EndpointSlices by the ExternalWorkloads their
// endpoints refer to ("<ns>/<name>").
const byWorkload = "externalworkload"

// setupWorkloads creates the ExternalWorkload informers, one per watched
// namespace, next to the others; they start only once the CRD is known to
// be installed (startWorkloads).
func (r *run) setupWorkloads(api workloadAPI) {
	r.workloadAPI = api
	if api == nil {
		return
	}
	for ns, set := range r.sets {
		where := "all namespaces"
		if ns != "" {
			where = "namespace " + ns
		}
		inf := cache.NewSharedIndexInformerWithOptions(api.listWatch(ns), &unstructured.Unstructured{}, cache.SharedIndexInformerOptions{
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: "externalworkloads in " + where,
		})
		_ = inf.SetTransform(workloadFromUnstructured)
		_ = inf.SetWatchErrorHandlerWithContext(r.workloadWatchError("externalworkloads in " + where))
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: afterSync(r.workloadEvent),
			UpdateFunc: func(old, obj any) {
				r.workloadEvent(old)
				r.workloadEvent(obj)
			},
			DeleteFunc: r.workloadEvent,
		})
		set.workloads = inf
	}
}

// startWorkloads runs the ExternalWorkload informers and waits for their
// caches when the CRD is installed. When it is not (or the API server
// will not say), the source serves pods alone, logs it once, and checks
// again every crdRecheck; once the CRD appears, the informers start and,
// when synced, every Service is rebuilt.
func (r *run) startWorkloads(ctx, logCtx context.Context, wg *sync.WaitGroup) {
	if r.workloadAPI == nil {
		return
	}
	ok, err := r.installed(ctx)
	if ok {
		r.runWorkloadInformers(logCtx, wg)
		if !r.waitWorkloads(ctx) {
			wg.Go(func() { r.rebuildWhenSynced(ctx) })
		}
		return
	}
	every := r.crdRecheck
	if every <= 0 {
		every = DefaultCRDRecheck
	}
	if err != nil {
		r.log.Warn("cannot tell whether the ExternalWorkload CRD is installed; serving pods only until it can",
			"resource", ExternalWorkloadGVR.String(), "error", err, "recheck", every)
	} else {
		r.log.Info("the ExternalWorkload CRD is not installed; serving pods only",
			"resource", ExternalWorkloadGVR.String(), "recheck", every)
	}
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if ok, _ := r.installed(ctx); !ok {
				continue
			}
			r.log.Info("the ExternalWorkload CRD is installed now; reading ExternalWorkloads", "resource", ExternalWorkloadGVR.String())
			r.runWorkloadInformers(logCtx, wg)
			r.rebuildWhenSynced(ctx)
			return
		}
	})
}

// installed asks whether the CRD is installed, within a bound: the API
// server answered the other lists a moment ago.
func (r *run) installed(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return r.workloadAPI.installed(ctx)
}

// rebuildWhenSynced waits until the ExternalWorkload caches have synced
// (after a late start, or once a refused list is allowed) and then queues
// every Service: their first list's workloads raise no events.
func (r *run) rebuildWhenSynced(ctx context.Context) {
	synced := make([]cache.InformerSynced, 0, len(r.sets))
	for _, set := range r.sets {
		synced = append(synced, set.workloads.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	r.log.Info("reading ExternalWorkloads", "resource", ExternalWorkloadGVR.String())
	for _, key := range r.serviceKeys() {
		r.queue.Add(key)
	}
}

func (r *run) runWorkloadInformers(logCtx context.Context, wg *sync.WaitGroup) {
	for _, set := range r.sets {
		inf := set.workloads
		wg.Go(func() { inf.RunWithContext(logCtx) })
	}
}

// waitWorkloads waits until the ExternalWorkload caches have synced, or
// their list was refused (forbidden, or the CRD went away): a source that
// may not read ExternalWorkloads still serves its pods. It reports whether
// the caches synced.
func (r *run) waitWorkloads(ctx context.Context) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		synced := true
		for _, set := range r.sets {
			synced = synced && set.workloads.HasSynced()
		}
		if synced {
			return true
		}
		if r.workloadsRefused.Load() {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// workloadWatchError reports the ExternalWorkload informers' errors. They
// never make the source stale: an unreachable API server shows in the
// other resources, and a cluster that refuses ExternalWorkloads (RBAC not
// granted yet, CRD removed) still has its pods served. Each kind of
// refusal is logged once.
func (r *run) workloadWatchError(what string) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		switch {
		case err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled),
			errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
			apierrors.IsResourceExpired(err), apierrors.IsGone(err):
			return
		case apierrors.IsForbidden(err) || apierrors.IsNotFound(err):
			if !r.workloadsRefused.Swap(true) {
				r.log.Warn("ExternalWorkloads cannot be read; serving pods without them (grant list and watch on externalworkloads.workload.linkerd.io)",
					"what", what, "error", err)
			}
		default:
			r.log.Warn("reading ExternalWorkloads failed; retrying", "what", what, "error", err)
		}
	}
}

// workloadEvent queues the Services an ExternalWorkload change can touch:
// those whose slices refer to it, and those of its namespace whose
// selector matches its labels.
func (r *run) workloadEvent(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	w, ok := obj.(*externalWorkload)
	if !ok {
		return
	}
	set := r.setFor(w.Namespace)
	if set == nil {
		return
	}
	objs, _ := set.slices.GetIndexer().ByIndex(byWorkload, w.Namespace+"/"+w.Name)
	for _, o := range objs {
		r.sliceEvent(o)
	}
	svcs, _ := set.services.GetIndexer().ByIndex(cache.NamespaceIndex, w.Namespace)
	for _, o := range svcs {
		svc, ok := o.(*corev1.Service)
		if !ok || len(svc.Spec.Selector) == 0 {
			continue
		}
		if labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(w.Labels)) {
			r.queue.Add(svc.Namespace + "/" + svc.Name)
		}
	}
}

// workload finds a cached ExternalWorkload.
func (r *run) workload(ns, name string) *externalWorkload {
	set := r.setFor(ns)
	if set == nil || set.workloads == nil {
		return nil
	}
	obj, ok, _ := set.workloads.GetIndexer().GetByKey(ns + "/" + name)
	if !ok {
		return nil
	}
	w, _ := obj.(*externalWorkload)
	return w
}

// selectedWorkloads lists the cached ExternalWorkloads of a namespace that
// sel matches.
func (r *run) selectedWorkloads(ns string, sel labels.Selector) []*externalWorkload {
	set := r.setFor(ns)
	if set == nil || set.workloads == nil {
		return nil
	}
	objs, _ := set.workloads.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
	var out []*externalWorkload
	for _, o := range objs {
		if w, ok := o.(*externalWorkload); ok && sel.Matches(labels.Set(w.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func (r *run) lookups() lookups {
	return lookups{pods: r.pod, workloads: r.workload, selected: r.selectedWorkloads}
}

func sliceWorkloadIndex(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var keys []string
	for i := range sl.Endpoints {
		ref := sl.Endpoints[i].TargetRef
		if ref == nil || ref.Kind != kindExternalWorkload || ref.Name == "" {
			continue
		}
		ns := ref.Namespace
		if ns == "" {
			ns = sl.Namespace
		}
		keys = append(keys, ns+"/"+ref.Name)
	}
	return keys, nil
}

// slimContainers keeps of a pod's containers what the Linkerd conventions
// read: named ports (opaque-ports annotations may name them) and the proxy
// container's listen addresses.
func slimContainers(cs []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range cs {
		k := corev1.Container{Name: c.Name}
		for _, p := range c.Ports {
			if p.Name != "" {
				k.Ports = append(k.Ports, corev1.ContainerPort{Name: p.Name, ContainerPort: p.ContainerPort, Protocol: p.Protocol})
			}
		}
		if c.Name == proxyContainerName {
			for _, e := range c.Env {
				switch e.Name {
				case envInboundListenAddr, envAdminListenAddr, envControlListenAddr:
					k.Env = append(k.Env, corev1.EnvVar{Name: e.Name, Value: e.Value})
				}
			}
		} else if len(k.Ports) == 0 {
			continue
		}
		out = append(out, k)
	}
	return out
}
