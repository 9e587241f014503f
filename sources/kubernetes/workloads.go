package kubernetes

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/tributary-mesh/tributary/discovery"
)

// ExternalWorkloads (workload.linkerd.io/v1beta1) are Linkerd 2.15's
// representation of a workload outside the cluster, typically a VM running
// linkerd2-proxy. Linkerd's external-workload controller writes
// EndpointSlices for the Services that select them, with target references
// of kind ExternalWorkload; the source reads the workloads themselves for
// what those slices do not carry (identity, labels, ports) and, for a
// Service without such slices, matches the Service's selector against the
// workloads itself.

// ExternalWorkloadGVR is the resource the source reads.
var ExternalWorkloadGVR = schema.GroupVersionResource{Group: "workload.linkerd.io", Version: "v1beta1", Resource: "externalworkloads"}

const (
	kindExternalWorkload = "ExternalWorkload"
	kindPod              = "Pod"
	// ewControllerName is the managed-by label value of the EndpointSlices
	// Linkerd's external-workload controller writes.
	ewControllerName = "linkerd-external-workloads-controller"
)

// externalWorkload is an ExternalWorkload as the source caches it: parsed
// once, when it enters the informer, and immutable from then on.
type externalWorkload struct {
	metav1.TypeMeta
	metav1.ObjectMeta // labels, owners, and the opaque-ports annotation only

	identity   string
	serverName string
	ips        []netip.Addr
	ports      []workloadPort
	ready      bool     // a Ready condition with status True
	problems   []string // what was malformed and skipped
}

type workloadPort struct {
	name     string
	port     uint16
	protocol corev1.Protocol
}

func (w *externalWorkload) DeepCopyObject() runtime.Object {
	c := *w
	return &c
}

// rawWorkload mirrors the parts of the CRD's schema the source reads.
type rawWorkload struct {
	Spec struct {
		MeshTLS struct {
			Identity   string `json:"identity"`
			ServerName string `json:"serverName"`
		} `json:"meshTLS"`
		Ports []struct {
			Name     string `json:"name"`
			Port     int64  `json:"port"`
			Protocol string `json:"protocol"`
		} `json:"ports"`
		WorkloadIPs []struct {
			IP string `json:"ip"`
		} `json:"workloadIPs"`
	} `json:"spec"`
	Status struct {
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

// workloadFromUnstructured is the informer's transform: it parses an
// ExternalWorkload and keeps only what the source reads. Malformed parts
// are recorded in problems, reported when a Service uses the workload.
func workloadFromUnstructured(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil // already parsed, or a tombstone
	}
	w := &externalWorkload{
		TypeMeta: metav1.TypeMeta{APIVersion: ExternalWorkloadGVR.GroupVersion().String(), Kind: kindExternalWorkload},
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       u.GetNamespace(),
			Name:            u.GetName(),
			UID:             u.GetUID(),
			ResourceVersion: u.GetResourceVersion(),
			Labels:          u.GetLabels(),
			OwnerReferences: u.GetOwnerReferences(),
		},
	}
	if v, ok := u.GetAnnotations()[OpaquePortsAnnotation]; ok {
		w.Annotations = map[string]string{OpaquePortsAnnotation: v}
	}
	var raw rawWorkload
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &raw); err != nil {
		w.problems = append(w.problems, "unreadable: "+err.Error())
		return w, nil
	}
	w.identity, w.serverName = raw.Spec.MeshTLS.Identity, raw.Spec.MeshTLS.ServerName
	for _, ip := range raw.Spec.WorkloadIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil || a.Zone() != "" {
			w.problems = append(w.problems, fmt.Sprintf("workloadIPs: %q is not an IP address", ip.IP))
			continue
		}
		w.ips = append(w.ips, a.Unmap())
	}
	for _, p := range raw.Spec.Ports {
		if p.Port <= 0 || p.Port > 65535 {
			w.problems = append(w.problems, fmt.Sprintf("ports: %d out of range", p.Port))
			continue
		}
		proto := corev1.Protocol(p.Protocol)
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		w.ports = append(w.ports, workloadPort{name: p.Name, port: uint16(p.Port), protocol: proto})
	}
	// Linkerd's rule (IsEwReady): ready when some Ready condition is True.
	for _, c := range raw.Status.Conditions {
		if c.Type == "Ready" && c.Status == "True" {
			w.ready = true
		}
	}
	return w, nil
}

// workloadLookup finds an ExternalWorkload by namespace and name; nil when
// unknown.
type workloadLookup func(namespace, name string) *externalWorkload

// workloadSelector lists the ExternalWorkloads of a namespace a selector
// matches.
type workloadSelector func(namespace string, sel labels.Selector) []*externalWorkload

// lookups resolve what a Service's slices refer to.
type lookups struct {
	pods      podLookup
	workloads workloadLookup
	selected  workloadSelector
}

// workloadTraits applies Linkerd's rules for an ExternalWorkload endpoint
// on one target port: its identity is the one its meshTLS declares (a
// SPIFFE ID with its server name); it is always meshed, so the hint is h2,
// or opaque for an opaque port, with the port named linkerd-proxy (else
// 4143) as the opaque transport.
func (b *builder) workloadTraits(w *externalWorkload, port uint16, bad problem) portTraits {
	if w == nil {
		return portTraits{}
	}
	t := portTraits{protocol: discovery.ProtocolH2}
	if b.mode != IdentityNone && b.mode != "" {
		id, err := workloadIdentity(w)
		if err != nil {
			bad(objName("externalworkload", w.Namespace, w.Name), err.Error())
		}
		t.identity = id
	}
	opaque := b.defaultOpaque[port]
	if v, ok := w.Annotations[OpaquePortsAnnotation]; ok {
		opaque = inPortList(v, port, func(name string) (uint16, bool) {
			for _, p := range w.ports {
				if p.name != "" && p.name == name {
					return p.port, true
				}
			}
			return 0, false
		})
	}
	if opaque {
		t.protocol = discovery.ProtocolOpaque
		t.transport = DefaultInboundPort
		for _, p := range w.ports {
			if p.name == proxyPortName {
				t.transport = p.port
			}
		}
	}
	return t
}

// workloadIdentity reads spec.meshTLS. Linkerd sends the identity as a URI
// whatever it is; the proxy accepts only a SPIFFE URI there, so a DNS-like
// name is sent as a DNS-like identity when its server name is the name
// itself, and anything else is refused rather than sent broken.
func workloadIdentity(w *externalWorkload) (discovery.Identity, error) {
	if w.identity == "" {
		return discovery.Identity{}, nil
	}
	id, err := discovery.ParseIdentity(w.identity, w.serverName)
	if err != nil {
		return discovery.Identity{}, fmt.Errorf("spec.meshTLS: %v", err)
	}
	return id, nil
}

// workloadLabels adds Linkerd's ExternalWorkload metric labels to l:
// external_workload, and the owner under its lower-cased kind when the
// workload has exactly one. An owner kind never replaces a label already
// set (an owner of kind Service would otherwise rename the service).
func workloadLabels(l map[string]string, w *externalWorkload) {
	l[LabelExternalWorkload] = w.Name
	if len(w.OwnerReferences) == 1 {
		ref := w.OwnerReferences[0]
		key := strings.ToLower(ref.Kind)
		if _, taken := l[key]; !taken && key != "" && ref.Name != "" {
			l[key] = ref.Name
		}
	}
}

// usesWorkloadController reports whether Linkerd's external-workload
// controller writes slices for the Service: then its slices are the
// ExternalWorkload endpoints, as with Linkerd, and the source does not
// match the selector itself.
func usesWorkloadController(eps []*discoveryv1.EndpointSlice) bool {
	for _, sl := range eps {
		if sl.Labels[discoveryv1.LabelManagedBy] == ewControllerName {
			return true
		}
		for i := range sl.Endpoints {
			if ref := sl.Endpoints[i].TargetRef; ref != nil && ref.Kind == kindExternalWorkload {
				return true
			}
		}
	}
	return false
}

// workloadSlices writes, for a Service whose ExternalWorkloads no
// controller publishes, the EndpointSlices Linkerd's external-workload
// controller would write: one per address family and set of resolved
// ports, with each workload's readiness, zone label and (for a headless
// Service) hostname. Workloads that do not document a port the Service
// targets are left out of that port, as Linkerd leaves them out.
func workloadSlices(svc *corev1.Service, ws []*externalWorkload) []*discoveryv1.EndpointSlice {
	type group struct {
		ports []discoveryv1.EndpointPort
		eps   map[discoveryv1.AddressType][]discoveryv1.Endpoint
	}
	var groups []*group
	byKey := map[string]*group{}
	headless := svc.Spec.ClusterIP == corev1.ClusterIPNone
	for _, w := range ws {
		if len(w.ips) == 0 {
			continue
		}
		ports, key := workloadEndpointPorts(svc, w)
		g := byKey[key]
		if g == nil {
			g = &group{ports: ports, eps: map[discoveryv1.AddressType][]discoveryv1.Endpoint{}}
			byKey[key] = g
			groups = append(groups, g)
		}
		ready := w.ready
		for _, ip := range w.ips {
			family := discoveryv1.AddressTypeIPv4
			if ip.Is6() {
				family = discoveryv1.AddressTypeIPv6
			}
			ep := discoveryv1.Endpoint{
				Addresses:  []string{ip.String()},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
				TargetRef:  &corev1.ObjectReference{Kind: kindExternalWorkload, Namespace: w.Namespace, Name: w.Name, UID: w.UID},
			}
			if z, ok := w.Labels[corev1.LabelTopologyZone]; ok {
				ep.Zone = &z
			}
			if headless && w.Namespace == svc.Namespace {
				name := w.Name
				ep.Hostname = &name
			}
			g.eps[family] = append(g.eps[family], ep)
		}
	}
	var out []*discoveryv1.EndpointSlice
	for i, g := range groups {
		for _, family := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
			if len(g.eps[family]) == 0 {
				continue
			}
			out = append(out, &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Namespace: svc.Namespace,
					Name:      "tributary-externalworkloads-" + strconv.Itoa(i) + "-" + strings.ToLower(string(family)),
					Labels:    map[string]string{discoveryv1.LabelServiceName: svc.Name},
				},
				AddressType: family,
				Ports:       g.ports,
				Endpoints:   g.eps[family],
			})
		}
	}
	return out
}

// workloadEndpointPorts resolves each Service port's target on a workload,
// as Linkerd's controller does: a named target port is the workload port
// of that name, a number must be a port the workload documents, and the
// protocols must agree.
func workloadEndpointPorts(svc *corev1.Service, w *externalWorkload) ([]discoveryv1.EndpointPort, string) {
	var ports []discoveryv1.EndpointPort
	var key strings.Builder
	for _, sp := range svc.Spec.Ports {
		proto := sp.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		var num uint16
		for _, wp := range w.ports {
			if wp.protocol != proto {
				continue
			}
			if sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal != "" && wp.name == sp.TargetPort.StrVal ||
				sp.TargetPort.Type == intstr.Int && int(wp.port) == targetNumber(sp) {
				num = wp.port
				break
			}
		}
		if num == 0 {
			continue
		}
		name, n := sp.Name, int32(num)
		ports = append(ports, discoveryv1.EndpointPort{Name: &name, Port: &n, Protocol: &proto})
		fmt.Fprintf(&key, "%s/%d/%s,", name, num, proto)
	}
	return ports, key.String()
}

// targetNumber is a Service port's numeric target port; a zero target
// means the port itself, as the API server defaults it.
func targetNumber(sp corev1.ServicePort) int {
	if sp.TargetPort.IntVal == 0 {
		return int(sp.Port)
	}
	return int(sp.TargetPort.IntVal)
}

// sortWorkloads orders workloads by name, so that rebuilds are identical.
func sortWorkloads(ws []*externalWorkload) {
	slices.SortFunc(ws, func(a, b *externalWorkload) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
}

// workloadAPI is how the source reaches ExternalWorkloads.
type workloadAPI = crdAPI

type dynamicWorkloads struct{ c dynamic.Interface }

// restWorkloads is the production workloadAPI, through client-go's
// dynamic client (the CRD has no protobuf form; the client speaks JSON).
func restWorkloads(rc *rest.Config) (workloadAPI, error) {
	c, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", ExternalWorkloadGVR.GroupVersion(), err)
	}
	return dynamicWorkloads{c}, nil
}

func (d dynamicWorkloads) installed(ctx context.Context) (bool, error) {
	_, err := d.c.Resource(ExternalWorkloadGVR).List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, err
}

func (d dynamicWorkloads) listWatch(namespace string) cache.ListerWatcher {
	r := d.c.Resource(ExternalWorkloadGVR).Namespace(namespace)
	// The client says whether it supports streaming lists.
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return r.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return r.Watch(ctx, o)
		},
	}, d.c)
}
