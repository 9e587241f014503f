package bench

import (
	"math/rand/v2"
	"net/netip"
	"strconv"

	"github.com/tributary-mesh/tributary/discovery"
)

// Labels stamped on every generated endpoint. A client computes the
// propagation latency of a change as its receipt time minus LabelTS, and
// checks its final state against the Truth by LabelSeq.
const (
	// LabelTS is the wall-clock time (Unix nanoseconds) at which the change
	// that produced the endpoint was handed to the sink.
	LabelTS = "bench_ts"
	// LabelSeq is the sequence number of that change: 1, 2, … in the order
	// of generation; 0 for the initial state.
	LabelSeq = "bench_seq"
)

// generator holds the current state of every service and applies changes
// to it. Handed-over endpoint slices are never modified: a change copies
// the slice of its service (once per batch) and edits the copy.
type generator struct {
	cfg   Config
	auths []discovery.Authority
	keys  []string
	eps   [][]discovery.Endpoint // per service; immutable once handed over
	rng   *rand.Rand
	addrs uint64 // addresses allocated so far
	seq   uint64 // changes generated so far

	// batch is the copy-on-write state of one call of changes.
	batch map[int][]discovery.Endpoint
	order []int
}

func newGenerator(cfg Config, auths []discovery.Authority) *generator {
	g := &generator{
		cfg:   cfg,
		auths: auths,
		keys:  make([]string, len(auths)),
		eps:   make([][]discovery.Endpoint, len(auths)),
		rng:   rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		batch: map[int][]discovery.Endpoint{},
	}
	for i, a := range auths {
		g.keys[i] = a.String()
	}
	return g
}

// addr is the n-th generated address: 10.0.0.0/8 with the low 24 bits of n,
// the port above 10000 with the rest, so addresses never repeat within
// 2^24 x 50,000 allocations.
func addr(n uint64) netip.AddrPort {
	ip := netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
	return netip.AddrPortFrom(ip, uint16(10000+(n>>24)%50000))
}

func stamp(ts int64, seq uint64) map[string]string {
	return map[string]string{
		LabelTS:  strconv.FormatInt(ts, 10),
		LabelSeq: strconv.FormatUint(seq, 10),
	}
}

// initial builds every service and returns one group per service.
func (g *generator) initial(ts int64) []discovery.Group {
	labels := stamp(ts, 0) // shared: immutable
	groups := make([]discovery.Group, len(g.auths))
	for i := range g.auths {
		eps := make([]discovery.Endpoint, g.cfg.Endpoints)
		for j := range eps {
			eps[j] = discovery.Endpoint{
				Addr:   addr(g.addrs),
				Weight: discovery.DefaultWeight,
				Health: discovery.HealthPassing,
				Labels: labels,
			}
			g.addrs++
		}
		g.eps[i] = eps
		groups[i] = g.group(i)
	}
	return groups
}

func (g *generator) group(i int) discovery.Group {
	return discovery.Group{
		Key:      g.keys[i],
		Services: []discovery.Service{{Authority: g.auths[i], Endpoints: g.eps[i]}},
	}
}

// changes applies n changes, all stamped ts, and returns the groups of the
// services they touched, in the order first touched. Each change picks a
// service and one of its endpoints at random; with probability
// cfg.WeightChanges it gives the endpoint a new weight, otherwise it
// replaces it by a new address with the same weight.
func (g *generator) changes(n int, ts int64) []discovery.Group {
	if n <= 0 || len(g.auths) == 0 || g.cfg.Endpoints == 0 {
		return nil
	}
	clear(g.batch)
	g.order = g.order[:0]
	for range n {
		svc := g.rng.IntN(len(g.auths))
		slot := g.rng.IntN(g.cfg.Endpoints)
		weightChange := g.rng.Float64() < g.cfg.WeightChanges
		eps, ok := g.batch[svc]
		if !ok {
			eps = append([]discovery.Endpoint(nil), g.eps[svc]...)
			g.batch[svc] = eps
			g.order = append(g.order, svc)
		}
		g.seq++
		e := eps[slot] // a copy; the old value stays intact in g.eps[svc]
		if weightChange {
			w := uint32(1 + g.rng.IntN(2*discovery.DefaultWeight))
			if w == e.Weight {
				w = w%(2*discovery.DefaultWeight) + 1
			}
			e.Weight = w
		} else {
			e.Addr = addr(g.addrs)
			g.addrs++
		}
		e.Labels = stamp(ts, g.seq)
		eps[slot] = e
	}
	groups := make([]discovery.Group, 0, len(g.order))
	for _, svc := range g.order {
		g.eps[svc] = g.batch[svc]
		groups = append(groups, g.group(svc))
	}
	clear(g.batch)
	return groups
}

// snapshot is the current state; cheap, since handed-over slices are
// immutable. Build its Truth outside the source's goroutine.
func (g *generator) snapshot() snapshot {
	return snapshot{seq: g.seq, auths: g.auths, eps: append([][]discovery.Endpoint(nil), g.eps...)}
}

// snapshot is the state of every service after seq changes.
type snapshot struct {
	seq   uint64
	auths []discovery.Authority
	eps   [][]discovery.Endpoint
}

func (s snapshot) truth() Truth {
	t := Truth{Seq: s.seq, Services: make([]TruthService, len(s.auths))}
	for i, a := range s.auths {
		ts := TruthService{Authority: a.String(), Endpoints: make([]TruthEndpoint, len(s.eps[i]))}
		for j := range s.eps[i] {
			e := &s.eps[i][j]
			seq, _ := strconv.ParseUint(e.Labels[LabelSeq], 10, 64)
			ts.Endpoints[j] = TruthEndpoint{Addr: e.Addr.String(), Weight: e.EffectiveWeight(), Seq: seq}
		}
		t.Services[i] = ts
	}
	return t
}
