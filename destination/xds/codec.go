package xds

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
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
// resources given as marshalled Anys. The resources are not copied: the
// response is the resources' own (shared, read-only) bytes between pieces
// of one small buffer that holds everything else, so a delivery allocates
// tens of bytes, not the size of the resources. Its tests hold it to
// proto.Marshal.
func sotwWire(version string, resources [][]byte, typeURL, nonce string) mem.BufferSlice {
	n := protowire.SizeTag(1) + protowire.SizeBytes(len(version)) +
		protowire.SizeTag(4) + protowire.SizeBytes(len(typeURL)) +
		protowire.SizeTag(5) + protowire.SizeBytes(len(nonce))
	for _, r := range resources {
		n += protowire.SizeTag(2) + protowire.SizeVarint(uint64(len(r)))
	}
	b := make([]byte, 0, n)
	// The pieces are boxed as pointers into one array: a SliceBuffer
	// value in an interface would be an allocation of its own.
	pieces := make([]mem.SliceBuffer, 0, 2*len(resources)+1)
	out := make(mem.BufferSlice, 0, cap(pieces))
	add := func(p []byte) {
		pieces = append(pieces, p)
		out = append(out, &pieces[len(pieces)-1])
	}
	if version != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, version)
	}
	start := 0 // of b's bytes not yet in out
	for _, r := range resources {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(r)))
		add(b[start:len(b):len(b)])
		start = len(b)
		if len(r) > 0 {
			add(r)
		}
	}
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendString(b, typeURL)
	if nonce != "" {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendString(b, nonce)
	}
	add(b[start:])
	return out
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

// nodeLater is a request to decode (a *discoverypb.DiscoveryRequest or
// *discoverypb.DeltaDiscoveryRequest) without its node: a stream reads the
// node of its first request only, and Envoy sends the node, with its build
// and its list of extensions (a few KiB), in every request unless
// set_node_on_first_message_only is on. The node's bytes are skipped, not
// decoded.
type nodeLater struct{ m proto.Message }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*nodeLater)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	f := r.m.ProtoReflect().Descriptor().Fields().ByName("node")
	if f == nil {
		return c.CodecV2.Unmarshal(data, r.m)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return unmarshalWithout(buf.ReadOnlyData(), f.Number(), r.m)
}

// unmarshalWithout decodes b, a marshalled message, into m without its
// field num when it is length-delimited: the bytes around it are decoded
// one run after the other (merged, which is what a decoder does with the
// fields of one message in order), so nothing is copied. Malformed bytes
// are left to the decoder, which reports them.
func unmarshalWithout(b []byte, num protowire.Number, m proto.Message) error {
	merge := proto.UnmarshalOptions{Merge: true}
	start := 0 // of the bytes not yet decoded
	for i := 0; i < len(b); {
		got, typ, n := protowire.ConsumeTag(b[i:])
		if n < 0 {
			break
		}
		l := protowire.ConsumeFieldValue(got, typ, b[i+n:])
		if l < 0 {
			break
		}
		if got == num && typ == protowire.BytesType {
			if i > start {
				if err := merge.Unmarshal(b[start:i], m); err != nil {
					return err
				}
			}
			start = i + n + l
		}
		i += n + l
	}
	return merge.Unmarshal(b[start:], m)
}
