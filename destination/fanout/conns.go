package fanout

import (
	"context"
	"net"
	"sync"

	"google.golang.org/grpc/peer"
)

// Conns knows a server's connections: the one thing that unblocks a write
// to a client that stopped reading is closing that client's connection
// (see StallWatch). The zero value is ready to use.
type Conns struct {
	mu    sync.Mutex
	conns map[connKey]net.Conn
}

// Listener wraps ln so that Conns knows its connections. Serve the gRPC
// server on the returned listener.
func (r *Conns) Listener(ln net.Listener) net.Listener {
	return &trackingListener{Listener: ln, reg: r}
}

type connKey struct{ remote, local string }

func (r *Conns) add(c net.Conn) net.Conn {
	k := connKey{c.RemoteAddr().String(), c.LocalAddr().String()}
	r.mu.Lock()
	if r.conns == nil {
		r.conns = map[connKey]net.Conn{}
	}
	r.conns[k] = c
	r.mu.Unlock()
	return &trackedConn{Conn: c, reg: r, key: k}
}

func (r *Conns) remove(k connKey) {
	r.mu.Lock()
	delete(r.conns, k)
	r.mu.Unlock()
}

// ClosePeer closes the connection a stream's context belongs to, if known.
func (r *Conns) ClosePeer(ctx context.Context) bool {
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

// PeerAddr is the client address of a stream's context, for logs.
func PeerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

type trackingListener struct {
	net.Listener
	reg *Conns
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
	reg  *Conns
	key  connKey
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.reg.remove(c.key) })
	return c.Conn.Close()
}
