package xds

import (
	"fmt"
	"testing"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// envoyNode is a node as Envoy sends it: its build and its extensions.
func envoyNode() *corepb.Node {
	n := &corepb.Node{Id: "sidecar~10.0.0.1~web-1.demo~demo.svc.cluster.local", Cluster: "web",
		Locality: &corepb.Locality{Zone: "zone-a"}, UserAgentName: "envoy",
		UserAgentVersionType: &corepb.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corepb.BuildVersion{Metadata: nil}},
		ClientFeatures:       []string{"envoy.lb.does_not_support_overprovisioning", "xds.config.resource-ttl"}}
	for i := range 120 {
		n.Extensions = append(n.Extensions, &corepb.Extension{Name: fmt.Sprintf("envoy.filters.http.extension_%d", i), Category: "envoy.filters.http", TypeUrls: []string{"type.googleapis.com/envoy.extensions.filters.http.example.v3.Config"}})
	}
	return n
}

// TestNodeLater: a request decoded without its node is the request with
// no node, whatever the order of its fields; a malformed one is refused.
func TestNodeLater(t *testing.T) {
	c := codec{encoding.GetCodecV2("proto")}
	reqs := []proto.Message{
		&discoverypb.DiscoveryRequest{Node: envoyNode(), VersionInfo: "3", TypeUrl: TypeEndpoint, ResourceNames: []string{"a.demo:80", "b.demo:80"}, ResponseNonce: "7",
			ErrorDetail: &statuspb.Status{Code: 3, Message: "bad"}},
		&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, ResponseNonce: "7"}, // no node
		&discoverypb.DeltaDiscoveryRequest{Node: envoyNode(), TypeUrl: TypeEndpoint, ResourceNamesSubscribe: []string{"a.demo:80"},
			InitialResourceVersions: map[string]string{"a.demo:80": "r1"}, ResponseNonce: "2"},
	}
	for _, want := range reqs {
		b, err := proto.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		node := want.ProtoReflect().Descriptor().Fields().ByName("node")
		// The node last on the wire, as another encoder may put it.
		nodeWire, err := proto.Marshal(want.ProtoReflect().Get(node).Message().Interface())
		if err != nil {
			t.Fatal(err)
		}
		moved := withoutNode(t, want)
		if want.ProtoReflect().Has(node) {
			moved = protowire.AppendBytes(protowire.AppendTag(moved, node.Number(), protowire.BytesType), nodeWire)
		}
		for _, wire := range [][]byte{b, moved} {
			got := want.ProtoReflect().New().Interface()
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, &nodeLater{got}); err != nil {
				t.Fatal(err)
			}
			exp := proto.Clone(want)
			exp.ProtoReflect().Clear(node)
			if !proto.Equal(got, exp) {
				t.Errorf("decoded without the node:\n%v\nwant\n%v", got, exp)
			}
		}
	}
	bad := []byte{0x12, 0x10, 0x01} // the node (2), 16 bytes announced, 1 given
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bad)}, &nodeLater{&discoverypb.DiscoveryRequest{}}); err == nil {
		t.Error("a truncated request decoded")
	}
}

// BenchmarkDecodeACK: an Envoy ACK (node with 120 extensions) decoded as
// the first request is (node=decoded) and as the others are (node=skipped).
func BenchmarkDecodeACK(b *testing.B) {
	c := codec{encoding.GetCodecV2("proto")}
	wire, err := proto.Marshal(&discoverypb.DiscoveryRequest{Node: envoyNode(), VersionInfo: "41", TypeUrl: TypeEndpoint, ResourceNames: []string{"web.demo:80"}, ResponseNonce: "97"})
	if err != nil {
		b.Fatal(err)
	}
	for _, skip := range []bool{false, true} {
		b.Run(map[bool]string{false: "node=decoded", true: "node=skipped"}[skip], func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(wire)))
			for range b.N {
				r := new(discoverypb.DiscoveryRequest)
				var m any = r
				if skip {
					m = &nodeLater{r}
				}
				if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(wire)}, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// withoutNode is want marshalled without its node.
func withoutNode(t *testing.T, want proto.Message) []byte {
	m := proto.Clone(want)
	m.ProtoReflect().Clear(m.ProtoReflect().Descriptor().Fields().ByName("node"))
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
