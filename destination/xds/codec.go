package xds

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"

	// The proto codec registers itself; codec delegates to it.
	_ "google.golang.org/grpc/encoding/proto"
)

// ServerOptions are the gRPC server options the xDS server needs: a codec
// that sends pre-encoded responses as they are (SotW responses are written
// from resources marshalled once per change) and everything else as
// protobuf.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec{encoding.GetCodecV2("proto")})}
}

type codec struct{ encoding.CodecV2 }

// rawResponse is a DiscoveryResponse in wire form.
type rawResponse struct{ bufs mem.BufferSlice }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawResponse); ok {
		return r.bufs, nil
	}
	return c.CodecV2.Marshal(v)
}

// sotwWire writes a DiscoveryResponse (envoy.service.discovery.v3) with
// version_info (1), resources (2), type_url (4) and nonce (5), the
// resources given as marshalled Anys. Its tests hold it to proto.Marshal.
func sotwWire(version string, resources [][]byte, typeURL, nonce string) []byte {
	n := protowire.SizeTag(1) + protowire.SizeBytes(len(version)) +
		protowire.SizeTag(4) + protowire.SizeBytes(len(typeURL)) +
		protowire.SizeTag(5) + protowire.SizeBytes(len(nonce))
	for _, r := range resources {
		n += protowire.SizeTag(2) + protowire.SizeBytes(len(r))
	}
	b := make([]byte, 0, n)
	if version != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, version)
	}
	for _, r := range resources {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, r)
	}
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendString(b, typeURL)
	if nonce != "" {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendString(b, nonce)
	}
	return b
}

// anyWire is a marshalled Any: type_url (1), value (2).
func anyWire(a *anypb.Any) []byte {
	var b []byte
	if a.TypeUrl != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, a.TypeUrl)
	}
	if len(a.Value) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, a.Value)
	}
	return b
}
