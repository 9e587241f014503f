package kubernetes

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tributary-mesh/tributary/discovery"
)

// proxied gives a pod Linkerd's injected proxy container, its inbound
// address in the environment when inbound is not empty.
func proxied(p *corev1.Pod, inbound string, native bool) *corev1.Pod {
	c := corev1.Container{Name: proxyContainerName, Env: []corev1.EnvVar{{Name: envAdminListenAddr, Value: "0.0.0.0:4191"}}}
	if inbound != "" {
		c.Env = append(c.Env, corev1.EnvVar{Name: envInboundListenAddr, Value: inbound})
	}
	app := corev1.Container{Name: "app", Ports: []corev1.ContainerPort{{Name: "mysql", ContainerPort: 3307}}}
	if native {
		p.Spec.InitContainers = []corev1.Container{c}
		p.Spec.Containers = []corev1.Container{app}
	} else {
		p.Spec.Containers = []corev1.Container{app, c}
	}
	return p
}

func annotate(p *corev1.Pod, kv ...string) *corev1.Pod {
	p.Annotations = map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		p.Annotations[kv[i]] = kv[i+1]
	}
	return p
}

// workloadObj is an ExternalWorkload as the API server returns it, through
// the informer's transform.
func workloadObj(t *testing.T, ns, name string, lbls map[string]string, identity, serverName string, ip string, ready string, ports ...map[string]any) *externalWorkload {
	t.Helper()
	spec := map[string]any{"meshTLS": map[string]any{"identity": identity, "serverName": serverName}}
	if ip != "" {
		spec["workloadIPs"] = []any{map[string]any{"ip": ip}}
	}
	var ps []any
	for _, p := range ports {
		ps = append(ps, p)
	}
	if ps != nil {
		spec["ports"] = ps
	}
	obj := map[string]any{
		"apiVersion": "workload.linkerd.io/v1beta1",
		"kind":       "ExternalWorkload",
		"metadata":   map[string]any{"namespace": ns, "name": name, "uid": "uid-" + name},
		"spec":       spec,
	}
	if ready != "" {
		obj["status"] = map[string]any{"conditions": []any{map[string]any{"type": "Ready", "status": ready}}}
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetLabels(lbls)
	out, err := workloadFromUnstructured(u)
	if err != nil {
		t.Fatal(err)
	}
	return out.(*externalWorkload)
}

func wport(name string, port int64) map[string]any {
	return map[string]any{"name": name, "port": port, "protocol": "TCP"}
}

func workloads(ws ...*externalWorkload) lookups {
	return lookups{
		workloads: func(ns, name string) *externalWorkload {
			for _, w := range ws {
				if w.Namespace == ns && w.Name == name {
					return w
				}
			}
			return nil
		},
		selected: func(ns string, sel labels.Selector) []*externalWorkload {
			var out []*externalWorkload
			for _, w := range ws {
				if w.Namespace == ns && sel.Matches(labels.Set(w.Labels)) {
					out = append(out, w)
				}
			}
			return out
		},
	}
}

func withWorkload(ns, name string) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.TargetRef = &corev1.ObjectReference{Kind: kindExternalWorkload, Namespace: ns, Name: name, UID: types.UID("uid-" + name)}
	}
}

// TestLinkerdParity holds the endpoint rows of the parity table in
// docs/wire-contract.md: for each kind of endpoint, the identity, protocol
// hint, opaque transport and metric labels Linkerd's destination
// controller sends (controller/api/destination/endpoint_translator.go),
// which the source must produce. Where Tributary deliberately differs, the
// row says so in `differs`, and the docs say why.
func TestLinkerdParity(t *testing.T) {
	meshedLabels := map[string]string{LinkerdControlPlaneLabel: "linkerd", podTemplateHashLabel: "5f6d7"}
	rs := controller("ReplicaSet", "web-5f6d7")
	dnsID := func(sa string) discovery.Identity {
		n := sa + ".prod.serviceaccount.identity.linkerd.cluster.local"
		return discovery.Identity{Kind: discovery.IdentityDNS, Name: n, ServerName: n}
	}
	spiffe := discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://example.org/vm/billing", ServerName: "billing.prod.vm.example.org"}
	base := map[string]string{LabelCluster: "east", LabelNamespace: "prod", LabelService: "web"}
	podL := func(name string, kv ...string) map[string]string {
		m := maps.Clone(base)
		m[LabelPod] = name
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	meshedPodLabels := func(name string) map[string]string {
		return podL(name, "deployment", "web", LabelServiceAccount, "web", LabelControlPlaneNS, "linkerd",
			LabelPodTemplateHash, "5f6d7", LabelOwnerKind, "Deployment", LabelOwnerName, "web")
	}
	ewLabels := func(name string, kv ...string) map[string]string {
		m := maps.Clone(base)
		m[LabelExternalWorkload] = name
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}

	rows := []struct {
		row      string // the parity table's row
		pod      *corev1.Pod
		workload *externalWorkload
		port     int32 // the endpoint's (target) port
		id       discovery.Identity
		proto    discovery.Protocol
		inbound  uint16
		labels   map[string]string
		differs  string
	}{
		{
			row:    "meshed pod",
			pod:    proxied(pod("prod", "web-5f6d7-a", "web", meshedLabels, rs), "0.0.0.0:4143", false),
			port:   8080,
			id:     dnsID("web"),
			proto:  discovery.ProtocolH2,
			labels: meshedPodLabels("web-5f6d7-a"),
		},
		{
			row:     "meshed pod, opaque port by the pod's annotation (named port), proxy on 4144",
			pod:     annotate(proxied(pod("prod", "web-5f6d7-b", "web", meshedLabels, rs), "0.0.0.0:4144", false), OpaquePortsAnnotation, "mysql"),
			port:    3307,
			id:      dnsID("web"),
			proto:   discovery.ProtocolOpaque,
			inbound: 4144,
			labels:  meshedPodLabels("web-5f6d7-b"),
		},
		{
			row:     "meshed pod, opaque by Linkerd's default ports, proxy as a native sidecar without the variable",
			pod:     proxied(pod("prod", "web-5f6d7-c", "web", meshedLabels, rs), "", true),
			port:    5432,
			id:      dnsID("web"),
			proto:   discovery.ProtocolOpaque,
			inbound: DefaultInboundPort,
			labels:  meshedPodLabels("web-5f6d7-c"),
		},
		{
			row:    "meshed pod, an annotation naming other ports turns the defaults off",
			pod:    annotate(proxied(pod("prod", "web-5f6d7-d", "web", meshedLabels, rs), "0.0.0.0:4143", false), OpaquePortsAnnotation, "9000-9001"),
			port:   5432,
			id:     dnsID("web"),
			proto:  discovery.ProtocolH2,
			labels: meshedPodLabels("web-5f6d7-d"),
		},
		{
			row:    "meshed pod, opaque port that is the proxy's own admin port: no transport",
			pod:    annotate(proxied(pod("prod", "web-5f6d7-e", "web", meshedLabels, rs), "0.0.0.0:4143", false), OpaquePortsAnnotation, "4191"),
			port:   4191,
			id:     dnsID("web"),
			proto:  discovery.ProtocolOpaque,
			labels: meshedPodLabels("web-5f6d7-e"),
		},
		{
			row:    "meshed pod, port in skip-inbound-ports: neither hint nor identity",
			pod:    annotate(proxied(pod("prod", "web-5f6d7-f", "web", meshedLabels, rs), "0.0.0.0:4143", false), SkipInboundPortsAnnotation, "8080"),
			port:   8080,
			labels: meshedPodLabels("web-5f6d7-f"),
		},
		{
			row:   "pod meshed by another control plane: h2, no identity",
			pod:   proxied(pod("prod", "other-0", "web", map[string]string{LinkerdControlPlaneLabel: "linkerd-b"}, controller("StatefulSet", "other")), "0.0.0.0:4143", false),
			port:  8080,
			proto: discovery.ProtocolH2,
			labels: podL("other-0", "statefulset", "other", LabelServiceAccount, "web", LabelControlPlaneNS, "linkerd-b",
				LabelOwnerKind, "StatefulSet", LabelOwnerName, "other"),
		},
		{
			row:  "unmeshed pod: no hint, no identity, even on a default opaque port",
			pod:  pod("prod", "plain-0", "plain", nil, &metav1.OwnerReference{Kind: "Job", Name: "batch-1"}),
			port: 5432,
			// Linkerd names the only owner even when it is not marked as
			// the controller; owner_kind/owner_name are controllers only.
			labels: podL("plain-0", "k8s_job", "batch-1", LabelServiceAccount, "plain"),
		},
		{
			row:     "pod not (yet) in the cache",
			port:    8080,
			labels:  podL("gone-0"),
			differs: "Linkerd drops the address until the pod is known; Tributary serves it without identity or hint",
		},
		{
			row:      "ExternalWorkload",
			workload: workloadObj(t, "prod", "billing-vm", map[string]string{"app": "web"}, spiffe.Name, spiffe.ServerName, "192.0.2.10", "True", wport("http", 8080)),
			port:     8080,
			id:       spiffe,
			proto:    discovery.ProtocolH2,
			labels:   ewLabels("billing-vm"),
		},
		{
			row:      "ExternalWorkload, opaque port, proxy port named linkerd-proxy",
			workload: workloadObj(t, "prod", "db-vm", map[string]string{"app": "web"}, spiffe.Name, spiffe.ServerName, "192.0.2.11", "True", wport("pg", 5432), wport(proxyPortName, 4200)),
			port:     5432,
			id:       spiffe,
			proto:    discovery.ProtocolOpaque,
			inbound:  4200,
			labels:   ewLabels("db-vm"),
		},
		{
			row:      "ExternalWorkload, opaque port, no linkerd-proxy port",
			workload: workloadObj(t, "prod", "db-vm2", map[string]string{"app": "web"}, spiffe.Name, spiffe.ServerName, "192.0.2.12", "True", wport("pg", 5432)),
			port:     5432,
			id:       spiffe,
			proto:    discovery.ProtocolOpaque,
			inbound:  DefaultInboundPort,
			labels:   ewLabels("db-vm2"),
		},
		{
			row:      "ExternalWorkload with a DNS-like identity",
			workload: workloadObj(t, "prod", "dns-vm", nil, "vm.prod.serviceaccount.identity.linkerd.cluster.local", "vm.prod.serviceaccount.identity.linkerd.cluster.local", "192.0.2.13", "True"),
			port:     8080,
			id:       dnsID("vm"),
			proto:    discovery.ProtocolH2,
			labels:   ewLabels("dns-vm"),
			differs:  "Linkerd sends any meshTLS identity as a URI, which the proxy cannot parse unless it is a SPIFFE ID; Tributary sends a DNS-like one as DNS-like",
		},
	}
	b := testBuilder()
	b.defaultOpaque = portSet(DefaultOpaquePorts, nil)
	for _, r := range rows {
		t.Run(r.row, func(t *testing.T) {
			ep := endpoint("10.1.0.1")
			lk := lookups{}
			switch {
			case r.pod != nil:
				withPod("prod", r.pod.Name, r.pod.UID)(&ep)
				lk.pods = pods(r.pod)
			case r.workload != nil:
				withWorkload("prod", r.workload.Name)(&ep)
				lk = workloads(r.workload)
			default:
				withPod("prod", "gone-0", "")(&ep)
				lk.pods = pods()
			}
			s := svc("prod", "web", corev1.ServicePort{Name: "p", Port: 80, TargetPort: intstr.FromInt32(r.port), Protocol: corev1.ProtocolTCP})
			sl := slice("prod", "web", "web-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("p", r.port)}, ep)
			var bad problems
			got := b.buildWith(s, []*discoveryv1.EndpointSlice{sl}, lk, bad.report)
			if len(got) != 1 || len(got[0].Endpoints) != 1 {
				t.Fatalf("services %q", describe(got))
			}
			e := got[0].Endpoints[0]
			if e.Identity != r.id {
				t.Errorf("identity %+v, want %+v", e.Identity, r.id)
			}
			if e.Protocol != r.proto {
				t.Errorf("protocol %q, want %q", e.Protocol, r.proto)
			}
			if e.OpaqueTransport != r.inbound {
				t.Errorf("opaque transport %d, want %d", e.OpaqueTransport, r.inbound)
			}
			if !maps.Equal(e.Labels, r.labels) {
				t.Errorf("labels\n got %v\nwant %v", e.Labels, r.labels)
			}
			if len(bad) > 0 {
				t.Errorf("problems: %v", bad)
			}
		})
	}
}

// Without Linkerd's external-workload controller, a Service's selector is
// matched against ExternalWorkloads; with it, its slices win.
func TestExternalWorkloadsBySelector(t *testing.T) {
	spiffeID, server := "spiffe://example.org/vm/a", "a.vm.example.org"
	sel := map[string]string{"app": "web"}
	vmA := workloadObj(t, "prod", "vm-a", map[string]string{"app": "web", corev1.LabelTopologyZone: "z1"}, spiffeID, server, "192.0.2.1", "True", wport("http", 8080))
	vmB := workloadObj(t, "prod", "vm-b", sel, spiffeID, server, "192.0.2.2", "False", wport("http", 8080))
	vmC := workloadObj(t, "prod", "vm-c", sel, spiffeID, server, "2001:db8::3", "True", wport("http", 8080))
	vmD := workloadObj(t, "prod", "vm-d", sel, spiffeID, server, "192.0.2.4", "True", wport("other", 9999))
	vmE := workloadObj(t, "prod", "vm-e", map[string]string{"app": "api"}, spiffeID, server, "192.0.2.5", "True", wport("http", 8080))
	vmF := workloadObj(t, "other", "vm-f", sel, spiffeID, server, "192.0.2.6", "True", wport("http", 8080))
	vmG := workloadObj(t, "prod", "vm-g", sel, spiffeID, server, "192.0.2.7", "True", wport("", 8080))
	lk := workloads(vmA, vmB, vmC, vmD, vmE, vmF, vmG)
	lk.pods = pods()
	b := testBuilder()

	named := svc("prod", "web", sport("http", 80))
	named.Spec.Selector = sel
	podSlice := slice("prod", "web", "web-pods", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
		endpoint("10.0.0.1", withPod("prod", "web-0", "")))

	var bad problems
	got := b.buildWith(named, []*discoveryv1.EndpointSlice{podSlice}, lk, bad.report)
	// vm-a: selected, ready, named port. vm-b: not ready. vm-c: IPv6 (the
	// Service is served in IPv4). vm-d: no port named http. vm-e: not
	// selected. vm-f: another namespace. vm-g: port 8080 unnamed, and the
	// target port is a name.
	if want := []string{"web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 192.0.2.1:8080(passing)"}; !slices.Equal(describe(got), want) {
		t.Errorf("named target port:\n got %q\nwant %q", describe(got), want)
	}
	for _, e := range got[0].Endpoints {
		if e.Addr.Addr().String() == "192.0.2.1" {
			if e.Identity.Name != spiffeID || e.Protocol != discovery.ProtocolH2 || e.Zone != "z1" || e.Labels[LabelExternalWorkload] != "vm-a" {
				t.Errorf("vm-a: %+v", e)
			}
		}
	}

	// A numeric target port must be one the workload documents.
	numeric := svc("prod", "web", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP})
	numeric.Spec.Selector = sel
	got = b.buildWith(numeric, nil, lk, bad.report)
	if want := []string{"web.prod.svc.cluster.local:80 = 192.0.2.1:8080(passing) 192.0.2.7:8080(passing)"}; !slices.Equal(describe(got), want) {
		t.Errorf("numeric target port:\n got %q\nwant %q", describe(got), want)
	}

	// Slices from Linkerd's controller win: the selector is not matched.
	managed := slice("prod", "web", "web-ew", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
		endpoint("192.0.2.2", withWorkload("prod", "vm-b")))
	managed.Labels[discoveryv1.LabelManagedBy] = ewControllerName
	got = b.buildWith(named, []*discoveryv1.EndpointSlice{podSlice, managed}, lk, bad.report)
	if want := []string{"web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 192.0.2.2:8080(passing)"}; !slices.Equal(describe(got), want) {
		t.Errorf("controller's slices:\n got %q\nwant %q", describe(got), want)
	}

	// Headless: each workload also under its name.
	headless := named.DeepCopy()
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	got = b.buildWith(headless, nil, lk, bad.report)
	if want := []string{
		"vm-a.web.prod.svc.cluster.local:80 = 192.0.2.1:8080(passing)",
		"vm-b.web.prod.svc.cluster.local:80 = ",
		"web.prod.svc.cluster.local:80 = 192.0.2.1:8080(passing)",
	}; !slices.Equal(describe(got), want) {
		t.Errorf("headless:\n got %s\nwant %s", strings.Join(describe(got), "\n"), strings.Join(want, "\n"))
	}

	// IPv6-only workloads make an IPv6 Service.
	only6 := workloads(vmC)
	got = b.buildWith(named, nil, only6, bad.report)
	if want := []string{"web.prod.svc.cluster.local:80 = [2001:db8::3]:8080(passing)"}; !slices.Equal(describe(got), want) {
		t.Errorf("IPv6:\n got %q\nwant %q", describe(got), want)
	}
	if len(bad) > 0 {
		t.Errorf("problems: %v", bad)
	}
}

func TestExternalWorkloadOwnerLabel(t *testing.T) {
	for _, c := range []struct {
		owners []metav1.OwnerReference
		want   map[string]string
	}{
		{nil, map[string]string{LabelExternalWorkload: "vm", LabelService: "web"}},
		{[]metav1.OwnerReference{{Kind: "VMGroup", Name: "billing"}}, map[string]string{LabelExternalWorkload: "vm", LabelService: "web", "vmgroup": "billing"}},
		{[]metav1.OwnerReference{{Kind: "Service", Name: "other"}}, map[string]string{LabelExternalWorkload: "vm", LabelService: "web"}},
		{[]metav1.OwnerReference{{Kind: "A", Name: "a"}, {Kind: "B", Name: "b"}}, map[string]string{LabelExternalWorkload: "vm", LabelService: "web"}},
	} {
		w := &externalWorkload{ObjectMeta: metav1.ObjectMeta{Name: "vm", OwnerReferences: c.owners}}
		l := map[string]string{LabelService: "web"}
		workloadLabels(l, w)
		if !maps.Equal(l, c.want) {
			t.Errorf("owners %v: %v, want %v", c.owners, l, c.want)
		}
	}
}

func TestExternalWorkloadParsing(t *testing.T) {
	w := workloadObj(t, "prod", "vm", nil, "spiffe://x/y", "", "not-an-ip", "Unknown", map[string]any{"port": int64(70000)})
	if w.ready || len(w.ips) != 0 || len(w.ports) != 0 || len(w.problems) != 2 {
		t.Errorf("%+v", w)
	}
	// A SPIFFE identity without a server name is refused, never sent.
	var bad problems
	b := testBuilder()
	if tr := b.workloadTraits(w, 80, bad.report); tr.identity != (discovery.Identity{}) || len(bad) != 1 {
		t.Errorf("identity %+v, problems %v", tr.identity, bad)
	}
	// identity: none applies to workloads too.
	b.mode = IdentityNone
	ok := workloadObj(t, "prod", "vm", nil, "spiffe://x/y", "y.x", "192.0.2.1", "True")
	if tr := b.workloadTraits(ok, 80, bad.report); tr.identity != (discovery.Identity{}) {
		t.Errorf("identity none: %+v", tr.identity)
	}
	// Idempotent: the informer may transform an object twice.
	again, _ := workloadFromUnstructured(ok)
	if again != any(ok) {
		t.Error("a parsed workload must pass through")
	}
	if got := fmt.Sprint(ok.ips); got != "[192.0.2.1]" {
		t.Errorf("ips %s", got)
	}
}

func TestInPortList(t *testing.T) {
	names := func(n string) (uint16, bool) {
		if n == "mysql" {
			return 3306, true
		}
		return 0, false
	}
	for _, c := range []struct {
		list string
		port uint16
		want bool
	}{
		{"3306", 3306, true},
		{" 25 , 3306 ", 25, true},
		{"8000-8100", 8000, true},
		{"8000-8100", 8100, true},
		{"8000-8100", 8101, false},
		{"1-65535", 65535, true},
		{"mysql", 3306, true},
		{"mysql", 3307, false},
		{"junk, 9-3, 0, 70000, 443", 443, true},
		{"junk", 0, false},
		{"", 80, false},
	} {
		set := portSet(c.list, map[string]uint16{"mysql": 3306})
		if got := inPortList(c.list, c.port, names); got != c.want || set[c.port] != c.want {
			t.Errorf("%q has %d: inPortList %v, portSet %v, want %v", c.list, c.port, got, set[c.port], c.want)
		}
	}
}
