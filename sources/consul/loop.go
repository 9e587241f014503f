package consul

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/retry"
)

// nonPassing are the check states whose changes the overflow follows, one
// blocking query each. Consul reads a state by its status index: the
// answer costs it the checks in that state, and the query wakes only when
// one enters or leaves it. One query for every state but passing (a filter
// on /v1/health/state/any) evaluates every check of the datacenter on each
// answer, ~20 ms for 25,000 checks, and wakes on any check's change.
var nonPassing = []string{api.HealthCritical, api.HealthWarning}

// Events the goroutines send to the loop.
type (
	catalogEvent struct {
		dc          string
		services    map[string]bool // names that pass the service filter
		index       uint64
		aclFiltered bool
		defaultDeny bool // the agent's default ACL policy is deny
		err         error
	}
	checksEvent struct {
		dc     string
		state  string                 // one of nonPassing
		checks map[checkRef]checkInfo // the checks in that state
		err    error
	}
	healthEvent struct {
		st       *svcState // identity only: the loop owns it
		gen      uint64
		overflow bool
		index    uint64
		group    discovery.Group
		problems []problem
		nodes    []string
		bad      map[checkRef]string // its non-passing checks: status
		err      error
	}
)

type checkRef struct{ node, id string }

type checkInfo struct{ status, service string }

// svcState is what the loop knows of one Consul service of one datacenter.
type svcState struct {
	dc, name, key string // immutable

	// gen changes whenever the service changes hands (watched ↔ overflow)
	// or leaves; results of another generation are dropped.
	gen     uint64
	watched bool
	cancel  context.CancelFunc // the watcher's

	have     bool                // a first answer is in
	index    uint64              // of the answer taken
	group    discovery.Group     // built from it
	nodes    []string            // nodes of its instances
	bad      map[checkRef]string // non-passing checks in the answer taken
	problems []problem           // instances left out, as last reported
	err      error               // the last fetch failed

	queued   queueLevel // waiting for an overflow fetch
	inflight bool       // an overflow fetch is running
	again    bool       // fetch once more when the running one is back
	removed  bool
}

type dcState struct {
	name     string
	order    int
	loaded   bool
	index    uint64
	services map[string]bool
	aclNote  bool
	anonNote bool

	checksStarted bool
	baseline      bool                              // every checks query has answered once
	byState       map[string]map[checkRef]checkInfo // each checks query's last answer
	checks        map[checkRef]checkInfo            // the non-passing checks: their union
}

// loopState is owned by the loop goroutine.
type loopState struct {
	svcs    map[string]*svcState
	dc      map[string]*dcState
	synced  bool
	failing map[string]error // by component: catalog dc1, checks dc1, service dc1/web
	pending map[string]discovery.Group
	contact bool // a successful answer came in this iteration

	urgent      []*svcState // reads a check change or a new service asked for
	bulk        []*svcState // sweeps and retries: after the urgent ones
	inflight    int
	lastSweep   time.Time
	sweepWanted map[string]bool
	sweepTimer  *time.Timer
	sweepArmed  bool
	retryTimer  *time.Timer
	retryArmed  bool
	retryBo     *retry.Backoff
}

func (r *run) loop(ctx context.Context) {
	r.svcs = map[string]*svcState{}
	r.dc = map[string]*dcState{}
	r.failing = map[string]error{}
	r.pending = map[string]discovery.Group{}
	r.sweepWanted = map[string]bool{}
	r.retryBo = r.newBackoff()
	r.sweepTimer = time.NewTimer(time.Hour)
	r.sweepTimer.Stop()
	defer r.sweepTimer.Stop()
	r.retryTimer = time.NewTimer(time.Hour)
	r.retryTimer.Stop()
	defer r.retryTimer.Stop()
	resync := time.NewTicker(r.s.overflowResync)
	defer resync.Stop()

	for i, dc := range r.dcs {
		r.dc[dc] = &dcState{name: dc, order: i, services: map[string]bool{}}
		r.goFn(func() { r.watchCatalog(ctx, dc) })
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-r.events:
			r.handle(ctx, ev)
			// Take what else is ready, so a burst is one hand-over.
		drain:
			for range 1024 {
				select {
				case ev := <-r.events:
					r.handle(ctx, ev)
				default:
					break drain
				}
			}
		case <-r.sweepTimer.C:
			r.sweepArmed = false
			r.startSweep()
		case <-r.retryTimer.C:
			r.retryArmed = false
			for _, st := range r.svcs {
				if !st.watched && (st.err != nil || !st.have) {
					r.enqueue(st, false)
				}
			}
		case <-resync.C:
			r.requestSweep(r.dcs...)
		}
		r.dispatch(ctx)
		r.flush()
	}
}

func (r *run) handle(ctx context.Context, ev any) {
	switch ev := ev.(type) {
	case catalogEvent:
		r.onCatalog(ctx, ev)
	case checksEvent:
		r.onChecks(ev)
	case healthEvent:
		r.onHealth(ev)
	}
}

// fail records a component's failure and reports it: the source is stale
// until every component answers again. A datacenter's catalog and checks
// queries report every failed attempt; a service reports when it starts
// failing, so an outage counts one error per retry of the catalog, not one
// per service and retry.
func (r *run) fail(component string, err error) {
	_, already := r.failing[component]
	r.failing[component] = err
	if !already || !strings.HasPrefix(component, "service ") {
		r.sink.Failed(err)
	}
}

func (r *run) ok(component string) {
	delete(r.failing, component)
	r.contact = true
}

// flush hands over what changed, once synced; or completes the sync.
func (r *run) flush() {
	if !r.synced {
		r.maybeSync()
		r.contact = false
		return
	}
	switch {
	case len(r.pending) > 0:
		groups := make([]discovery.Group, 0, len(r.pending))
		for _, g := range r.pending {
			groups = append(groups, g)
		}
		slices.SortFunc(groups, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
		clear(r.pending)
		r.sink.Update(groups...)
		r.restale()
	case r.contact && len(r.failing) == 0:
		r.sink.Healthy()
	}
	r.contact = false
}

// restale reports a failure still outstanding after a hand-over, which
// would otherwise clear the stale mark.
func (r *run) restale() {
	for _, err := range r.failing {
		r.sink.Failed(err)
		return
	}
}

// maybeSync hands over the complete state once every datacenter's catalog
// and every service's first answer are in.
func (r *run) maybeSync() {
	for _, d := range r.dc {
		if !d.loaded {
			return
		}
	}
	groups := make([]discovery.Group, 0, len(r.svcs))
	for _, st := range r.svcs {
		if !st.have {
			return
		}
		groups = append(groups, st.group)
	}
	slices.SortFunc(groups, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	r.synced = true
	clear(r.pending)
	r.log.Info("Consul discovery synced", "datacenters", len(r.dc), "services", len(groups), "watched", r.watchedCount())
	r.sink.Replace(groups)
	r.restale()
}

func (r *run) watchedCount() int {
	n := 0
	for _, st := range r.svcs {
		if st.watched {
			n++
		}
	}
	return n
}

func (r *run) onCatalog(ctx context.Context, ev catalogEvent) {
	d := r.dc[ev.dc]
	component := "catalog " + ev.dc
	if ev.err != nil {
		r.fail(component, fmt.Errorf("consul %s: listing services: %w", ev.dc, ev.err))
		return
	}
	r.ok(component)
	if ev.aclFiltered != d.aclNote {
		d.aclNote = ev.aclFiltered
		if ev.aclFiltered {
			r.log.Warn("Consul hides services from this source's token (ACLs); it needs service:read and node:read on what it should discover", "datacenter", ev.dc)
		}
	}
	// Consul does not say it filtered for the anonymous token.
	if anon := ev.defaultDeny && r.s.api.Token == ""; anon != d.anonNote {
		d.anonNote = anon
		if anon {
			r.log.Warn("no ACL token is configured and Consul's default ACL policy is deny: this source sees only what the anonymous token may read (set token or token_file)", "datacenter", ev.dc)
		}
	}
	for name := range d.services {
		if !ev.services[name] {
			r.remove(d, name)
		}
	}
	for name := range ev.services {
		if !d.services[name] {
			key := groupKey(ev.dc, name)
			r.svcs[key] = &svcState{dc: ev.dc, name: name, key: key}
		}
	}
	d.services, d.index, d.loaded = ev.services, ev.index, true
	r.rebalance(ctx)
	// Instances of services nobody watches may have changed with the catalog.
	r.requestSweep(ev.dc)
}

// remove forgets a service that left the catalog and withdraws it.
func (r *run) remove(d *dcState, name string) {
	key := groupKey(d.name, name)
	st := r.svcs[key]
	if st == nil {
		return
	}
	if st.watched {
		st.cancel()
	}
	st.removed, st.watched = true, false
	st.gen++
	delete(r.svcs, key)
	delete(r.failing, "service "+key)
	if r.synced {
		r.pending[key] = discovery.Group{Key: key}
	}
	r.log.Debug("Consul service gone", "datacenter", d.name, "service", name)
}

// rebalance gives watches to the first max_watches services in this order:
// watch_first, then those already watched (a watch is kept while its
// service exists), then by name and datacenter. The others are the
// overflow.
func (r *run) rebalance(ctx context.Context) {
	all := make([]*svcState, 0, len(r.svcs))
	for _, st := range r.svcs {
		all = append(all, st)
	}
	rank := func(b bool) int {
		if b {
			return 0
		}
		return 1
	}
	slices.SortFunc(all, func(a, b *svcState) int {
		return cmp.Or(
			cmp.Compare(rank(r.s.watchFirst[a.name]), rank(r.s.watchFirst[b.name])),
			cmp.Compare(rank(a.watched), rank(b.watched)),
			strings.Compare(a.name, b.name),
			cmp.Compare(r.dc[a.dc].order, r.dc[b.dc].order),
		)
	})
	for i, st := range all {
		want := i < r.s.maxWatches
		switch {
		case want && !st.watched:
			r.startWatch(ctx, st)
		case !want && st.watched:
			st.cancel()
			st.cancel, st.watched = nil, false
			st.gen++
			r.ensureChecks(ctx, st.dc)
			r.enqueue(st, true) // what changed since its last answer
		case !want && !st.have:
			r.ensureChecks(ctx, st.dc)
			r.enqueue(st, true)
		}
	}
}

func (r *run) startWatch(ctx context.Context, st *svcState) {
	st.gen++
	st.watched = true
	st.queued = notQueued
	wctx, cancel := context.WithCancel(ctx)
	st.cancel = cancel
	gen, index := st.gen, uint64(0)
	if st.have {
		index = st.index
	}
	r.goFn(func() { r.watchService(wctx, st, gen, index) })
}

func (r *run) ensureChecks(ctx context.Context, dc string) {
	d := r.dc[dc]
	if d.checksStarted {
		return
	}
	d.checksStarted = true
	d.byState = map[string]map[checkRef]checkInfo{}
	for _, state := range nonPassing {
		r.goFn(func() { r.watchChecks(ctx, dc, state) })
	}
}

func (r *run) onChecks(ev checksEvent) {
	d := r.dc[ev.dc]
	component := "checks " + ev.dc + " " + ev.state
	if ev.err != nil {
		r.fail(component, fmt.Errorf("consul %s: reading %s checks: %w", ev.dc, ev.state, ev.err))
		return
	}
	r.ok(component)
	d.byState[ev.state] = ev.checks
	// A check that moved between states may be in the two answers for a
	// moment, until the other query wakes: this answer's status wins.
	checks := make(map[checkRef]checkInfo, len(d.checks)+len(ev.checks))
	for _, set := range d.byState {
		maps.Copy(checks, set)
	}
	maps.Copy(checks, ev.checks)
	ev.checks = checks
	if !d.baseline {
		if len(d.byState) < len(nonPassing) {
			return
		}
		// Changes after these answers ring; read every overflow service
		// once now, so none falls between its last read and the baseline.
		d.baseline = true
		d.checks = ev.checks
		for _, st := range r.svcs {
			if st.dc == ev.dc {
				r.enqueue(st, false)
			}
		}
		return
	}
	changed := map[string]bool{} // services, or "node\x00name" for node checks
	note := func(ref checkRef, info checkInfo) {
		if info.service != "" {
			changed[info.service] = true
		} else {
			changed["\x00"+ref.node] = true
		}
	}
	for ref, info := range ev.checks {
		if old, ok := d.checks[ref]; !ok || old != info {
			note(ref, info)
			if ok && old.service != info.service {
				note(ref, old)
			}
		}
	}
	for ref, old := range d.checks {
		if _, ok := ev.checks[ref]; !ok {
			note(ref, old)
		}
	}
	d.checks = ev.checks
	// A check can change and change back between two answers of this query
	// while a service read saw the middle state: the diff above then shows
	// nothing. So also read every overflow service whose last answer
	// disagrees with the checks now reported for its instances' nodes.
	for _, st := range r.svcs {
		if st.dc == ev.dc && !st.watched && st.have && !r.agrees(st, ev.checks) {
			r.enqueue(st, true)
		}
	}
	for name := range changed {
		if node, ok := strings.CutPrefix(name, "\x00"); ok {
			for _, st := range r.svcs {
				if st.dc == ev.dc && slices.Contains(st.nodes, node) {
					r.enqueue(st, true)
				}
			}
			continue
		}
		if st := r.svcs[groupKey(ev.dc, name)]; st != nil {
			r.enqueue(st, true)
		}
	}
}

// badChecks lists the non-passing checks of entries.
func badChecks(entries []*api.ServiceEntry) map[checkRef]string {
	var bad map[checkRef]string
	for _, e := range entries {
		if e == nil {
			continue
		}
		for _, c := range e.Checks {
			if c != nil && c.Status != api.HealthPassing {
				if bad == nil {
					bad = map[checkRef]string{}
				}
				bad[checkRef{node: c.Node, id: c.CheckID}] = c.Status
			}
		}
	}
	return bad
}

// agrees reports whether a service's last answer had exactly the
// non-passing checks that checks lists for it (its own, and its nodes').
func (r *run) agrees(st *svcState, checks map[checkRef]checkInfo) bool {
	n := 0
	for ref, info := range checks {
		if (info.service != st.name && info.service != "") || !slices.Contains(st.nodes, ref.node) {
			continue
		}
		if st.bad[ref] != info.status {
			return false
		}
		n++
	}
	return n == len(st.bad)
}

func (r *run) onHealth(ev healthEvent) {
	if ev.overflow {
		r.inflight--
		ev.st.inflight = false
		if ev.st.again {
			ev.st.again = false
			defer r.enqueue(ev.st, true)
		}
	}
	st := ev.st
	if r.svcs[st.key] != st || ev.gen != st.gen {
		return // from an earlier hand of this service
	}
	component := "service " + st.key
	if ev.err != nil {
		st.err = ev.err
		r.fail(component, fmt.Errorf("consul %s: service %s: %w", st.dc, st.name, ev.err))
		if !retryable(ev.err) && !st.have {
			// Consul refuses this one service: do not hold the sync back.
			st.have, st.group = true, discovery.Group{Key: st.key}
		}
		if ev.overflow {
			r.armRetry()
		}
		return
	}
	if ev.overflow {
		r.retryBo.Reset()
	}
	st.err = nil
	r.ok(component)
	st.index, st.nodes, st.bad = ev.index, ev.nodes, ev.bad
	r.report(st, ev.problems)
	if st.have && groupsEqual(st.group, ev.group) {
		return
	}
	st.group, st.have = ev.group, true
	if r.synced {
		r.pending[st.key] = ev.group
	}
}

// report logs instances newly left out of a service.
func (r *run) report(st *svcState, problems []problem) {
	for _, p := range problems {
		if !slices.Contains(st.problems, p) {
			r.rejected.Add(1)
			r.log.Warn("Consul instance left out", "datacenter", st.dc, "service", st.name,
				"instance", p.instance, "reason", p.reason, "rejected_total", r.rejected.Load())
		}
	}
	st.problems = problems
}

func (r *run) armRetry() {
	if r.retryArmed {
		return
	}
	r.retryArmed = true
	r.retryTimer.Reset(r.retryBo.Next())
}

// requestSweep asks for a read of every overflow service of these
// datacenters, at most once per overflow.min_interval.
func (r *run) requestSweep(dcs ...string) {
	for _, dc := range dcs {
		r.sweepWanted[dc] = true
	}
	if r.sweepArmed {
		return
	}
	if wait := r.s.overflowMinInterval - time.Since(r.lastSweep); wait > 0 {
		r.sweepArmed = true
		r.sweepTimer.Reset(wait)
		return
	}
	r.startSweep()
}

func (r *run) startSweep() {
	if len(r.sweepWanted) == 0 {
		return
	}
	r.lastSweep = time.Now()
	before := len(r.bulk)
	for _, st := range r.svcs {
		if r.sweepWanted[st.dc] {
			r.enqueue(st, false)
		}
	}
	if n := len(r.bulk) - before; n > 0 {
		r.log.Debug("reading the overflow services again", "services", n)
	}
	clear(r.sweepWanted)
}

type queueLevel uint8

const (
	notQueued queueLevel = iota
	inBulk
	inUrgent
)

// enqueue asks for one overflow read of a service; an urgent one goes
// before every sweep read. Until its datacenter's checks query has
// answered, the baseline reads everything.
func (r *run) enqueue(st *svcState, urgent bool) {
	switch {
	case st.watched || st.removed || !r.dc[st.dc].baseline:
	case st.inflight:
		st.again = true
	case urgent && st.queued != inUrgent:
		st.queued = inUrgent // a bulk entry of it is skipped
		r.urgent = append(r.urgent, st)
	case !urgent && st.queued == notQueued:
		st.queued = inBulk
		r.bulk = append(r.bulk, st)
	}
}

// dispatch starts overflow reads, at most overflow.concurrency at a time,
// urgent ones first.
func (r *run) dispatch(ctx context.Context) {
	for r.inflight < r.s.overflowConcurrency {
		var st *svcState
		switch {
		case len(r.urgent) > 0:
			st, r.urgent = r.urgent[0], r.urgent[1:]
			if st.queued != inUrgent {
				continue
			}
		case len(r.bulk) > 0:
			st, r.bulk = r.bulk[0], r.bulk[1:]
			if st.queued != inBulk {
				continue
			}
		default:
			r.urgent, r.bulk = nil, nil // let the backing arrays go
			return
		}
		st.queued = notQueued
		if st.watched || st.removed {
			continue
		}
		st.inflight = true
		r.inflight++
		gen := st.gen
		r.goFn(func() { r.fetchOnce(ctx, st, gen) })
	}
}

// The goroutines. They read only the immutable fields of a svcState.

// block follows one Consul blocking query from index idx until ctx ends or
// an event can no longer be sent. fetch reads at an index (consistently
// after a failure). A failed read sends failed(err) and is retried from
// scratch after a backoff; an answer whose index did not move (the wait
// ended, nothing changed) is ignored; any other sends changed(meta) and
// waits from its index.
func (r *run) block(ctx context.Context, idx uint64,
	fetch func(idx uint64, consistent bool) (*api.QueryMeta, error),
	failed func(error) any, changed func(*api.QueryMeta) any) {
	bo := r.newBackoff()
	consistent := false
	for {
		meta, err := fetch(idx, consistent)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !r.send(ctx, failed(err)) {
				return
			}
			idx, consistent = 0, true // read from scratch, consistently, once it answers again
			if retry.Wait(ctx, bo.Next()) != nil {
				return
			}
			continue
		}
		bo.Reset()
		consistent = false
		if idx != 0 && meta.LastIndex == idx {
			continue
		}
		ev := changed(meta)
		idx = nextIndex(idx, meta.LastIndex)
		if !r.send(ctx, ev) {
			return
		}
	}
}

// watchCatalog follows a datacenter's service list with blocking queries.
func (r *run) watchCatalog(ctx context.Context, dc string) {
	var services map[string][]string
	r.block(ctx, 0,
		func(idx uint64, consistent bool) (*api.QueryMeta, error) {
			q, cancel := r.query(ctx, dc, idx, consistent)
			defer cancel()
			q.Filter = r.s.filter
			var meta *api.QueryMeta
			var err error
			services, meta, err = r.client.Catalog().Services(q)
			return meta, err
		},
		func(err error) any { return catalogEvent{dc: dc, err: err} },
		func(meta *api.QueryMeta) any {
			return catalogEvent{dc: dc, services: r.selectServices(services), index: meta.LastIndex,
				aclFiltered: meta.ResultsFilteredByACLs, defaultDeny: meta.DefaultACLPolicy == "deny"}
		})
}

// selectServices applies the name and tag filters to a service list.
func (r *run) selectServices(services map[string][]string) map[string]bool {
	out := make(map[string]bool, len(services))
	for name, tags := range services {
		if !r.wanted(name) || !hasAllTags(tags, r.s.tags) {
			continue
		}
		out[name] = true
	}
	return out
}

func (r *run) wanted(name string) bool {
	if len(r.s.exact) == 0 && len(r.s.patterns) == 0 {
		return true
	}
	if r.s.exact[name] {
		return true
	}
	for _, p := range r.s.patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// watchChecks follows a datacenter's checks in one state: a check entering
// or leaving it ends the blocking query, and the difference names the
// services to read.
func (r *run) watchChecks(ctx context.Context, dc, state string) {
	var checks api.HealthChecks
	r.block(ctx, 0,
		func(idx uint64, consistent bool) (*api.QueryMeta, error) {
			q, cancel := r.query(ctx, dc, idx, consistent)
			defer cancel()
			var meta *api.QueryMeta
			var err error
			checks, meta, err = r.client.Health().State(state, q)
			return meta, err
		},
		func(err error) any { return checksEvent{dc: dc, state: state, err: err} },
		func(*api.QueryMeta) any {
			set := make(map[checkRef]checkInfo, len(checks))
			for _, c := range checks {
				if c != nil {
					set[checkRef{node: c.Node, id: c.CheckID}] = checkInfo{status: c.Status, service: c.ServiceName}
				}
			}
			return checksEvent{dc: dc, state: state, checks: set}
		})
}

// fetchHealth reads one service's instances with their checks.
func (r *run) fetchHealth(ctx context.Context, dc, name string, index uint64, consistent bool) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	q, cancel := r.query(ctx, dc, index, consistent)
	defer cancel()
	q.Filter = r.s.instFilt
	if r.s.connect {
		return r.client.Health().Connect(name, "", false, q)
	}
	return r.client.Health().Service(name, "", false, q)
}

// watchService follows one service with blocking queries until ctx ends.
func (r *run) watchService(ctx context.Context, st *svcState, gen, idx uint64) {
	var entries []*api.ServiceEntry
	r.block(ctx, idx,
		func(idx uint64, consistent bool) (*api.QueryMeta, error) {
			var meta *api.QueryMeta
			var err error
			entries, meta, err = r.fetchHealth(ctx, st.dc, st.name, idx, consistent)
			return meta, err
		},
		func(err error) any { return healthEvent{st: st, gen: gen, err: err} },
		func(meta *api.QueryMeta) any { return r.result(st, gen, entries, meta.LastIndex) })
}

// fetchOnce is one overflow read.
func (r *run) fetchOnce(ctx context.Context, st *svcState, gen uint64) {
	entries, meta, err := r.fetchHealth(ctx, st.dc, st.name, 0, false)
	ev := healthEvent{st: st, gen: gen, overflow: true, err: err}
	if err == nil {
		ev = r.result(st, gen, entries, meta.LastIndex)
		ev.overflow = true
	} else if ctx.Err() != nil {
		return
	}
	r.send(ctx, ev)
}

func (r *run) result(st *svcState, gen uint64, entries []*api.ServiceEntry, index uint64) healthEvent {
	g, problems := r.b.build(st.dc, st.name, entries)
	seen := make(map[string]bool, len(entries))
	var nodes []string
	for _, e := range entries {
		if e != nil && e.Node != nil && !seen[e.Node.Node] {
			seen[e.Node.Node] = true
			nodes = append(nodes, e.Node.Node)
		}
	}
	return healthEvent{st: st, gen: gen, index: index, group: g, problems: problems, nodes: nodes, bad: badChecks(entries)}
}
