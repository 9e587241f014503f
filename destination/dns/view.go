package dns

import (
	"hash/maphash"
	"slices"
	"sync"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

// view is what the answers for one name are made of, read from one
// registry snapshot: the host's declared ports and, per port answered,
// what Get serves and every endpoint the registry holds (for later SRV
// tiers). Immutable once built.
type view struct {
	ports  []uint16
	byPort []portView
	// watch fires when a row the view was read from changes; until then
	// the view is what a new snapshot would give.
	watch []<-chan struct{}
}

type portView struct {
	auth        discovery.Authority
	served, all []*discovery.Endpoint
}

// current reports whether nothing the view was read from has changed.
func (v *view) current() bool {
	for _, ch := range v.watch {
		select {
		case <-ch:
			return false
		default:
		}
	}
	return true
}

// view returns the view of host (port 0: every port; else that port's
// authority only) for a client in zone: from the cache while the registry
// rows it was read from are unchanged, else read afresh. A cached view is
// exactly what a read at this moment returns: its watch channels close
// when a commit changes those rows.
func (s *Server) view(host string, port uint16, zone string) *view {
	key := viewKey{host: host, port: port, zone: zone}
	if v := s.views.get(key); v != nil && v.current() {
		return v
	}
	v := s.readView(host, port, zone)
	s.views.put(key, v)
	return v
}

func (s *Server) readView(host string, port uint16, zone string) *view {
	v := &view{}
	h, err := discovery.CanonicalHost(host)
	if err != nil {
		return v // no row can ever have this host
	}
	snap := s.store.Snapshot()
	ws := memdb.NewWatchSet()
	v.ports = snap.Ports(ws, h)
	if extra := s.extra[h]; len(extra) > 0 {
		v.ports = append(slices.Clone(v.ports), extra...)
		slices.Sort(v.ports)
		v.ports = slices.Compact(v.ports)
	}
	var answer []uint16
	switch {
	case port == 0:
		answer = servingPorts(v.ports)
	case slices.Contains(v.ports, port) || slices.Contains(v.ports, 0):
		answer = []uint16{port}
	}
	for _, p := range answer {
		auth := discovery.Authority{Host: h, Port: p}
		var all []*discovery.Endpoint
		for _, m := range s.fed.Members(auth) {
			all = append(all, snap.Service(ws, m).Endpoints...)
		}
		v.byPort = append(v.byPort, portView{auth: auth, served: discovery.PreferZone(s.fed.Resolve(auth, all), zone), all: all})
	}
	v.watch = make([]<-chan struct{}, 0, len(ws))
	for ch := range ws {
		v.watch = append(v.watch, ch)
	}
	return v
}

// servingPorts is the ports to resolve for a name's A/AAAA/SRV: the
// declared ports, without 0 when others exist (a service declared for
// any port is part of every port's answer already).
func servingPorts(ports []uint16) []uint16 {
	if len(ports) > 1 && ports[0] == 0 {
		return ports[1:]
	}
	return ports
}

type viewKey struct {
	host string
	port uint16
	zone string
}

// viewCache holds recent views, a bounded number per shard; when a shard
// is full an arbitrary entry makes room (a stale one costs one read).
type viewCache struct {
	seed     maphash.Seed
	perShard int
	shards   [64]struct {
		mu sync.Mutex
		m  map[viewKey]*view
	}
}

// defaultViewCache bounds the cache: a view of a name with one port and a
// few endpoints is about 350 bytes (plus the endpoints it keeps alive
// until the view is replaced), so a full cache is about 90 MB; it holds
// every name of a registry of 100,000 services with room to spare. A
// name read again after its view was evicted costs one read of the
// registry: 5 µs at 1,000 names, 20 µs at 100,000 (BenchmarkAnswer's
// machine).
const defaultViewCache = 1 << 18

func newViewCache(size int) *viewCache {
	c := &viewCache{seed: maphash.MakeSeed(), perShard: max(1, size/64)}
	for i := range c.shards {
		c.shards[i].m = map[viewKey]*view{}
	}
	return c
}

func (c *viewCache) shard(k viewKey) int { return int(maphash.String(c.seed, k.host) % 64) }

func (c *viewCache) get(k viewKey) *view {
	sh := &c.shards[c.shard(k)]
	sh.mu.Lock()
	v := sh.m[k]
	sh.mu.Unlock()
	return v
}

func (c *viewCache) put(k viewKey, v *view) {
	sh := &c.shards[c.shard(k)]
	sh.mu.Lock()
	if _, ok := sh.m[k]; !ok && len(sh.m) >= c.perShard {
		for old := range sh.m {
			delete(sh.m, old)
			break
		}
	}
	sh.m[k] = v
	sh.mu.Unlock()
}
