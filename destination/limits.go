package destination

import (
	"math"

	"google.golang.org/grpc"
)

// Connection limits: what one client connection may ask of the server
// before a stream reaches it.
const (
	// DefaultMaxHeaderBytes bounds a request's header list (HTTP/2
	// SETTINGS_MAX_HEADER_LIST_SIZE, counted as names + values + 32 bytes
	// a field). A linkerd2-proxy Get carries well under 1 KiB of headers;
	// 16 KiB leaves room for tracing and a bearer token. gRPC's own
	// default is 16 MiB, and an admitted stream keeps its metadata for
	// its whole life.
	DefaultMaxHeaderBytes = 16 << 10
	// DefaultMaxStreamsPerConnection is HTTP/2
	// SETTINGS_MAX_CONCURRENT_STREAMS: 20 times the 100 streams per
	// connection of the scale target (100,000 streams on 1,000
	// connections), room for a gateway proxy resolving a thousand
	// services (a Get and a GetProfile each). A client over it waits for a
	// free slot; it is not refused.
	DefaultMaxStreamsPerConnection = 2000
)

// ConnectionLimits are the gRPC server options that bound a connection:
// its header list size and its concurrent streams. 0 means the default;
// a negative maxPerConnection, no bound.
func ConnectionLimits(maxPerConnection, maxHeaderBytes int) []grpc.ServerOption {
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = DefaultMaxHeaderBytes
	}
	var perConn uint32
	switch {
	case maxPerConnection == 0:
		perConn = DefaultMaxStreamsPerConnection
	case maxPerConnection < 0 || maxPerConnection > math.MaxUint32:
		perConn = math.MaxUint32
	default:
		perConn = uint32(maxPerConnection)
	}
	return []grpc.ServerOption{
		grpc.MaxHeaderListSize(uint32(min(maxHeaderBytes, math.MaxUint32))),
		grpc.MaxConcurrentStreams(perConn),
	}
}
