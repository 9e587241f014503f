package destination

import (
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/peer"
)

// Listener wraps ln so that the server knows its connections: the one
// thing that unblocks a write to a client that stopped reading is closing
// that client's connection (see send). Serve the gRPC server on the
// returned listener.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &trackingListener{Listener: ln, reg: &s.conns}
}

// connRegistry maps a connection's (remote, local) address pair to it.
type connRegistry struct {
	mu    sync.Mutex
	conns map[connKey]net.Conn
}

type connKey struct{ remote, local string }

func (r *connRegistry) add(c net.Conn) net.Conn {
	k := connKey{c.RemoteAddr().String(), c.LocalAddr().String()}
	r.mu.Lock()
	if r.conns == nil {
		r.conns = map[connKey]net.Conn{}
	}
	r.conns[k] = c
	r.mu.Unlock()
	return &trackedConn{Conn: c, reg: r, key: k}
}

func (r *connRegistry) remove(k connKey) {
	r.mu.Lock()
	delete(r.conns, k)
	r.mu.Unlock()
}

// closePeer closes the connection a stream's context belongs to, if known.
func (r *connRegistry) closePeer(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil || p.LocalAddr == nil {
		return false
	}
	r.mu.Lock()
	c := r.conns[connKey{p.Addr.String(), p.LocalAddr.String()}]
	r.mu.Unlock()
	if c == nil {
		return false
	}
	_ = c.Close()
	return true
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

type trackingListener struct {
	net.Listener
	reg *connRegistry
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.reg.add(c), nil
}

type trackedConn struct {
	net.Conn
	reg  *connRegistry
	key  connKey
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.reg.remove(c.key) })
	return c.Conn.Close()
}
