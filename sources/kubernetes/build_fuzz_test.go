package kubernetes

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// fuzzBytes hands out fuzz input deterministically; zeros once it runs out.
type fuzzBytes []byte

func (b *fuzzBytes) byte() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

func (b *fuzzBytes) u16() uint16 { return uint16(b.byte())<<8 | uint16(b.byte()) }

func pick[T any](b *fuzzBytes, from ...T) T { return from[int(b.byte())%len(from)] }

// optBool is nil, true or false.
func (b *fuzzBytes) optBool() *bool { return pick(b, (*bool)(nil), ptr(true), ptr(false)) }

func (b *fuzzBytes) optString(from ...string) *string {
	if b.byte()%4 == 0 {
		return nil
	}
	return ptr(pick(b, from...))
}

func (b *fuzzBytes) port() int32 {
	switch b.byte() % 8 {
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
		return int32(b.u16())
	}
}

func (b *fuzzBytes) addr(extra string) string {
	switch b.byte() % 16 {
	case 0:
		return extra
	case 1:
		return netip.AddrFrom4([4]byte{10, 0, 0, b.byte() % 4}).String()
	case 2:
		var a [16]byte
		for i := range a {
			a[i] = b.byte()
		}
		return netip.AddrFrom16(a).String()
	case 3:
		return netip.AddrFrom4([4]byte{b.byte(), b.byte(), b.byte(), b.byte()}).String()
	}
	return pick(b, "10.0.0.1", "10.0.0.2", "::ffff:10.0.0.1", "fd00::1", "FD00::1", "fd00::2",
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
		in := fuzzBytes(data)
		b := testBuilder()
		b.serveTerminating = in.byte()%2 == 1
		b.preferIPv6 = in.byte()%2 == 1
		b.mode = pick(&in, IdentityNone, IdentityLinkerd, IdentitySPIFFE, IdentityMode(""))

		s := svc("ns", "web")
		s.Spec.Type = pick(&in, corev1.ServiceType(""), corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort,
			corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName, "Weird")
		if in.byte()%2 == 1 {
			s.Annotations = map[string]string{OpaquePortsAnnotation: opaque}
		}
		portNames := []string{"", "http", "grpc", "HTTP", "a"}
		protocols := []corev1.Protocol{"", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, "tcp"}
		for range in.byte() % 5 {
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{
				Name: pick(&in, portNames...), Port: in.port(), Protocol: pick(&in, protocols...),
			})
		}

		var eps []*discoveryv1.EndpointSlice
		for i := range in.byte() % 4 {
			sl := slice("ns", "web", fmt.Sprint("web-", i),
				pick(&in, discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN, ""), nil)
			for range in.byte() % 4 {
				p := discoveryv1.EndpointPort{Name: in.optString(portNames...)}
				if in.byte()%4 != 0 {
					p.Port = ptr(in.port())
				}
				if in.byte()%4 != 0 {
					p.Protocol = ptr(pick(&in, protocols...))
				}
				sl.Ports = append(sl.Ports, p)
			}
			for range in.byte() % 7 {
				e := discoveryv1.Endpoint{
					Conditions: discoveryv1.EndpointConditions{Ready: in.optBool(), Serving: in.optBool(), Terminating: in.optBool()},
					Hostname:   in.optString(extraHost, "web-0", "web-1", "WEB-0", "", "a.b", "-x"),
					Zone:       in.optString("z1", "z2", "", extraHost),
				}
				for range in.byte() % 3 {
					e.Addresses = append(e.Addresses, in.addr(extraAddr))
				}
				if in.byte()%2 == 1 {
					e.Hints = &discoveryv1.EndpointHints{}
					for range in.byte() % 3 {
						e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: pick(&in, "z1", "z2", "", extraHost)})
					}
				}
				if in.byte()%2 == 1 {
					e.TargetRef = &corev1.ObjectReference{
						Kind: pick(&in, "Pod", "Node", ""), Namespace: pick(&in, "", "ns", "other"),
						Name: pick(&in, "p0", "p1", "", extraHost), UID: pick(&in, types.UID(""), "u0", "u1"),
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

		out := b.build(s, eps, pods(ps...), func(obj, msg string) {})
		checkServices(t, out)
		if _, err := cache.New().Apply("k", []discovery.Group{{Key: "ns/svc", Services: out}}); err != nil {
			t.Fatalf("the registry rejects the output: %v\n%v", err, describe(out))
		}
	})
}

// checkServices asserts the invariants every source's output must hold.
func checkServices(t *testing.T, out []discovery.Service) {
	t.Helper()
	for _, s := range out {
		a, err := discovery.ParseAuthority(s.Authority.String(), 0)
		if err != nil || a != s.Authority {
			t.Fatalf("authority %q does not parse back (%v, %v)", s.Authority, a, err)
		}
		seen := map[netip.AddrPort]bool{}
		for _, e := range s.Endpoints {
			if !e.Addr.IsValid() || e.Addr.Port() == 0 || e.Addr.Addr().Zone() != "" {
				t.Fatalf("%s: endpoint address %v is not a valid address and port", s.Authority, e.Addr)
			}
			k := netip.AddrPortFrom(e.Addr.Addr().Unmap(), e.Addr.Port())
			if seen[k] {
				t.Fatalf("%s: endpoint address %v twice", s.Authority, e.Addr)
			}
			seen[k] = true
		}
	}
}
