//go:build integration

package xds

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	// The typed_config messages the bootstrap names, for protojson's Any.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// envoyBootstrap reads examples/envoy/bootstrap.yaml (docs/xds.md's Envoy
// bootstrap) into go-control-plane's Bootstrap, as Envoy reads it: YAML
// to JSON, then the proto3 JSON mapping, unknown fields rejected.
func envoyBootstrap(t *testing.T) *bootstrapv3.Bootstrap {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(self), "..", "..", "examples", "envoy", "bootstrap.yaml")
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &b); err != nil {
		t.Fatalf("%s is not an Envoy v3 bootstrap: %v", path, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s does not validate: %v", path, err)
	}
	return &b
}

// TestEnvoyBootstrapShape: the documented bootstrap is an Envoy v3
// bootstrap whose clusters come over ADS from the static cluster that
// points at Tributary, with a node in a zone and a listener that routes to
// a cluster Tributary serves.
func TestEnvoyBootstrapShape(t *testing.T) {
	t.Parallel()
	b := envoyBootstrap(t)
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType() != corev3.ApiConfigSource_GRPC || ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		t.Errorf("ads_config: api_type %v, transport %v; want GRPC over V3", ads.GetApiType(), ads.GetTransportApiVersion())
	}
	if len(ads.GetGrpcServices()) != 1 || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "tributary_xds" {
		t.Fatalf("ads_config should name the static cluster tributary_xds: %v", ads.GetGrpcServices())
	}
	if b.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Error("cds_config should come over ADS")
	}
	if b.GetNode().GetId() == "" || b.GetNode().GetLocality().GetZone() == "" {
		t.Errorf("node should have an id and a zone: %v", b.GetNode())
	}
	var xdsCluster *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "tributary_xds" {
			xdsCluster = c
		}
	}
	if xdsCluster == nil || len(xdsCluster.GetLoadAssignment().GetEndpoints()) == 0 {
		t.Fatal("no static cluster tributary_xds with an address")
	}
	if _, ok := xdsCluster.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; !ok {
		t.Error("tributary_xds must speak HTTP/2 (gRPC): no HttpProtocolOptions")
	}
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 {
		t.Fatalf("want one static listener, got %d", len(ls))
	}
}
