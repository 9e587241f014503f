package load

import (
	"sync"
	"sync/atomic"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	// Registers the proto codec sharedDecoder builds on.
	_ "google.golang.org/grpc/encoding/proto"
)

// maxShared bounds the decoded messages sharedDecoder keeps.
const maxShared = 16384

// sharedDecoder is gRPC's proto codec, except that an Update is decoded
// once per distinct content: the streams of one service receive the same
// bytes for the same change (a server may well encode it once), and
// decoding them once instead of once per stream leaves the machine's CPU to
// the server under test. Decoded messages are shared and must be treated
// as read-only; the cache is keyed by the full bytes, so what a stream
// reads is exactly what it was sent.
type sharedDecoder struct {
	base encoding.CodecV2

	mu     sync.Mutex
	cache  map[string]*pb.Update
	hits   atomic.Uint64
	misses atomic.Uint64
}

func newSharedDecoder() *sharedDecoder {
	return &sharedDecoder{base: encoding.GetCodecV2("proto"), cache: make(map[string]*pb.Update)}
}

func (c *sharedDecoder) Name() string { return c.base.Name() }

func (c *sharedDecoder) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

func (c *sharedDecoder) Unmarshal(data mem.BufferSlice, v any) error {
	u, ok := v.(*pb.Update)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData() // valid until we return; copied as a key below
	} else {
		b = data.Materialize()
	}
	c.mu.Lock()
	d, ok := c.cache[string(b)]
	c.mu.Unlock()
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
		d = new(pb.Update)
		if err := proto.Unmarshal(b, d); err != nil {
			return err
		}
		c.mu.Lock()
		if len(c.cache) >= maxShared {
			clear(c.cache)
		}
		c.cache[string(b)] = d
		c.mu.Unlock()
	}
	u.Update = d.Update
	return nil
}
