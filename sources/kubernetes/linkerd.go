package kubernetes

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/tributary-mesh/tributary/discovery"
)

// Linkerd's conventions for the endpoints it serves, as its destination
// controller applies them (controller/api/destination/endpoint_translator.go
// and pkg/k8s/labels.go in linkerd/linkerd2). docs/wire-contract.md has the
// field-by-field comparison; the tests in linkerd_test.go hold every row.
const (
	// SkipInboundPortsAnnotation lists pod ports whose inbound traffic
	// bypasses the proxy: Linkerd gives them neither a protocol hint nor an
	// identity.
	SkipInboundPortsAnnotation = "config.linkerd.io/skip-inbound-ports"
	// DefaultOpaquePorts is Linkerd's default for workloads and Services
	// without an opaque-ports annotation (the chart's proxy.opaquePorts).
	DefaultOpaquePorts = "25,587,3306,4444,5432,6379,9300,11211"
	// DefaultInboundPort is the proxy's inbound port when its container
	// does not say otherwise.
	DefaultInboundPort = 4143

	proxyContainerName   = "linkerd-proxy" // the injected proxy container
	proxyPortName        = "linkerd-proxy" // an ExternalWorkload's port of its proxy
	envInboundListenAddr = "LINKERD2_PROXY_INBOUND_LISTEN_ADDR"
	envAdminListenAddr   = "LINKERD2_PROXY_ADMIN_LISTEN_ADDR"
	envControlListenAddr = "LINKERD2_PROXY_CONTROL_LISTEN_ADDR"
)

// Metric label keys with Linkerd's names, beside the ones in build.go.
const (
	LabelControlPlaneNS   = "control_plane_ns"
	LabelPodTemplateHash  = "pod_template_hash"
	LabelExternalWorkload = "external_workload"
)

// portTraits is what differs per port of one endpoint.
type portTraits struct {
	identity  discovery.Identity
	protocol  discovery.Protocol
	transport uint16 // opaque transport: the target proxy's inbound port
}

// podTraits applies Linkerd's rules for a pod endpoint on one target port:
//   - a pod meshed by any control plane (label linkerd.io/control-plane-ns
//     set) gets a protocol hint, unless the port skips the proxy:
//     opaque when the port is opaque, with the proxy's inbound port as the
//     opaque transport (not for the proxy's own admin and control ports);
//     h2 otherwise;
//   - the identity is the builder's (identity mode and pod selector), and
//     never on a port that skips the proxy.
func (b *builder) podTraits(pod *corev1.Pod, port uint16, bad problem) portTraits {
	if pod == nil {
		return portTraits{}
	}
	skipped := inPortList(pod.Annotations[SkipInboundPortsAnnotation], port, nil)
	t := portTraits{}
	if !skipped {
		t.identity = b.identity(pod)
	}
	if pod.Labels[LinkerdControlPlaneLabel] == "" || skipped {
		return t
	}
	opaque := b.defaultOpaque[port]
	if v, ok := pod.Annotations[OpaquePortsAnnotation]; ok {
		opaque = inPortList(v, port, func(name string) (uint16, bool) { return containerPort(pod, name) })
	}
	if !opaque {
		t.protocol = discovery.ProtocolH2
		return t
	}
	t.protocol = discovery.ProtocolOpaque
	proxy := proxyContainer(pod)
	if proxy == nil {
		return t // labelled as meshed but no proxy to tunnel through
	}
	inbound, err := listenPort(proxy, envInboundListenAddr, DefaultInboundPort)
	if err != nil {
		bad(objName("pod", pod.Namespace, pod.Name), err.Error())
		return t
	}
	for _, env := range []string{envAdminListenAddr, envControlListenAddr} {
		if p, err := listenPort(proxy, env, 0); err == nil && p != 0 && p == port {
			return t // the proxy's own port: no transport header
		}
	}
	t.transport = inbound
	return t
}

// proxyContainer is the pod's linkerd-proxy container (an init container
// when it runs as a native sidecar), or nil.
func proxyContainer(pod *corev1.Pod) *corev1.Container {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == proxyContainerName {
				return &cs[i]
			}
		}
	}
	return nil
}

// listenPort reads the port of an address variable of the proxy container
// ("0.0.0.0:4143", "[::]:4143"); def when the variable is not set.
func listenPort(c *corev1.Container, name string, def uint16) (uint16, error) {
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		ap, err := netip.ParseAddrPort(strings.TrimSpace(e.Value))
		if err != nil || ap.Port() == 0 {
			return 0, fmt.Errorf("container %s: %s=%q is not an IP:port", c.Name, name, e.Value)
		}
		return ap.Port(), nil
	}
	return def, nil
}

// containerPort finds a pod's container port by name, for opaque-ports
// annotations that name ports.
func containerPort(pod *corev1.Pod, name string) (uint16, bool) {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.Name == name && p.ContainerPort > 0 && p.ContainerPort <= 65535 {
					return uint16(p.ContainerPort), true
				}
			}
		}
	}
	return 0, false
}

// inPortList reports whether port is in a Linkerd port list
// ("3306,8000-8100,http"), resolving names through name (nil: no names).
// It is portSet without building the set: an endpoint's annotations are
// read on every rebuild, and a range can be all 65535 ports.
func inPortList(v string, port uint16, name func(string) (uint16, bool)) bool {
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if name != nil {
			if p, ok := name(part); ok {
				if p == port {
					return true
				}
				continue
			}
		}
		if lo, hi, ok := portRange(part); ok && lo <= port && port <= hi {
			return true
		}
	}
	return false
}

// portSet reads a Linkerd port list ("3306,8000-8100,http"): numbers,
// ranges, and names resolved through names. Parts that are none of these
// are ignored, as Linkerd ignores them (the Service annotation's are
// reported by opaquePorts).
func portSet(v string, names map[string]uint16) map[uint16]bool {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	out := map[uint16]bool{}
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if p, ok := names[part]; ok {
			out[p] = true
			continue
		}
		if lo, hi, ok := portRange(part); ok {
			for p := lo; ; p++ {
				out[uint16(p)] = true
				if p == hi {
					break
				}
			}
		}
	}
	return out
}

// portRange reads "8080" or "8000-8100".
func portRange(s string) (lo, hi uint16, ok bool) {
	a, b, isRange := strings.Cut(s, "-")
	from, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	to, err2 := from, error(nil)
	if isRange {
		to, err2 = strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	}
	if err1 != nil || err2 != nil || from == 0 || to < from {
		return 0, 0, false
	}
	return uint16(from), uint16(to), true
}

// podLabels adds Linkerd's pod metric labels to l: the owner under its
// lower-cased kind (deployment, statefulset, daemonset, k8s_job, …; a pod
// without exactly one owner is its own, under pod), serviceaccount
// ("default" when unset, as Linkerd reports it), control_plane_ns and
// pod_template_hash when the pod has those labels.
func podLabels(l map[string]string, pod *corev1.Pod) {
	k, v := linkerdOwner(pod)
	l[k] = v
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	l[LabelServiceAccount] = sa
	if cp := pod.Labels[LinkerdControlPlaneLabel]; cp != "" {
		l[LabelControlPlaneNS] = cp
	}
	if h := pod.Labels[podTemplateHashLabel]; h != "" {
		l[LabelPodTemplateHash] = h
	}
}

// linkerdOwner is the owner label of a pod as Linkerd names it. Linkerd
// reads the ReplicaSet to find its Deployment; the source, which does not
// watch ReplicaSets, recognizes the Deployment by the pod-template-hash
// suffix of the ReplicaSet's name, as ownerOf does.
func linkerdOwner(pod *corev1.Pod) (key, value string) {
	if len(pod.OwnerReferences) != 1 {
		return LabelPod, pod.Name
	}
	ref := pod.OwnerReferences[0]
	kind := strings.ToLower(ref.Kind)
	if kind == "replicaset" {
		if hash := pod.Labels[podTemplateHashLabel]; hash != "" {
			if d, ok := strings.CutSuffix(ref.Name, "-"+hash); ok && d != "" {
				return "deployment", d
			}
		}
	}
	if kind == "job" {
		kind = "k8s_job" // Linkerd's name: "job" is Prometheus's own label
	}
	return kind, ref.Name
}
