package destination

import (
	"context"
	"net"

	"github.com/tributary-mesh/tributary/destination/fanout"
)

// Listener wraps ln so that the server knows its connections: the one
// thing that unblocks a write to a client that stopped reading is closing
// that client's connection (see send). Serve the gRPC server on the
// returned listener.
func (s *Server) Listener(ln net.Listener) net.Listener { return s.conns.Listener(ln) }

func peerAddr(ctx context.Context) string { return fanout.PeerAddr(ctx) }
