package destination

import (
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	// The proto codec registers itself; rawCodec delegates to it.
	_ "google.golang.org/grpc/encoding/proto"
)

// rawCodec is gRPC's proto codec that also sends bytes encoded earlier as
// they are: a snapshot's messages are marshalled once and written to every
// stream that needs them. Anything else goes to the proto codec.
type rawCodec struct{ encoding.CodecV2 }

// preEncoded is a message that is already in wire form, made once and sent
// as is on every stream: passed as a pointer, a send allocates nothing for
// it (a []byte in an interface, and the BufferSlice gRPC wants, would cost
// two allocations per send).
type preEncoded struct{ bufs mem.BufferSlice }

func newPreEncoded(b []byte) *preEncoded {
	// SliceBuffer's Ref and Free do nothing: the shared bytes are never
	// recycled, and gRPC only reads them.
	return &preEncoded{bufs: mem.BufferSlice{mem.SliceBuffer(b)}}
}

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if p, ok := v.(*preEncoded); ok {
		return p.bufs, nil
	}
	return c.CodecV2.Marshal(v)
}

// Unmarshal is the proto codec's, except for a request whose strings are
// not valid UTF-8: protobuf refuses those, and gRPC would answer Internal.
// Such a GetDestination is read field by field instead, so that request
// validation refuses it with InvalidArgument like any other bad path.
func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	req, ok := v.(*pb.GetDestination)
	if err == nil || !ok {
		return err
	}
	if lenientGetDestination(data.Materialize(), req) {
		return nil
	}
	return err
}

// lenientGetDestination decodes a GetDestination without UTF-8 checks. It
// reports false for bytes that are not a well-formed message.
func lenientGetDestination(b []byte, req *pb.GetDestination) bool {
	req.Reset()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ == protowire.BytesType && num >= 1 && num <= 3 {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return false
			}
			switch num {
			case 1:
				req.Scheme = string(v)
			case 2:
				req.Path = string(v)
			case 3:
				req.ContextToken = string(v)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false
		}
		b = b[m:]
	}
	return true
}

// ServerOptions are the gRPC server options the destination server needs:
// register it on a grpc.Server created with them.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(rawCodec{encoding.GetCodecV2("proto")})}
}
