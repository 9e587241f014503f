// Package served follows what the registry serves per authority, for
// operators: it notices when an authority enters or leaves panic mode (the
// federation's panic threshold) and when an endpoint turns critical and is
// evicted, logs both at INFO and exports them as metrics.
//
// The edges decide what to serve on read, as each view is built; this
// package decides nothing. It evaluates an authority with the same
// function (discovery.Federation.Explain, which runs Resolve) only when its
// host changed in the registry, so its verdicts are the edges' verdicts,
// and a quiet registry of 100,000 services costs nothing.
package served

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// DefaultMinInterval is the shortest time between two passes over the
// registry's changes: a storm of writes costs at most one scan of the
// hosts table per interval.
const DefaultMinInterval = 250 * time.Millisecond

// Options configures a Tracker.
type Options struct {
	Store      *cache.Store
	Federation *discovery.Federation
	Logger     *slog.Logger
	// Registerer, when set, gets the tracker's metrics.
	Registerer prometheus.Registerer
	// MinInterval between passes; DefaultMinInterval when 0.
	MinInterval time.Duration
	// Sources names the source instances, whose eviction counters then
	// exist from the start (at 0), so a rate() sees the first one.
	Sources []string
}

// evictedKey names one endpoint row.
type evictedKey struct {
	addr        netip.AddrPort
	source, key string
}

// authState is what the tracker remembers of an authority: kept only while
// it is in panic mode or has evicted endpoints.
type authState struct {
	panic   bool
	since   time.Time
	serving int
	total   int
	evicted map[evictedKey]bool
}

// Tracker follows the registry; Run drives it.
type Tracker struct {
	store    *cache.Store
	fed      *discovery.Federation
	log      *slog.Logger
	interval time.Duration
	// dependents maps an alias host to the rule authorities it serves;
	// ruleHosts are the hosts federation rules are written for.
	dependents map[string][]discovery.Authority
	ruleHosts  map[string]bool

	panicActive prometheus.Gauge
	transitions *prometheus.CounterVec
	evictions   *prometheus.CounterVec

	mu     sync.Mutex
	state  map[discovery.Authority]*authState
	byHost map[string]map[discovery.Authority]bool // the hosts of state's keys
	synced uint64                                  // store version of the last pass
}

// New returns a tracker; Run starts it.
func New(opts Options) *Tracker {
	t := &Tracker{
		store:      opts.Store,
		fed:        opts.Federation,
		log:        opts.Logger,
		interval:   opts.MinInterval,
		dependents: map[string][]discovery.Authority{},
		ruleHosts:  map[string]bool{},
		state:      map[discovery.Authority]*authState{},
		byHost:     map[string]map[discovery.Authority]bool{},
		panicActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tributary_panic_active",
			Help: "Authorities whose serving share is below their panic threshold, so their critical endpoints are served too.",
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_panic_transitions_total",
			Help: "Authorities entering (direction=enter) and leaving (direction=leave) panic mode.",
		}, []string{"direction"}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_health_evictions_total",
			Help: "Endpoints that turned critical and were evicted from what an authority serves, by source.",
		}, []string{"source"}),
	}
	if t.log == nil {
		t.log = slog.Default()
	}
	if t.interval <= 0 {
		t.interval = DefaultMinInterval
	}
	for _, a := range t.fed.RuleAuthorities() {
		t.ruleHosts[a.Host] = true
		for _, m := range t.fed.Members(a)[1:] {
			t.dependents[m.Host] = append(t.dependents[m.Host], a)
		}
	}
	for _, src := range opts.Sources {
		t.evictions.WithLabelValues(src)
	}
	t.transitions.WithLabelValues("enter")
	t.transitions.WithLabelValues("leave")
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(t.panicActive, t.transitions, t.evictions)
	}
	return t
}

// Run follows the registry until ctx ends.
func (t *Tracker) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		ws := memdb.NewWatchSet()
		t.Pass(ws)
		if ws.WatchCtx(ctx) != nil {
			return
		}
		// Let a burst of writes settle into one pass.
		timer.Reset(t.interval)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// Pass evaluates every authority whose host changed since the last pass,
// adding to ws (if non-nil) a channel that fires on the next change. It
// returns how many hosts had changed.
func (t *Tracker) Pass(ws memdb.WatchSet) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	snap := t.store.Snapshot()
	var hosts []string
	t.synced = snap.HostsChangedSince(ws, t.synced, func(h string) { hosts = append(hosts, h) })
	todo := map[discovery.Authority]bool{}
	for _, h := range hosts {
		// One read of every port's rows: a host whose endpoints all serve,
		// that had nothing to remember and no rule of its own (whose
		// aliases could hold critical endpoints, or failover tiers switch)
		// has nothing to report; an alias's rule authority is still
		// evaluated below.
		if t.byHost[h] == nil && !t.ruleHosts[h] && allServing(snap.Service(nil, discovery.Authority{Host: h}).Endpoints) {
			for _, a := range t.dependents[h] {
				todo[a] = true
			}
			continue
		}
		for _, p := range snap.Ports(nil, h) {
			todo[discovery.Authority{Host: h, Port: p}] = true
		}
		for a := range t.byHost[h] {
			todo[a] = true // it may have lost every row
		}
		for _, a := range t.dependents[h] {
			todo[a] = true
		}
	}
	now := time.Now()
	for a := range todo {
		t.evaluate(snap, a, now)
	}
	return len(hosts)
}

func allServing(eps []*discovery.Endpoint) bool {
	for _, e := range eps {
		if !e.Health.Serving() {
			return false
		}
	}
	return true
}

// evaluate reads a's view as the edges build it and records transitions.
func (t *Tracker) evaluate(snap *cache.Snapshot, a discovery.Authority, now time.Time) {
	var all []*discovery.Endpoint
	critical := false
	for _, m := range t.fed.Members(a) {
		for _, e := range snap.Service(nil, m).Endpoints {
			all = append(all, e)
			critical = critical || !e.Health.Serving()
		}
	}
	prev := t.state[a]
	if !critical && prev == nil {
		return // every endpoint serving: no eviction, no panic, nothing was
	}
	ex := t.fed.Explain(a, "", all)
	cur := &authState{panic: ex.Panic, serving: ex.ServingAddresses, total: ex.Addresses}
	for _, d := range ex.Decisions {
		if d.Reason == discovery.ReasonCritical {
			if cur.evicted == nil {
				cur.evicted = map[evictedKey]bool{}
			}
			cur.evicted[evictedKey{d.Endpoint.Addr, d.Endpoint.Source, d.Endpoint.Key}] = true
		}
	}
	wasPanic := prev != nil && prev.panic
	switch {
	case ex.Panic && !wasPanic:
		cur.since = now
		t.panicActive.Inc()
		t.transitions.WithLabelValues("enter").Inc()
		t.log.Info("panic threshold: serving every endpoint, critical ones too",
			"authority", a.String(), "serving", ex.ServingAddresses, "addresses", ex.Addresses, "threshold", ex.PanicThreshold)
	case !ex.Panic && wasPanic:
		t.panicActive.Dec()
		t.transitions.WithLabelValues("leave").Inc()
		t.log.Info("panic threshold: left; critical endpoints are evicted again",
			"authority", a.String(), "serving", ex.ServingAddresses, "addresses", ex.Addresses, "threshold", ex.PanicThreshold,
			"panic_for", now.Sub(prev.since).Round(time.Millisecond))
	case ex.Panic:
		cur.since = prev.since
	}
	var newly, restored []evictedKey
	for k := range cur.evicted {
		if prev == nil || !prev.evicted[k] {
			newly = append(newly, k)
		}
	}
	if prev != nil {
		for k := range prev.evicted {
			if !cur.evicted[k] {
				restored = append(restored, k)
			}
		}
	}
	sortKeys(newly)
	sortKeys(restored)
	for _, k := range newly {
		t.evictions.WithLabelValues(k.source).Inc()
		t.log.Info("endpoint critical: evicted", "authority", a.String(), "address", k.addr.String(), "source", k.source, "key", k.key)
	}
	for _, k := range restored {
		t.log.Info("evicted endpoint no longer evicted", "authority", a.String(), "address", k.addr.String(), "source", k.source, "key", k.key)
	}
	if !cur.panic && len(cur.evicted) == 0 {
		if prev != nil {
			delete(t.state, a)
			if hs := t.byHost[a.Host]; hs != nil {
				delete(hs, a)
				if len(hs) == 0 {
					delete(t.byHost, a.Host)
				}
			}
		}
		return
	}
	t.state[a] = cur
	if t.byHost[a.Host] == nil {
		t.byHost[a.Host] = map[discovery.Authority]bool{}
	}
	t.byHost[a.Host][a] = true
}

func sortKeys(ks []evictedKey) {
	slices.SortFunc(ks, func(x, y evictedKey) int {
		if c := x.addr.Compare(y.addr); c != 0 {
			return c
		}
		if c := strings.Compare(x.source, y.source); c != 0 {
			return c
		}
		return strings.Compare(x.key, y.key)
	})
}

// Panic is an authority in panic mode.
type Panic struct {
	Authority discovery.Authority
	Since     time.Time
	// Serving of Addresses are serving.
	Serving, Addresses int
}

// Panicking returns the authorities in panic mode as of the last pass,
// sorted.
func (t *Tracker) Panicking() []Panic {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Panic
	for a, s := range t.state {
		if s.panic {
			out = append(out, Panic{Authority: a, Since: s.since, Serving: s.serving, Addresses: s.total})
		}
	}
	slices.SortFunc(out, func(x, y Panic) int { return strings.Compare(x.Authority.String(), y.Authority.String()) })
	return out
}
