package kubernetes

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

// byWorkload indexes EndpointSlices by the ExternalWorkloads their
// endpoints refer to ("<ns>/<name>").
const byWorkload = "externalworkload"

// setupWorkloads creates the ExternalWorkload informers (an optionalCRD):
// without them the source serves the Services' pods alone.
func (r *run) setupWorkloads(api workloadAPI) {
	r.workloadCRD = optionalCRD{
		kind:    "ExternalWorkload",
		plural:  "externalworkloads",
		gvr:     ExternalWorkloadGVR.String(),
		grant:   "externalworkloads.workload.linkerd.io",
		without: "serving pods only",
	}
	if api == nil {
		return
	}
	r.workloadCRD.api = api
	r.setupCRD(&r.workloadCRD, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
		workloadFromUnstructured, r.workloadEvent,
		func(set *nsInformers, inf cache.SharedIndexInformer) { set.workloads = inf })
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
