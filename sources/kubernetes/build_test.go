package kubernetes

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tributary-mesh/tributary/discovery"
)

// Object builders shared by the unit tests.

func ptr[T any](v T) *T { return &v }

func svc(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Ports: ports}}
}

func sport(name string, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, TargetPort: intstr.FromString(name), Protocol: corev1.ProtocolTCP}
}

func eport(name string, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Port: ptr(port), Protocol: ptr(corev1.ProtocolTCP)}
}

func slice(ns, svcName, name string, family discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svcName}},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
}

type epOpt func(*discoveryv1.Endpoint)

func endpoint(addr string, opts ...epOpt) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func conds(ready, serving, terminating *bool) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.Conditions = discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

func withPod(ns, name string, uid types.UID) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name, UID: uid}
	}
}

func withHostname(h string) epOpt { return func(e *discoveryv1.Endpoint) { e.Hostname = &h } }
func withZone(z string) epOpt     { return func(e *discoveryv1.Endpoint) { e.Zone = &z } }
func withHints(zones ...string) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.Hints = &discoveryv1.EndpointHints{}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
	}
}

func pod(ns, name, sa string, lbls map[string]string, owner *metav1.OwnerReference) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: lbls},
		Spec:       corev1.PodSpec{ServiceAccountName: sa},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return p
}

func controller(kind, name string) *metav1.OwnerReference {
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: kind, Name: name, UID: "owner", Controller: ptr(true)}
}

func pods(ps ...*corev1.Pod) podLookup {
	return func(ns, name string) *corev1.Pod {
		for _, p := range ps {
			if p.Namespace == ns && p.Name == name {
				return p
			}
		}
		return nil
	}
}

func testBuilder() builder {
	return builder{
		cluster:     "east",
		domain:      "cluster.local",
		mode:        IdentityLinkerd,
		trustDomain: "cluster.local",
		controlNS:   "linkerd",
		idSelector:  labels.SelectorFromSet(labels.Set{LinkerdControlPlaneLabel: "linkerd"}),
	}
}

// describe renders services compactly: "host:port[opaque] = addr(health) ...".
func describe(services []discovery.Service) []string {
	var out []string
	for _, s := range services {
		var eps []string
		for _, e := range s.Endpoints {
			eps = append(eps, fmt.Sprintf("%s(%s)", e.Addr, e.Health))
		}
		op := ""
		if s.Opaque {
			op = "[opaque]"
		}
		out = append(out, fmt.Sprintf("%s%s = %s", s.Authority, op, strings.Join(eps, " ")))
	}
	return out
}

type problems []string

func (p *problems) report(obj, msg string) { *p = append(*p, obj+": "+msg) }

func TestBuildAuthoritiesAndNamedPorts(t *testing.T) {
	b := testBuilder()
	s := svc("prod", "web", sport("http", 80), sport("admin", 9090), sport("grpc", 9000))
	s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	// Two slices, as two pod versions: the named target port resolves to
	// different numbers per slice. No slice publishes grpc.
	a := slice("prod", "web", "web-a", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080), eport("admin", 9091)},
		endpoint("10.0.0.2"), endpoint("10.0.0.1"))
	c := slice("prod", "web", "web-b", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8081)},
		endpoint("10.0.0.3"))
	var bad problems
	got := describe(b.build(s, []*discoveryv1.EndpointSlice{a, c}, nil, bad.report))
	want := []string{
		"web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing) 10.0.0.2:8080(passing) 10.0.0.3:8081(passing)",
		"web.prod.svc.cluster.local:9000 = ",
		"web.prod.svc.cluster.local:9090 = 10.0.0.1:9091(passing) 10.0.0.2:9091(passing)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(bad) != 0 {
		t.Errorf("problems: %v", bad)
	}
}

func TestBuildUnnamedPortAndDomain(t *testing.T) {
	b := testBuilder()
	b.domain = "corp.example"
	s := svc("prod", "api", corev1.ServicePort{Port: 443, TargetPort: intstr.FromInt32(8443)})
	sl := slice("prod", "api", "api-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Port: ptr(int32(8443))}}, endpoint("10.0.0.1"))
	got := describe(b.build(s, []*discoveryv1.EndpointSlice{sl}, nil, func(string, string) {}))
	if want := []string{"api.prod.svc.corp.example:443 = 10.0.0.1:8443(passing)"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestBuildHealthFromConditions(t *testing.T) {
	yes, no := ptr(true), ptr(false)
	cases := []struct {
		name                       string
		ready, serving, term       *bool
		evict, serveTerm, drainKep discovery.Health
	}{
		{name: "ready", ready: yes, evict: discovery.HealthPassing, drainKep: discovery.HealthPassing},
		{name: "nil conditions mean ready", evict: discovery.HealthPassing, drainKep: discovery.HealthPassing},
		{name: "not ready", ready: no, serving: no, evict: discovery.HealthCritical, drainKep: discovery.HealthCritical},
		{name: "not ready, serving unknown", ready: no, evict: discovery.HealthCritical, drainKep: discovery.HealthCritical},
		{name: "terminating, serving", ready: no, serving: yes, term: yes, evict: discovery.HealthCritical, drainKep: discovery.HealthWarning},
		{name: "terminating, not serving", ready: no, serving: no, term: yes, evict: discovery.HealthCritical, drainKep: discovery.HealthCritical},
		{name: "terminating, serving unknown", ready: no, term: yes, evict: discovery.HealthCritical, drainKep: discovery.HealthWarning},
		{name: "ready yet terminating", ready: yes, serving: yes, term: yes, evict: discovery.HealthCritical, drainKep: discovery.HealthWarning},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := testBuilder()
			ec := discoveryv1.EndpointConditions{Ready: c.ready, Serving: c.serving, Terminating: c.term}
			if got := b.health(ec); got != c.evict {
				t.Errorf("default: %s, want %s", got, c.evict)
			}
			b.serveTerminating = true
			if got := b.health(ec); got != c.drainKep {
				t.Errorf("serve_terminating: %s, want %s", got, c.drainKep)
			}
		})
	}
}

func TestBuildServiceWithNoReadyEndpointsExists(t *testing.T) {
	b := testBuilder()
	s := svc("prod", "web", sport("http", 80))
	sl := slice("prod", "web", "web-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
		endpoint("10.0.0.1", conds(ptr(false), ptr(false), nil)))
	got := b.build(s, []*discoveryv1.EndpointSlice{sl}, nil, func(string, string) {})
	if want := []string{"web.prod.svc.cluster.local:80 = "}; !slices.Equal(describe(got), want) {
		t.Fatalf("a Service with only unready endpoints must be asserted without them: %q", describe(got))
	}
	// No slices at all: still asserted, with no endpoints.
	got = b.build(s, nil, nil, func(string, string) {})
	if want := []string{"web.prod.svc.cluster.local:80 = "}; !slices.Equal(describe(got), want) {
		t.Errorf("no slices: %q", describe(got))
	}
}

func TestBuildHeadlessHostnames(t *testing.T) {
	b := testBuilder()
	s := svc("db", "pg", sport("pg", 5432))
	s.Spec.ClusterIP = corev1.ClusterIPNone
	sl := slice("db", "pg", "pg-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("pg", 5432)},
		endpoint("10.0.0.1", withHostname("pg-0")), endpoint("10.0.0.2", withHostname("pg-1"), conds(ptr(false), nil, nil)),
		endpoint("10.0.0.3"))
	got := describe(b.build(s, []*discoveryv1.EndpointSlice{sl}, nil, func(string, string) {}))
	want := []string{
		"pg-0.pg.db.svc.cluster.local:5432 = 10.0.0.1:5432(passing)",
		"pg-1.pg.db.svc.cluster.local:5432 = ",
		"pg.db.svc.cluster.local:5432 = 10.0.0.1:5432(passing) 10.0.0.3:5432(passing)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestBuildAddressFamilies(t *testing.T) {
	s := svc("prod", "web", sport("http", 80))
	ports := []discoveryv1.EndpointPort{eport("http", 8080)}
	v4 := slice("prod", "web", "web-v4", discoveryv1.AddressTypeIPv4, ports, endpoint("10.0.0.1"))
	v6 := slice("prod", "web", "web-v6", discoveryv1.AddressTypeIPv6, ports, endpoint("fd00::1"))
	fqdn := slice("prod", "web", "web-fqdn", discoveryv1.AddressTypeFQDN, ports, endpoint("web.example.com"))
	b := testBuilder()
	nop := func(string, string) {}
	if got := describe(b.build(s, []*discoveryv1.EndpointSlice{v6, v4, fqdn}, nil, nop)); got[0] != "web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)" {
		t.Errorf("dual stack serves IPv4 by default: %q", got)
	}
	if got := describe(b.build(s, []*discoveryv1.EndpointSlice{v6, fqdn}, nil, nop)); got[0] != "web.prod.svc.cluster.local:80 = [fd00::1]:8080(passing)" {
		t.Errorf("IPv6 only: %q", got)
	}
	b.preferIPv6 = true
	if got := describe(b.build(s, []*discoveryv1.EndpointSlice{v4, v6}, nil, nop)); got[0] != "web.prod.svc.cluster.local:80 = [fd00::1]:8080(passing)" {
		t.Errorf("prefer_ipv6: %q", got)
	}
}

func TestBuildSkipsMalformedKeepsSiblings(t *testing.T) {
	b := testBuilder()
	s := svc("prod", "web", sport("http", 80))
	s.Annotations = map[string]string{OpaquePortsAnnotation: "abc, 80, 7-3"}
	sl := slice("prod", "web", "web-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
		endpoint("10.0.0.1"),
		endpoint("not-an-ip"),
		endpoint("fd00::1"), // IPv6 in an IPv4 slice
		endpoint("fe80::1%eth0"),
		discoveryv1.Endpoint{}, // no address
		endpoint("10.0.0.2"),
	)
	var bad problems
	got := describe(b.build(s, []*discoveryv1.EndpointSlice{sl}, nil, bad.report))
	if want := []string{"web.prod.svc.cluster.local:80[opaque] = 10.0.0.1:8080(passing) 10.0.0.2:8080(passing)"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if len(bad) != 6 {
		t.Errorf("want 6 problems reported (4 endpoints, 2 annotation parts), got %d:\n%s", len(bad), strings.Join(bad, "\n"))
	}
	// A slice port without a number contributes nothing; the Service still exists.
	sl2 := slice("prod", "web", "web-2", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{{Name: ptr("http")}}, endpoint("10.0.0.5"))
	if got := describe(b.build(s, []*discoveryv1.EndpointSlice{sl2}, nil, bad.report)); got[0] != "web.prod.svc.cluster.local:80[opaque] = " {
		t.Errorf("port without number: %q", got)
	}
}

func TestBuildExternalNameAndUDPOnly(t *testing.T) {
	b := testBuilder()
	ext := svc("prod", "ext", sport("http", 80))
	ext.Spec.Type = corev1.ServiceTypeExternalName
	ext.Spec.ExternalName = "example.com"
	if got := b.build(ext, nil, nil, func(string, string) {}); len(got) != 0 {
		t.Errorf("ExternalName: %q", describe(got))
	}
	udp := svc("prod", "dns", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
	if got := b.build(udp, nil, nil, func(string, string) {}); len(got) != 0 {
		t.Errorf("UDP only: %q", describe(got))
	}
}

func TestBuildDuplicateAddressKeepsHealthiest(t *testing.T) {
	b := testBuilder()
	s := svc("prod", "web", sport("http", 80))
	ports := []discoveryv1.EndpointPort{eport("http", 8080)}
	old := slice("prod", "web", "web-a", discoveryv1.AddressTypeIPv4, ports, endpoint("10.0.0.1", conds(ptr(false), ptr(false), nil)))
	nu := slice("prod", "web", "web-b", discoveryv1.AddressTypeIPv4, ports, endpoint("10.0.0.1"))
	for _, order := range [][]*discoveryv1.EndpointSlice{{old, nu}, {nu, old}} {
		got := describe(b.build(s, order, nil, func(string, string) {}))
		if want := "web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)"; got[0] != want {
			t.Errorf("got %q, want %q", got[0], want)
		}
	}
}

func TestBuildIdentityAndLabels(t *testing.T) {
	meshed := map[string]string{LinkerdControlPlaneLabel: "linkerd", podTemplateHashLabel: "7d9f8"}
	ps := pods(
		pod("prod", "web-7d9f8-a", "web", meshed, controller("ReplicaSet", "web-7d9f8")),
		pod("prod", "plain-b", "web", nil, controller("StatefulSet", "plain")),
		pod("prod", "nosa-c", "", meshed, nil),
		pod("prod", "rs-d", "web", map[string]string{LinkerdControlPlaneLabel: "linkerd", podTemplateHashLabel: "other"}, controller("ReplicaSet", "web-7d9f8")),
	)
	s := svc("prod", "web", sport("http", 80))
	sl := slice("prod", "web", "web-1", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
		endpoint("10.0.0.1", withPod("prod", "web-7d9f8-a", "uid-web-7d9f8-a"), withZone("z1"), withHints("z1", "z2", "z1")),
		endpoint("10.0.0.2", withPod("prod", "plain-b", "")),
		endpoint("10.0.0.3", withPod("prod", "nosa-c", "")),
		endpoint("10.0.0.4", withPod("prod", "gone-e", "")),
		endpoint("10.0.0.5", withPod("prod", "web-7d9f8-a", "uid-of-an-older-pod")),
		endpoint("10.0.0.6", withPod("prod", "rs-d", "")),
		endpoint("10.0.0.7"),
	)
	check := func(t *testing.T, b builder, wantID map[string]discovery.Identity) {
		t.Helper()
		got := b.build(s, []*discoveryv1.EndpointSlice{sl}, ps, func(string, string) {})
		if len(got) != 1 {
			t.Fatalf("services: %q", describe(got))
		}
		for _, e := range got[0].Endpoints {
			ip := e.Addr.Addr().String()
			if e.Identity != wantID[ip] {
				t.Errorf("%s: identity %+v, want %+v", ip, e.Identity, wantID[ip])
			}
		}
	}
	dns := "web.prod.serviceaccount.identity.linkerd.cluster.local"
	t.Run("linkerd", func(t *testing.T) {
		id := discovery.Identity{Kind: discovery.IdentityDNS, Name: dns, ServerName: dns}
		// Only meshed pods with a known service account; a reference to
		// another pod of the same name (UID mismatch) is not guessed.
		check(t, testBuilder(), map[string]discovery.Identity{"10.0.0.1": id, "10.0.0.6": id})
	})
	t.Run("spiffe", func(t *testing.T) {
		b := testBuilder()
		b.mode, b.trustDomain, b.idSelector = IdentitySPIFFE, "example.org", labels.Everything()
		server := "web.prod.serviceaccount.identity.linkerd.example.org"
		id := discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://example.org/ns/prod/sa/web", ServerName: server}
		check(t, b, map[string]discovery.Identity{"10.0.0.1": id, "10.0.0.2": id, "10.0.0.6": id})
		if _, err := discovery.ParseIdentity(id.Name, id.ServerName); err != nil {
			t.Errorf("the model rejects the identity: %v", err)
		}
	})
	t.Run("none", func(t *testing.T) {
		b := testBuilder()
		b.mode = IdentityNone
		check(t, b, nil)
	})
	t.Run("labels", func(t *testing.T) {
		b := testBuilder()
		got := b.build(s, []*discoveryv1.EndpointSlice{sl}, ps, func(string, string) {})
		byIP := map[string]discovery.Endpoint{}
		for _, e := range got[0].Endpoints {
			byIP[e.Addr.Addr().String()] = e
		}
		base := map[string]string{LabelCluster: "east", LabelNamespace: "prod", LabelService: "web"}
		with := func(kv ...string) map[string]string {
			m := map[string]string{}
			for k, v := range base {
				m[k] = v
			}
			for i := 0; i < len(kv); i += 2 {
				m[kv[i]] = kv[i+1]
			}
			return m
		}
		want := map[string]map[string]string{
			// Linkerd's names (the owner under its kind, control_plane_ns,
			// pod_template_hash), with Tributary's owner_kind/owner_name.
			"10.0.0.1": with(LabelPod, "web-7d9f8-a", LabelServiceAccount, "web", LabelOwnerKind, "Deployment", LabelOwnerName, "web",
				"deployment", "web", LabelControlPlaneNS, "linkerd", LabelPodTemplateHash, "7d9f8"),
			"10.0.0.2": with(LabelPod, "plain-b", LabelServiceAccount, "web", LabelOwnerKind, "StatefulSet", LabelOwnerName, "plain",
				"statefulset", "plain"),
			// No owner: the pod is its own (Linkerd's "pod" label); no
			// service account reads as "default", as Linkerd reports it.
			"10.0.0.3": with(LabelPod, "nosa-c", LabelServiceAccount, "default", LabelControlPlaneNS, "linkerd", LabelPodTemplateHash, "7d9f8"),
			"10.0.0.4": with(LabelPod, "gone-e"),
			"10.0.0.5": with(LabelPod, "web-7d9f8-a"),
			"10.0.0.6": with(LabelPod, "rs-d", LabelServiceAccount, "web", LabelOwnerKind, "ReplicaSet", LabelOwnerName, "web-7d9f8",
				"replicaset", "web-7d9f8", LabelControlPlaneNS, "linkerd", LabelPodTemplateHash, "other"),
			"10.0.0.7": with(),
		}
		for ip, w := range want {
			e := byIP[ip]
			if fmt.Sprint(e.Labels) != fmt.Sprint(w) {
				t.Errorf("%s labels:\n got %v\nwant %v", ip, e.Labels, w)
			}
		}
		if byIP["10.0.0.1"].Zone != "z1" || byIP["10.0.0.2"].Zone != "" {
			t.Errorf("zones: %q %q", byIP["10.0.0.1"].Zone, byIP["10.0.0.2"].Zone)
		}
		if got := byIP["10.0.0.1"].ForZones; !slices.Equal(got, []string{"z1", "z2"}) || byIP["10.0.0.2"].ForZones != nil {
			t.Errorf("hint zones: %v %v", got, byIP["10.0.0.2"].ForZones)
		}
	})
}

func TestBuildOutputAcceptedByTheModel(t *testing.T) {
	// Every authority the builder makes must parse back to itself.
	b := testBuilder()
	s := svc("prod", "web", sport("http", 80))
	sl := slice("prod", "web", "w", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("http", 8080)},
		endpoint("10.0.0.1", withHostname("Web-0")))
	for _, svc := range b.build(s, []*discoveryv1.EndpointSlice{sl}, nil, func(string, string) {}) {
		a, err := discovery.ParseAuthority(svc.Authority.String(), 0)
		if err != nil || a != svc.Authority {
			t.Errorf("%s parses as %s, %v", svc.Authority, a, err)
		}
		for _, e := range svc.Endpoints {
			if !e.Addr.IsValid() || e.Addr.Port() == 0 || e.Addr.Addr() != netip.MustParseAddr("10.0.0.1") {
				t.Errorf("endpoint %v", e.Addr)
			}
		}
	}
}

func TestBuildServeTerminatingFallsBackLikeKubeProxy(t *testing.T) {
	s := svc("prod", "web", sport("http", 80))
	ports := []discoveryv1.EndpointPort{eport("http", 8080)}
	draining := endpoint("10.0.0.2", conds(ptr(false), ptr(true), ptr(true)))
	stopped := endpoint("10.0.0.3", conds(ptr(false), ptr(false), ptr(true)))
	withReady := slice("prod", "web", "a", discoveryv1.AddressTypeIPv4, ports, endpoint("10.0.0.1"), draining, stopped)
	allDraining := slice("prod", "web", "a", discoveryv1.AddressTypeIPv4, ports, draining, stopped)
	nop := func(string, string) {}
	cases := []struct {
		name  string
		keep  bool
		slice *discoveryv1.EndpointSlice
		want  string
	}{
		{"evict, with a ready endpoint", false, withReady, "web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)"},
		{"evict, all draining", false, allDraining, "web.prod.svc.cluster.local:80 = "},
		{"keep, with a ready endpoint", true, withReady, "web.prod.svc.cluster.local:80 = 10.0.0.1:8080(passing)"},
		{"keep, all draining", true, allDraining, "web.prod.svc.cluster.local:80 = 10.0.0.2:8080(warning)"},
	}
	for _, c := range cases {
		b := testBuilder()
		b.serveTerminating = c.keep
		if got := describe(b.build(s, []*discoveryv1.EndpointSlice{c.slice}, nil, nop)); got[0] != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got[0], c.want)
		}
	}
}

func TestHashCoversEveryField(t *testing.T) {
	seed := maphash.MakeSeed()
	base := func() []discovery.Service {
		return []discovery.Service{{
			Authority: discovery.Authority{Host: "web.prod.svc.cluster.local", Port: 80},
			Endpoints: []discovery.Endpoint{{
				Addr:     netip.MustParseAddrPort("10.0.0.1:8080"),
				Zone:     "z1",
				Health:   discovery.HealthPassing,
				Identity: discovery.Identity{Kind: discovery.IdentityDNS, Name: "a", ServerName: "a"},
				Labels:   map[string]string{"pod": "p1", "service": "web"},
			}},
		}}
	}
	h0 := hashServices(seed, base())
	if hashServices(seed, base()) != h0 {
		t.Fatal("hash not deterministic")
	}
	mutations := map[string]func(s []discovery.Service){
		"host":        func(s []discovery.Service) { s[0].Authority.Host = "api.prod.svc.cluster.local" },
		"port":        func(s []discovery.Service) { s[0].Authority.Port = 81 },
		"opaque":      func(s []discovery.Service) { s[0].Opaque = true },
		"addr":        func(s []discovery.Service) { s[0].Endpoints[0].Addr = netip.MustParseAddrPort("10.0.0.2:8080") },
		"target port": func(s []discovery.Service) { s[0].Endpoints[0].Addr = netip.MustParseAddrPort("10.0.0.1:8081") },
		"weight":      func(s []discovery.Service) { s[0].Endpoints[0].Weight = 5 },
		"zone":        func(s []discovery.Service) { s[0].Endpoints[0].Zone = "z2" },
		"health":      func(s []discovery.Service) { s[0].Endpoints[0].Health = discovery.HealthWarning },
		"id kind":     func(s []discovery.Service) { s[0].Endpoints[0].Identity.Kind = discovery.IdentitySPIFFE },
		"id name":     func(s []discovery.Service) { s[0].Endpoints[0].Identity.Name = "b" },
		"server name": func(s []discovery.Service) { s[0].Endpoints[0].Identity.ServerName = "b" },
		"protocol":    func(s []discovery.Service) { s[0].Endpoints[0].Protocol = discovery.ProtocolOpaque },
		"transport":   func(s []discovery.Service) { s[0].Endpoints[0].OpaqueTransport = 4143 },
		"label value": func(s []discovery.Service) {
			s[0].Endpoints[0].Labels = map[string]string{"pod": "p2", "service": "web"}
		},
		"label key":   func(s []discovery.Service) { s[0].Endpoints[0].Labels = map[string]string{"pod": "p1", "svc": "web"} },
		"label gone":  func(s []discovery.Service) { s[0].Endpoints[0].Labels = map[string]string{"pod": "p1"} },
		"no endpoint": func(s []discovery.Service) { s[0].Endpoints = nil },
		"2nd service": func(s []discovery.Service) {},
	}
	for name, mutate := range mutations {
		s := base()
		mutate(s)
		if name == "2nd service" {
			s = append(s, discovery.Service{Authority: discovery.Authority{Host: "x", Port: 1}})
		}
		if hashServices(seed, s) == h0 {
			t.Errorf("%s: the hash did not change", name)
		}
	}
}
