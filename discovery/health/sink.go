package health

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tributary-mesh/tributary/discovery"
)

// targetKey names a target within a sink: one check of one address.
type targetKey struct {
	hc   *Check
	addr netip.AddrPort
}

// groupState is one group of a checked source.
type groupState struct {
	src     discovery.Group // as the source handed it over
	targets []*target       // per endpoint, services in order; nil when unchecked
	sent    discovery.Group // as handed on, health set
}

// sourceSink is the sink a checked source is given. Its lock orders its
// hand-overs to next: a group is decorated and handed on under it, so the
// manager always receives a key's newest state last.
type sourceSink struct {
	c    *Checker
	name string
	cfg  *Checks
	next discovery.Sink

	mu      sync.Mutex
	groups  map[string]*groupState
	targets map[targetKey]*target
	dirty   map[string]bool // keys whose endpoints' verdicts flipped
}

var _ discovery.Sink = (*sourceSink)(nil)

func (s *sourceSink) Update(groups ...discovery.Group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]discovery.Group, len(groups))
	for i, g := range groups {
		out[i] = s.set(g)
	}
	s.next.Update(out...)
}

func (s *sourceSink) Replace(groups []discovery.Group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	listed := make(map[string]bool, len(groups))
	for _, g := range groups {
		listed[g.Key] = true
	}
	for k := range s.groups {
		if !listed[k] {
			s.set(discovery.Group{Key: k})
		}
	}
	out := make([]discovery.Group, len(groups))
	for i, g := range groups {
		out[i] = s.set(g)
	}
	s.next.Replace(out)
}

func (s *sourceSink) Healthy()         { s.next.Healthy() }
func (s *sourceSink) Failed(err error) { s.next.Failed(err) }

// set takes a group from the source: its endpoints' targets are taken
// (new ones scheduled) before the old ones are let go, so an address that
// stays keeps its verdict. It returns the group as handed on.
func (s *sourceSink) set(g discovery.Group) discovery.Group {
	old := s.groups[g.Key]
	var targets []*target
	if len(g.Services) > 0 {
		for _, svc := range g.Services {
			hc := s.cfg.For(svc.Authority)
			for _, e := range svc.Endpoints {
				if hc.Type == CheckNone || !e.Addr.IsValid() {
					targets = append(targets, nil)
					continue
				}
				targets = append(targets, s.acquire(hc, e.Addr, g.Key))
			}
		}
	}
	if old != nil {
		for _, t := range old.targets {
			if t != nil {
				s.release(t, g.Key)
			}
		}
	}
	delete(s.dirty, g.Key)
	if len(g.Services) == 0 {
		delete(s.groups, g.Key)
		return g
	}
	gs := &groupState{src: g, targets: targets}
	gs.sent = decorate(g, targets)
	s.groups[g.Key] = gs
	return gs.sent
}

// acquire finds or makes the target of one endpoint; the caller holds mu.
func (s *sourceSink) acquire(hc *Check, addr netip.AddrPort, key string) *target {
	if hc.Port != 0 {
		addr = netip.AddrPortFrom(addr.Addr(), hc.Port)
	}
	k := targetKey{hc, addr}
	t := s.targets[k]
	if t == nil {
		t = &target{sink: s, hc: hc, addr: addr, st: newState(hc), keys: map[string]int{}, index: -1}
		s.targets[k] = t
		// The first check comes at a random point of the first interval,
		// so that many new endpoints do not all go at once.
		s.c.enqueue(t, time.Now().Add(time.Duration(rand.Int64N(int64(hc.Interval)+1))))
	}
	t.refs++
	t.keys[key]++
	return t
}

// release lets one endpoint's hold on t go; the caller holds mu.
func (s *sourceSink) release(t *target, key string) {
	t.refs--
	if t.keys[key]--; t.keys[key] <= 0 {
		delete(t.keys, key)
	}
	if t.refs <= 0 {
		delete(s.targets, targetKey{t.hc, t.addr})
		s.c.forget(t)
	}
}

// record takes one check result of t.
func (s *sourceSink) record(t *target, err error, took time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.refs <= 0 {
		return // no endpoint points at it any more
	}
	s.c.metrics.observe(s.name, t.hc.Type, err == nil, took)
	t.lastCheck = s.c.now()
	if err != nil {
		t.lastErr, t.lastErrTime = err.Error(), t.lastCheck
	}
	before := t.st.health
	if !t.st.observe(err == nil, s.c.now(), t.hc) {
		return
	}
	after := t.st.health
	s.c.metrics.transition(s.name, after)
	args := []any{"source", s.name, "address", t.addr.String(), "check", t.hc.Type, "from", before.String(), "to", after.String()}
	if err != nil {
		args = append(args, "err", err)
	}
	if t.st.heldDown(s.c.now()) {
		args = append(args, "held_down_until", t.st.holdUntil, "flaps", t.st.flaps)
	}
	// INFO: a verdict turning critical evicts the endpoint (unless its
	// service is in panic mode), and its recovery brings it back; both are
	// rare, thanks to rise/fall and hold-down.
	s.c.log.Info("health check verdict changed", args...)
	for k := range t.keys {
		s.dirty[k] = true
	}
	signal(s.c.dirty)
}

// flush hands on the groups whose endpoints' verdicts flipped, if their
// endpoints' health really changed.
func (s *sourceSink) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.dirty) == 0 {
		return
	}
	var out []discovery.Group
	for k := range s.dirty {
		gs := s.groups[k]
		if gs == nil {
			continue
		}
		d := decorate(gs.src, gs.targets)
		if sameHealth(d, gs.sent) {
			continue
		}
		gs.sent = d
		out = append(out, d)
	}
	clear(s.dirty)
	if len(out) == 0 {
		return
	}
	slices.SortFunc(out, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	// Not a contact with the source's backend: a failing source must stay stale.
	if hu, ok := s.next.(discovery.HealthUpdater); ok {
		hu.UpdateHealth(out...)
	} else {
		s.next.Update(out...)
	}
}

// decorate returns g with each checked endpoint's health set from its
// target's verdict. Unchecked services are shared, checked ones copied:
// endpoints handed over are never modified.
func decorate(g discovery.Group, targets []*target) discovery.Group {
	out := discovery.Group{Key: g.Key, Services: make([]discovery.Service, len(g.Services))}
	i := 0
	for si, svc := range g.Services {
		n := len(svc.Endpoints)
		ts := targets[i : i+n]
		i += n
		if !slices.ContainsFunc(ts, func(t *target) bool { return t != nil }) {
			out.Services[si] = svc
			continue
		}
		eps := slices.Clone(svc.Endpoints)
		for j := range eps {
			if t := ts[j]; t != nil {
				eps[j].Health = combine(eps[j].Health, t.st.health)
			}
		}
		svc.Endpoints = eps
		out.Services[si] = svc
	}
	return out
}

// sameHealth reports whether two decorations of one source group differ
// in no endpoint's health.
func sameHealth(a, b discovery.Group) bool {
	if len(a.Services) != len(b.Services) {
		return false
	}
	for i := range a.Services {
		ea, eb := a.Services[i].Endpoints, b.Services[i].Endpoints
		if len(ea) != len(eb) {
			return false
		}
		for j := range ea {
			if ea[j].Health != eb[j].Health {
				return false
			}
		}
	}
	return true
}
