package kubernetes

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

// fuzzBytes is the fuzz input, with the values Kubernetes objects carry.
type fuzzBytes struct{ sinktest.FuzzInput }

// optBool is nil, true or false.
func (b *fuzzBytes) optBool() *bool { return sinktest.Pick(b, (*bool)(nil), ptr(true), ptr(false)) }

func (b *fuzzBytes) optString(from ...string) *string {
	if b.Byte()%4 == 0 {
		return nil
	}
	return ptr(sinktest.Pick(b, from...))
}

func (b *fuzzBytes) port() int32 {
	switch b.Byte() % 8 {
	case 0:
		return 0
	case 1:
		return -1
	case 2:
		return 65536
	case 3:
		return 80
	case 4:
		return 8080
	default:
		return int32(b.U16())
	}
}

func (b *fuzzBytes) addr(extra string) string {
	switch b.Byte() % 16 {
	case 0:
		return extra
	case 1:
		return netip.AddrFrom4([4]byte{10, 0, 0, b.Byte() % 4}).String()
	case 2:
		var a [16]byte
		for i := range a {
			a[i] = b.Byte()
		}
		return netip.AddrFrom16(a).String()
	case 3:
		return netip.AddrFrom4([4]byte{b.Byte(), b.Byte(), b.Byte(), b.Byte()}).String()
	}
	return sinktest.Pick(b, "10.0.0.1", "10.0.0.2", "::ffff:10.0.0.1", "fd00::1", "FD00::1", "fd00::2",
		"fe80::1%eth0", "::ffff:10.0.0.1%eth0", "not-an-ip", "", "0.0.0.0", "::", "10.0.0.1 ", "010.0.0.1", "fe80::1%\x00", "1.2.3.4/32")
}

// FuzzBuild feeds a Service and its EndpointSlices, built from the fuzz
// input, through the builder: it must not panic, and what it returns must
// be well-formed and accepted by the registry.
func FuzzBuild(f *testing.F) {
	f.Add([]byte{}, "", "", "")
	f.Add([]byte("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19"), "80,8000-8100", "10.1.2.3", "web-0")
	f.Add([]byte("\x03\x02\x01\x00\x03\x05\x00\x00\x01\x02\x01\x03\x00\x04\x01\x01\x05\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09"), "1-65535", "fd00::9", "Web-1")
	f.Add([]byte("\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6\xf5\xf4\xf3\xf2\xf1\xf0\xef\xee\xed\xec\xeb\xea\xe9\xe8\xe7\xe6\xe5\xe4"), "x,0,5-3,70000", "fe80::1%eth0", "-bad")
	f.Add([]byte("\x02\x04\x00\x03\x03\x01\x01\x02\x01\x05\x01\x00\x00\x00\x02\x02\x00\x01\x01\x02\x02\x02\x03\x03\x03\x01\x02\x00\x01\x02"), "8080", "::ffff:10.0.0.2", "db-0")
	f.Fuzz(func(t *testing.T, data []byte, opaque, extraAddr, extraHost string) {
		in := fuzzBytes{sinktest.FuzzInput(data)}
		b := testBuilder()
		b.serveTerminating = in.Byte()%2 == 1
		b.preferIPv6 = in.Byte()%2 == 1
		b.mode = sinktest.Pick(&in, IdentityNone, IdentityLinkerd, IdentitySPIFFE, IdentityMode(""))
		if in.Byte()%2 == 1 {
			b.defaultOpaque = portSet(DefaultOpaquePorts, nil)
		}

		s := svc("ns", "web")
		s.Spec.Type = sinktest.Pick(&in, corev1.ServiceType(""), corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort,
			corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName, "Weird")
		if in.Byte()%2 == 1 {
			s.Annotations = map[string]string{OpaquePortsAnnotation: opaque}
		}
		if in.Byte()%2 == 1 {
			s.Spec.Selector = map[string]string{"app": "web"}
		}
		if in.Byte()%2 == 1 {
			s.Spec.ClusterIP = corev1.ClusterIPNone
		}
		portNames := []string{"", "http", "grpc", "HTTP", "a"}
		protocols := []corev1.Protocol{"", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, "tcp"}
		for range in.Byte() % 5 {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{
				Name: sinktest.Pick(&in, portNames...), Port: in.port(), Protocol: sinktest.Pick(&in, protocols...),
			})
		}

		var eps []*discoveryv1.EndpointSlice
		for i := range in.Byte() % 4 {
			sl := slice("ns", "web", fmt.Sprint("web-", i),
				sinktest.Pick(&in, discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN, ""), nil)
			for range in.Byte() % 4 {
				p := discoveryv1.EndpointPort{Name: in.optString(portNames...)}
				if in.Byte()%4 != 0 {
					p.Port = ptr(in.port())
				}
				if in.Byte()%4 != 0 {
					p.Protocol = ptr(sinktest.Pick(&in, protocols...))
				}
				sl.Ports = append(sl.Ports, p)
			}
			for range in.Byte() % 7 {
				e := discoveryv1.Endpoint{
					Conditions: discoveryv1.EndpointConditions{Ready: in.optBool(), Serving: in.optBool(), Terminating: in.optBool()},
					Hostname:   in.optString(extraHost, "web-0", "web-1", "WEB-0", "", "a.b", "-x"),
					Zone:       in.optString("z1", "z2", "", extraHost),
				}
				for range in.Byte() % 3 {
					e.Addresses = append(e.Addresses, in.addr(extraAddr))
				}
				if in.Byte()%2 == 1 {
					e.Hints = &discoveryv1.EndpointHints{}
					for range in.Byte() % 3 {
						e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: sinktest.Pick(&in, "z1", "z2", "", extraHost)})
					}
				}
				if in.Byte()%2 == 1 {
					e.TargetRef = &corev1.ObjectReference{
						Kind: sinktest.Pick(&in, "Pod", "Node", "", kindExternalWorkload), Namespace: sinktest.Pick(&in, "", "ns", "other"),
						Name: sinktest.Pick(&in, "p0", "p1", "", extraHost, "w0"), UID: sinktest.Pick(&in, types.UID(""), "u0", "u1"),
					}
				}
				sl.Endpoints = append(sl.Endpoints, e)
			}
			eps = append(eps, sl)
		}
		ps := []*corev1.Pod{
			pod("ns", "p0", "sa0", map[string]string{LinkerdControlPlaneLabel: "linkerd", podTemplateHashLabel: "abc"},
				controller("ReplicaSet", "web-abc")),
			pod("ns", "p1", "", nil, nil),
			pod("other", "p0", "sa1", map[string]string{LinkerdControlPlaneLabel: "linkerd"}, nil),
		}
		ps[0].UID = "u0"
		// Linkerd's annotations and proxy container, from the fuzz input.
		ps[0].Annotations = map[string]string{
			OpaquePortsAnnotation:      sinktest.Pick(&in, opaque, "8080", "http", ""),
			SkipInboundPortsAnnotation: sinktest.Pick(&in, opaque, "", "80"),
		}
		proxied(ps[0], sinktest.Pick(&in, extraAddr, "0.0.0.0:4143", "", "[::]:4144", ":4143"), in.Byte()%2 == 1)

		// An ExternalWorkload, selected by the Service or referred to.
		var wports []any
		for range in.Byte() % 4 {
			wports = append(wports, map[string]any{
				"name": sinktest.Pick(&in, "http", "grpc", "", proxyPortName), "port": int64(in.port()),
				"protocol": sinktest.Pick(&in, "TCP", "UDP", ""),
			})
		}
		var wips []any
		for range in.Byte() % 3 {
			wips = append(wips, map[string]any{"ip": in.addr(extraAddr)})
		}
		u := &unstructured.Unstructured{Object: map[string]any{
			"metadata": map[string]any{"namespace": "ns", "name": "w0", "uid": sinktest.Pick(&in, "", "u0", "u1"),
				"labels":      map[string]any{"app": "web"},
				"annotations": map[string]any{OpaquePortsAnnotation: sinktest.Pick(&in, opaque, "http", "")}},
			"spec": map[string]any{
				"meshTLS": map[string]any{
					"identity":   sinktest.Pick(&in, "spiffe://example.org/w0", "w0.ns.serviceaccount.identity.linkerd.cluster.local", "", "https://x", extraHost),
					"serverName": sinktest.Pick(&in, "w0.example.org", "w0.ns.serviceaccount.identity.linkerd.cluster.local", "", extraHost),
				},
				"ports": wports, "workloadIPs": wips,
			},
			"status": map[string]any{"conditions": []any{map[string]any{"type": "Ready", "status": sinktest.Pick(&in, "True", "False", "Unknown")}}},
		}}
		w, _ := workloadFromUnstructured(u)
		lk := workloads(w.(*externalWorkload))
		lk.pods = pods(ps...)

		out := b.buildWith(s, eps, lk, func(obj, msg string) {})
		sinktest.CheckGroup(t, discovery.Group{Key: "ns/svc", Services: out})
		for _, svc := range out {
			for _, e := range svc.Endpoints {
				if e.Identity.Kind != discovery.IdentityNone {
					if id, err := discovery.ParseIdentity(e.Identity.Name, e.Identity.ServerName); err != nil || id != e.Identity {
						t.Fatalf("%s: identity %+v is not one the model accepts: %v", e.Addr, e.Identity, err)
					}
				}
				if e.OpaqueTransport != 0 && e.Protocol != discovery.ProtocolOpaque {
					t.Fatalf("%s: opaque transport %d with protocol %q", e.Addr, e.OpaqueTransport, e.Protocol)
				}
			}
		}
	})
}
