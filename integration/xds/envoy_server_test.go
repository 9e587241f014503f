//go:build integration

package xds

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
)

// TestEnvoyBootstrapAgainstTributary: what the documented Envoy asks for
// with its own node and ADS config — every cluster (CDS wildcard), then
// the endpoints of the cluster its listener routes to — a real Tributary
// answers: web.demo:8080 as an EDS cluster over ADS, and its endpoints in
// localities by zone, the node's zone first.
func TestEnvoyBootstrapAgainstTributary(t *testing.T) {
	t.Parallel()
	b := envoyBootstrap(t)
	tr := startTributary(t, map[string][]endpointSpec{
		webAuthority:    {{addr: "10.1.0.1:8080", zone: "zone-a"}, {addr: "10.1.0.2:8080", zone: "zone-b"}},
		"api.demo:9000": {{addr: "10.3.0.1:9000", zone: "zone-b"}},
	}, "")
	node := proto.Clone(b.GetNode()).(*corev3.Node)
	s := openADS(t, tr.XDS, node)
	if !b.GetDynamicResources().GetAdsConfig().GetSetNodeOnFirstMessageOnly() {
		t.Fatal("the bootstrap sends the node on every message; this test assumes the first only")
	}

	s.request(typeCluster, "", "", nil, "")
	r := s.nextOf(typeCluster)
	cs := clusters(t, r)
	web := cs[webAuthority]
	if web == nil || cs["api.demo:9000"] == nil {
		t.Fatalf("CDS wildcard for Envoy: clusters %v; want web.demo:8080 and api.demo:9000", mapKeysSorted(cs))
	}
	if web.GetType() != clusterv3.Cluster_EDS || web.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
		t.Fatalf("cluster web.demo:8080: type %v, eds config %v; want EDS over ADS", web.GetType(), web.GetEdsClusterConfig())
	}
	s.ack(r, nil)

	// The name the listener's route uses is a cluster Tributary serves.
	edsName := web.GetEdsClusterConfig().GetServiceName()
	if edsName != webAuthority {
		t.Fatalf("cluster %s has EDS service_name %q; want the authority", webAuthority, edsName)
	}
	s.request(typeCLA, "", "", []string{edsName}, "")
	r = s.nextOf(typeCLA)
	cla := clas(t, r)[edsName]
	if cla == nil {
		t.Fatalf("no ClusterLoadAssignment %s", edsName)
	}
	// The node is in zone-a: zone-a's locality has the best priority (0).
	if !sameAddrs(cla, "zone-a/0/10.1.0.1:8080", "zone-b/1/10.1.0.2:8080") {
		t.Errorf("CLA for a node in zone-a: %v; want zone-a at priority 0, zone-b at 1", addrs(cla))
	}
	s.ack(r, []string{edsName})
}

func mapKeysSorted[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
