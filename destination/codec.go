package destination

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	// The proto codec registers itself; rawCodec delegates to it.
	_ "google.golang.org/grpc/encoding/proto"
)

// rawCodec is gRPC's proto codec that also sends bytes encoded earlier as
// they are: a snapshot's messages are marshalled once and written to every
// stream that needs them. Anything else goes to the proto codec.
type rawCodec struct{ encoding.CodecV2 }

// preEncoded is a message that is already in wire form.
type preEncoded []byte

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(preEncoded); ok {
		// SliceBuffer's Free is a no-op: the shared bytes are never recycled.
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// ServerOptions are the gRPC server options the destination server needs:
// register it on a grpc.Server created with them.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(rawCodec{encoding.GetCodecV2("proto")})}
}
