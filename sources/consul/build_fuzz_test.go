package consul

import (
	"net/netip"
	"testing"

	"github.com/hashicorp/consul/api"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

// fuzzBytes is the fuzz input, with the values Consul's API carries.
type fuzzBytes struct{ sinktest.FuzzInput }

func (b *fuzzBytes) int() int { return int(int16(b.U16())) }

func (b *fuzzBytes) addr(extra string) string {
	switch b.Byte() % 12 {
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
	}
	return sinktest.Pick(b, "", "10.0.0.1", "::ffff:10.0.0.1", "fd00::1", "FD00::1", "fe80::1%eth0",
		"host.example", "0.0.0.0", " 10.0.0.1", "::ffff:10.0.0.1%x")
}

// fuzzBuilders are builders over the settings that change what build
// does: tag subsets, naming templates with and without the port, zones,
// warning_is_healthy, connect, instance filters.
func fuzzBuilders(tb testing.TB) []*builder {
	configs := []string{
		"",
		"zone: {node_meta: zone, service_meta: az}\nwarning_is_healthy: true",
		"naming: {tag_subsets: [v1, V1, blue]}\ntags: [v1]",
		`naming: {authority: "{{.Service}}.{{.Datacenter}}.internal:{{.Port}}", tag_authority: "{{.Service}}-{{.Tag}}.{{.Datacenter}}.internal"}`,
		"connect_endpoints: true\ninstance_filter: 'Service.Port == 1'\nnamespace: team-a\npartition: p1",
	}
	var out []*builder
	for _, c := range configs {
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte("address: 127.0.0.1:1\n"+c), &doc); err != nil {
			tb.Fatal(err)
		}
		src, err := newFromNode(doc.Content[0], discovery.BuildContext{Name: "consul", BaseDir: tb.TempDir()})
		if err != nil {
			tb.Fatalf("%s: %v", c, err)
		}
		out = append(out, &builder{s: src.(*Source).s, trustDomains: map[string]string{"dc1": "td.consul", "dc2": "not a trust domain!"}})
	}
	return out
}

// FuzzBuild feeds health entries, built from the fuzz input, through the
// builder: it must not panic, and the group it returns must be well-formed
// and accepted by the registry.
func FuzzBuild(f *testing.F) {
	builders := fuzzBuilders(f)
	f.Add([]byte{}, "", "", "")
	f.Add([]byte("\x00\x00\x03\x01\x03\x00\x50\x02\x00\x01\x00\x01\x00\x01\x02\x00\x01\x01\x02\x01\x00\x00\x00"), "10.1.2.3", "v1", "passing")
	f.Add([]byte("\x01\x01\x05\x02\x04\x00\x01\x1f\x90\x03\x01\x02\x00\x00\x00\x05\x02\x03\x04\x01\x02\x01\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"), "fd00::7", "Blue", "warning")
	f.Add([]byte("\x02\x04\x06\x03\x00\x05\x00\x00\x00\x04\x02\x01\x05\x07\x03\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10"), "fe80::1%eth0", "has.dot", "maintenance")
	f.Add([]byte("\x03\x03\x07\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"), "::ffff:1.2.3.4", "", "bogus")
	f.Fuzz(func(t *testing.T, data []byte, extraAddr, extraTag, extraStatus string) {
		in := fuzzBytes{sinktest.FuzzInput(data)}
		b := builders[int(in.Byte())%len(builders)]
		dc := sinktest.Pick(&in, "dc1", "dc2", "dc3")
		service := sinktest.Pick(&in, "web", "Web", "api-v2")
		var entries []*api.ServiceEntry
		for range in.Byte() % 8 {
			if in.Byte()%16 == 0 {
				entries = append(entries, sinktest.Pick(&in, nil, &api.ServiceEntry{}, &api.ServiceEntry{Node: &api.Node{}}))
				continue
			}
			svc := &api.AgentService{
				ID:      sinktest.Pick(&in, "a", "b", "c"),
				Service: service,
				Address: in.addr(extraAddr),
				Port:    sinktest.Pick(&in, 0, -1, 80, 8080, 65535, 65536, in.int()),
				Weights: api.AgentWeights{Passing: in.int(), Warning: in.int()},
				Kind:    sinktest.Pick(&in, api.ServiceKindTypical, api.ServiceKindConnectProxy, api.ServiceKindMeshGateway, "weird"),
			}
			for range in.Byte() % 4 {
				svc.Tags = append(svc.Tags, sinktest.Pick(&in, "v1", "V1", "v2", "blue", "has.dot", "", extraTag))
			}
			if in.Byte()%2 == 1 {
				svc.Meta = map[string]string{"az": sinktest.Pick(&in, "", "z1", extraTag)}
			}
			switch in.Byte() % 4 {
			case 1:
				svc.Connect = &api.AgentServiceConnect{Native: in.Byte()%2 == 1}
			case 2:
				svc.Proxy = &api.AgentServiceConnectProxyConfig{DestinationServiceName: sinktest.Pick(&in, "", "web", "db", extraTag)}
			}
			svc.Namespace = sinktest.Pick(&in, "", "default", "ns/x")
			svc.Partition = sinktest.Pick(&in, "", "default", "p2")
			e := &api.ServiceEntry{
				Node:    &api.Node{Node: sinktest.Pick(&in, "n1", "n2", ""), Address: in.addr(extraAddr)},
				Service: svc,
			}
			if in.Byte()%2 == 1 {
				e.Node.Meta = map[string]string{"zone": sinktest.Pick(&in, "", "z2", extraTag)}
			}
			for range in.Byte() % 4 {
				if in.Byte()%8 == 0 {
					e.Checks = append(e.Checks, nil)
					continue
				}
				e.Checks = append(e.Checks, &api.HealthCheck{
					CheckID: sinktest.Pick(&in, "serfHealth", "c", api.NodeMaint, api.ServiceMaintPrefix+"a", ""),
					Status:  sinktest.Pick(&in, api.HealthPassing, api.HealthWarning, api.HealthCritical, api.HealthMaint, api.HealthAny, "", extraStatus),
				})
			}
			entries = append(entries, e)
		}

		g, _ := b.build(dc, service, entries)
		if g.Key != groupKey(dc, service) {
			t.Fatalf("group key %q, want %q", g.Key, groupKey(dc, service))
		}
		sinktest.CheckGroup(t, g)
		for _, s := range g.Services {
			for _, e := range s.Endpoints {
				if e.Addr.Addr().Is4In6() { // this source unmaps what Consul reports
					t.Fatalf("%s: endpoint address %v is IPv4-mapped IPv6", s.Authority, e.Addr)
				}
			}
		}
	})
}
