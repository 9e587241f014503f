package kubernetes

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tributary-mesh/tributary/discovery"
)

// Labels and annotations read from Kubernetes objects.
const (
	// LinkerdControlPlaneLabel marks a pod meshed by the Linkerd control
	// plane of that namespace.
	LinkerdControlPlaneLabel = "linkerd.io/control-plane-ns"
	// OpaquePortsAnnotation lists a Service's ports that carry opaque
	// traffic (no protocol detection), as Linkerd reads it: "3306,8000-8100".
	OpaquePortsAnnotation = "config.linkerd.io/opaque-ports"
	podTemplateHashLabel  = "pod-template-hash"
)

// Metric label keys set on every endpoint (zone comes from Endpoint.Zone,
// source from the store).
const (
	LabelCluster        = "cluster"
	LabelNamespace      = "namespace"
	LabelService        = "service"
	LabelPod            = "pod"
	LabelServiceAccount = "serviceaccount"
	LabelOwnerKind      = "owner_kind"
	LabelOwnerName      = "owner_name"
)

// builder turns a Service and its EndpointSlices into the services of one
// group. It holds only settings; it is safe for concurrent use.
type builder struct {
	cluster          string
	domain           string
	mode             IdentityMode
	trustDomain      string
	controlNS        string
	idSelector       labels.Selector
	serveTerminating bool
	preferIPv6       bool
	// defaultOpaque are the opaque ports of pods, ExternalWorkloads and
	// Services without an opaque-ports annotation (Linkerd's default).
	defaultOpaque map[uint16]bool
}

// podLookup finds a pod by namespace and name; nil when unknown.
type podLookup func(namespace, name string) *corev1.Pod

// problem reports something malformed in a backend object that was
// skipped; its valid siblings still apply.
type problem func(obj, msg string)

// host is the service's DNS name.
func (b *builder) host(namespace, name string) string {
	return name + "." + namespace + ".svc." + b.domain
}

// endpointInfo is what every port of one slice endpoint shares.
type endpointInfo struct {
	addr     netip.Addr
	hostname string
	zone     string
	health   discovery.Health
	labels   map[string]string
	forZones []string
	// The target, when known: identity and hints follow from it per port.
	pod      *corev1.Pod
	workload *externalWorkload
}

// build is buildWith for Services of pods only.
func (b *builder) build(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, pods podLookup, bad problem) []discovery.Service {
	return b.buildWith(svc, eps, lookups{pods: pods}, bad)
}

// buildWith returns the services a Service asserts: one authority per TCP
// service port, and one per endpoint hostname and port (pod DNS names of
// headless and StatefulSet services). An ExternalName service asserts
// nothing: it is a DNS alias, not a set of endpoints. eps are the
// Service's EndpointSlices; lk resolves target references and, when no
// slice comes from Linkerd's external-workload controller, lists the
// ExternalWorkloads the Service selects, served as that controller would
// publish them.
func (b *builder) buildWith(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, lk lookups, bad problem) []discovery.Service {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	ns, name := svc.Namespace, svc.Name
	host := b.host(ns, name)
	opaque := b.opaquePorts(svc, bad)
	if lk.selected != nil && len(svc.Spec.Selector) > 0 && !usesWorkloadController(eps) {
		if ws := lk.selected(ns, labels.SelectorFromSet(svc.Spec.Selector)); len(ws) > 0 {
			sortWorkloads(ws)
			eps = append(slices.Clip(eps), workloadSlices(svc, ws)...)
		}
	}

	// One address family per Service: a dual-stack pod has an address in
	// each, and the client can reach only one of them.
	family := b.family(eps)
	type sliceEndpoints struct {
		slice *discoveryv1.EndpointSlice
		infos []endpointInfo
	}
	var chosen []sliceEndpoints
	for _, sl := range eps {
		if sl.AddressType != family {
			continue
		}
		chosen = append(chosen, sliceEndpoints{slice: sl, infos: b.endpointInfos(svc, sl, lk, bad)})
	}

	var out []discovery.Service
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue // the proxy speaks TCP only
		}
		if sp.Port <= 0 || sp.Port > 65535 {
			bad(objName("service", ns, name), fmt.Sprintf("port %q: number %d out of range", sp.Name, sp.Port))
			continue
		}
		port := uint16(sp.Port)
		isOpaque := opaque[port]
		var all []discovery.Endpoint
		byHost := map[string][]discovery.Endpoint{}
		for _, se := range chosen {
			target, ok := slicePort(se.slice, sp.Name)
			if !ok {
				continue
			}
			for _, in := range se.infos {
				var t portTraits
				switch {
				case in.pod != nil:
					t = b.podTraits(in.pod, target, bad)
				case in.workload != nil:
					t = b.workloadTraits(in.workload, target, bad)
				}
				e := discovery.Endpoint{
					Addr:            netip.AddrPortFrom(in.addr, target),
					Zone:            in.zone,
					Health:          in.health,
					Identity:        t.identity,
					Protocol:        t.protocol,
					OpaqueTransport: t.transport,
					Labels:          in.labels,
					ForZones:        in.forZones,
				}
				all = append(all, e)
				if in.hostname != "" {
					byHost[in.hostname] = append(byHost[in.hostname], e)
				}
			}
		}
		out = append(out, discovery.Service{
			Authority: discovery.Authority{Host: host, Port: port},
			Opaque:    isOpaque,
			Endpoints: serving(all),
		})
		for h, heps := range byHost {
			out = append(out, discovery.Service{
				Authority: discovery.Authority{Host: h + "." + host, Port: port},
				Opaque:    isOpaque,
				Endpoints: serving(heps),
			})
		}
	}
	slices.SortFunc(out, func(a, b discovery.Service) int {
		return cmp.Or(strings.Compare(a.Authority.Host, b.Authority.Host), cmp.Compare(a.Authority.Port, b.Authority.Port))
	})
	return out
}

// family picks the address family a Service is served in: IPv4 unless it
// has no IPv4 slices (or PreferIPv6 and it has IPv6 ones).
func (b *builder) family(eps []*discoveryv1.EndpointSlice) discoveryv1.AddressType {
	has4, has6 := false, false
	for _, sl := range eps {
		switch sl.AddressType {
		case discoveryv1.AddressTypeIPv4:
			has4 = true
		case discoveryv1.AddressTypeIPv6:
			has6 = true
		}
	}
	if has6 && (b.preferIPv6 || !has4) {
		return discoveryv1.AddressTypeIPv6
	}
	return discoveryv1.AddressTypeIPv4
}

// slicePort resolves a service port to the slice's port of the same name:
// that is how the EndpointSlice controller publishes target ports, named
// ones included.
func slicePort(sl *discoveryv1.EndpointSlice, name string) (uint16, bool) {
	for _, p := range sl.Ports {
		pname := ""
		if p.Name != nil {
			pname = *p.Name
		}
		if pname != name {
			continue
		}
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			return 0, false
		}
		return uint16(*p.Port), true
	}
	return 0, false
}

// endpointInfos reads the endpoints of one slice; malformed ones are
// reported and skipped.
func (b *builder) endpointInfos(svc *corev1.Service, sl *discoveryv1.EndpointSlice, lk lookups, bad problem) []endpointInfo {
	infos := make([]endpointInfo, 0, len(sl.Endpoints))
	for i := range sl.Endpoints {
		ep := &sl.Endpoints[i]
		if len(ep.Addresses) == 0 {
			bad(objName("endpointslice", sl.Namespace, sl.Name), fmt.Sprintf("endpoint %d has no address", i))
			continue
		}
		addr, err := netip.ParseAddr(ep.Addresses[0])
		if err == nil && addr.Zone() != "" {
			err = fmt.Errorf("has an IPv6 zone")
		}
		if err == nil && (addr.Is4() || addr.Is4In6()) != (sl.AddressType == discoveryv1.AddressTypeIPv4) {
			err = fmt.Errorf("is not of the slice's address type %s", sl.AddressType)
		}
		if err != nil {
			bad(objName("endpointslice", sl.Namespace, sl.Name), fmt.Sprintf("endpoint %d: address %q: %v", i, ep.Addresses[0], err))
			continue
		}
		in := endpointInfo{addr: addr.Unmap(), health: b.health(ep.Conditions)}
		if ep.Hostname != nil && validHostname(*ep.Hostname) {
			in.hostname = strings.ToLower(*ep.Hostname)
		}
		if ep.Zone != nil {
			in.zone = *ep.Zone
		}
		l := map[string]string{
			LabelCluster:   b.cluster,
			LabelNamespace: svc.Namespace,
			LabelService:   svc.Name,
		}
		if ref := ep.TargetRef; ref != nil && ref.Name != "" {
			refNS := ref.Namespace
			if refNS == "" {
				refNS = sl.Namespace
			}
			switch ref.Kind {
			case kindPod:
				l[LabelPod] = ref.Name
				if lk.pods != nil {
					in.pod = lk.pods(refNS, ref.Name)
				}
				if in.pod != nil && ref.UID != "" && in.pod.UID != "" && in.pod.UID != ref.UID {
					in.pod = nil // a namesake of the pod the slice means: unknown
				}
			case kindExternalWorkload:
				l[LabelExternalWorkload] = ref.Name
				if lk.workloads != nil {
					in.workload = lk.workloads(refNS, ref.Name)
				}
				if in.workload != nil && ref.UID != "" && in.workload.UID != "" && in.workload.UID != ref.UID {
					in.workload = nil
				}
			}
		}
		if pod := in.pod; pod != nil {
			podLabels(l, pod)
			if kind, name := ownerOf(pod); kind != "" {
				l[LabelOwnerKind], l[LabelOwnerName] = kind, name
			}
		}
		if w := in.workload; w != nil {
			workloadLabels(l, w)
			for _, p := range w.problems {
				bad(objName("externalworkload", w.Namespace, w.Name), p)
			}
		}
		in.forZones = hintZones(ep.Hints)
		in.labels = l
		infos = append(infos, in)
	}
	return infos
}

// health maps endpoint conditions: ready serves; terminating or not ready
// evicts, except that with serveTerminating an endpoint that still serves
// while it terminates is a warning, served when no endpoint is ready.
func (b *builder) health(c discoveryv1.EndpointConditions) discovery.Health {
	ready := c.Ready == nil || *c.Ready
	serving := c.Serving == nil || *c.Serving
	terminating := c.Terminating != nil && *c.Terminating
	switch {
	case ready && !terminating:
		return discovery.HealthPassing
	case terminating && b.serveTerminating && serving:
		return discovery.HealthWarning
	default:
		return discovery.HealthCritical
	}
}

// identity names a pod's workload identity, or none when the pod or its
// service account is unknown, or it is not selected (not meshed).
func (b *builder) identity(pod *corev1.Pod) discovery.Identity {
	if b.mode == IdentityNone || b.mode == "" || pod == nil {
		return discovery.Identity{}
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" || pod.Namespace == "" {
		return discovery.Identity{}
	}
	if b.idSelector != nil && !b.idSelector.Matches(labels.Set(pod.Labels)) {
		return discovery.Identity{}
	}
	dns := sa + "." + pod.Namespace + ".serviceaccount.identity." + b.controlNS + "." + b.trustDomain
	if b.mode == IdentitySPIFFE {
		return discovery.Identity{
			Kind:       discovery.IdentitySPIFFE,
			Name:       "spiffe://" + b.trustDomain + "/ns/" + pod.Namespace + "/sa/" + sa,
			ServerName: dns,
		}
	}
	return discovery.Identity{Kind: discovery.IdentityDNS, Name: dns, ServerName: dns}
}

// ownerOf is the pod's controller, with a ReplicaSet named after its
// Deployment (<deployment>-<pod-template-hash>) reported as the Deployment.
func ownerOf(pod *corev1.Pod) (kind, name string) {
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil {
		return "", ""
	}
	if ref.Kind == "ReplicaSet" {
		if hash := pod.Labels[podTemplateHashLabel]; hash != "" {
			if d, ok := strings.CutSuffix(ref.Name, "-"+hash); ok && d != "" {
				return "Deployment", d
			}
		}
	}
	return ref.Kind, ref.Name
}

// hintZones is hints.forZones, sorted and unique; nil without hints.
func hintZones(h *discoveryv1.EndpointHints) []string {
	if h == nil || len(h.ForZones) == 0 {
		return nil
	}
	zones := make([]string, 0, len(h.ForZones))
	for _, z := range h.ForZones {
		if z.Name != "" {
			zones = append(zones, z.Name)
		}
	}
	slices.Sort(zones)
	return slices.Clip(slices.Compact(zones))
}

// serving sorts endpoints by address, keeps one per address (the one in
// the best health: a pod can briefly be in two slices while they are
// rebalanced) and drops the evicted ones. Endpoints that still serve while
// they terminate (warning, with serve_terminating) are kept only when no
// endpoint is ready, as kube-proxy does: new connections go to ready pods,
// and a Service whose pods are all draining keeps working until they stop.
//
// Evicted endpoints are not handed over as critical rows: Kubernetes
// readiness is authoritative, and the registry's panic threshold would
// serve critical rows again once too few endpoints are ready, which
// neither kube-proxy nor Linkerd ever does with a pod that is not ready.
// Recovery costs nothing extra: a pod turning ready is a slice update that
// rebuilds the group anyway.
func serving(eps []discovery.Endpoint) []discovery.Endpoint {
	slices.SortStableFunc(eps, func(a, b discovery.Endpoint) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(healthRank(b.Health), healthRank(a.Health)))
	})
	eps = slices.CompactFunc(eps, func(a, b discovery.Endpoint) bool { return a.Addr == b.Addr })
	ready := slices.ContainsFunc(eps, func(e discovery.Endpoint) bool { return e.Health == discovery.HealthPassing })
	return slices.DeleteFunc(eps, func(e discovery.Endpoint) bool {
		return !e.Health.Serving() || ready && e.Health != discovery.HealthPassing
	})
}

func healthRank(h discovery.Health) int {
	switch h {
	case discovery.HealthPassing:
		return 3
	case discovery.HealthWarning:
		return 2
	case discovery.HealthUnknown:
		return 1
	}
	return 0
}

// opaquePorts reads the Service's opaque-ports annotation: port numbers,
// ranges and Service port names, comma-separated. Malformed parts are
// reported and ignored. Without the annotation, the default opaque ports
// apply, as with Linkerd; an empty annotation means none.
func (b *builder) opaquePorts(svc *corev1.Service, bad problem) map[uint16]bool {
	v, ok := svc.Annotations[OpaquePortsAnnotation]
	if !ok {
		var out map[uint16]bool
		for _, sp := range svc.Spec.Ports {
			if sp.Port > 0 && sp.Port <= 65535 && b.defaultOpaque[uint16(sp.Port)] {
				if out == nil {
					out = map[uint16]bool{}
				}
				out[uint16(sp.Port)] = true
			}
		}
		return out
	}
	if strings.TrimSpace(v) == "" {
		return nil
	}
	out := map[uint16]bool{}
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		named := false
		for _, sp := range svc.Spec.Ports {
			if sp.Name != "" && sp.Name == part && sp.Port > 0 && sp.Port <= 65535 {
				out[uint16(sp.Port)], named = true, true
			}
		}
		if named {
			continue
		}
		from, to, ok := portRange(part)
		if !ok {
			bad(objName("service", svc.Namespace, svc.Name), fmt.Sprintf("annotation %s: %q is not a port, a range of ports or a port name", OpaquePortsAnnotation, part))
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if p := sp.Port; p >= int32(from) && p <= int32(to) {
				out[uint16(p)] = true
			}
		}
	}
	return out
}

// validHostname accepts a DNS label, as the API server does for endpoint hostnames.
func validHostname(h string) bool {
	if h == "" || len(h) > 63 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' && i > 0 && i < len(h)-1) {
			return false
		}
	}
	return true
}

func objName(kind, namespace, name string) string {
	return kind + " " + namespace + "/" + name
}
