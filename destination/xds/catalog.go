package xds

import (
	"context"
	"slices"
	"sync"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

// catalog follows the list of authorities in the registry for the streams
// with a wildcard subscription (Envoy's CDS and LDS): one goroutine, while
// such streams are open, reads the list when a service row is added or
// removed anywhere and tells each of them. An authority declared for any
// port (port 0) names no resource and is left out.
type catalog struct {
	srv *Server

	mu      sync.Mutex
	streams map[*stream]struct{}
	names   []string
	gen     int    // the follower generation; a stopped one tells no one
	seq     uint64 // counts the lists, so that a stream applies only newer ones
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

// join adds a stream and returns the current list and its number.
func (c *catalog) join(x *stream) ([]string, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams == nil {
		c.streams = map[*stream]struct{}{}
	}
	c.streams[x] = struct{}{}
	if len(c.streams) == 1 {
		ws := memdb.NewWatchSet()
		c.names = c.read(ws)
		c.gen++
		ctx, cancel := context.WithCancel(context.Background())
		c.stop = cancel
		gen := c.gen
		c.wg.Go(func() { c.follow(ctx, ws, gen) })
	}
	return c.names, c.seq
}

// leave removes a stream; the last one stops the follower.
func (c *catalog) leave(x *stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.streams, x)
	if len(c.streams) == 0 && c.stop != nil {
		c.stop()
		c.stop = nil
	}
}

func (c *catalog) wait() { c.wg.Wait() }

func (c *catalog) follow(ctx context.Context, ws memdb.WatchSet, gen int) {
	for {
		if ws.WatchCtx(ctx) != nil {
			return
		}
		ws = memdb.NewWatchSet()
		names := c.read(ws)
		c.mu.Lock()
		if c.gen != gen || slices.Equal(names, c.names) {
			c.mu.Unlock()
			continue
		}
		c.names = names
		c.seq++
		seq := c.seq
		streams := make([]*stream, 0, len(c.streams))
		for x := range c.streams {
			streams = append(streams, x)
		}
		c.mu.Unlock()
		// Each on its own goroutine: a stream whose client stopped
		// reading holds its lock in a send, and must not hold up the
		// others' news.
		for _, x := range streams {
			c.wg.Go(func() { x.catalogChanged(seq, names) })
		}
	}
}

// read lists the authorities with a port, sorted, each once, and arms ws
// to fire when a service row is added or removed.
func (c *catalog) read(ws memdb.WatchSet) []string {
	snap := c.srv.store.Snapshot()
	snap.Hosts(ws)
	var out []string
	var last discovery.Authority
	snap.EachAuthority(func(a discovery.Authority, _ string) bool {
		if a.Port != 0 && a != last {
			out = append(out, a.String())
			last = a
		}
		return true
	})
	return out
}
