package discovery

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Store is what the manager writes to; cache.Store implements it.
type Store interface {
	// ApplyAt replaces the provider's groups by key in one transaction and
	// reports whether anything changed. at is when the source handed the
	// groups over, from which readers measure how long a change took to
	// reach a client.
	ApplyAt(provider string, groups []Group, at time.Time) (changed bool, err error)
	// Keys lists the group keys the provider holds.
	Keys(provider string) []string
	// DropProvider deletes everything the provider holds in one
	// transaction (stale_after expiry) and reports whether anything changed.
	DropProvider(provider string) (changed bool, err error)
}

// SourceStatus is what the manager knows of one source instance.
type SourceStatus struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Synced: the source's first complete state is in the store.
	Synced bool `json:"synced"`
	// Stale: the last contact with the backend failed; the source's last
	// good state is still served.
	Stale         bool      `json:"stale"`
	LastSuccess   time.Time `json:"last_success,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	Errors        uint64    `json:"errors"`
	// Applies counts store transactions that changed something.
	Applies uint64 `json:"applies"`
	// Expired: the source has been stale for longer than its stale_after,
	// so its endpoints are withdrawn until it recovers. Expiries counts
	// how often that happened.
	Expired  bool   `json:"expired,omitempty"`
	Expiries uint64 `json:"expiries,omitempty"`
	// HeldWithdrawal: the deletion guard holds a hand-over that would
	// withdraw HeldEndpoints of the source's endpoints, since HeldSince.
	// GuardTrips counts the hand-overs it started holding.
	HeldWithdrawal bool      `json:"held_withdrawal,omitempty"`
	HeldEndpoints  int       `json:"held_endpoints,omitempty"`
	HeldSince      time.Time `json:"held_since,omitzero"`
	GuardTrips     uint64    `json:"guard_trips,omitempty"`
	// Rejected counts backend objects the source left out because they
	// could not become endpoints (a bad address or port), for sources that
	// implement RejectCounter.
	Rejected uint64 `json:"rejected,omitempty"`
}

// RejectCounter is implemented by sources that skip malformed backend
// objects one by one (their valid siblings still apply) and count them.
type RejectCounter interface {
	Rejected() uint64
}

// ManagerOptions configures a Manager. Zero values are fine.
type ManagerOptions struct {
	Logger *slog.Logger
	// Now is the clock; tests inject one.
	Now func() time.Time
	// OnApply, when set, is called after each store transaction of a source
	// with the time the oldest coalesced hand-over arrived and whether the
	// store changed (metrics).
	OnApply func(source string, arrived time.Time, changed bool, err error)
	// WrapSink, when set, is called once per source by NewManager with the
	// manager's sink for it; the source is given what it returns (the
	// active health checker puts itself between a source and the manager
	// this way). Returning sink itself leaves the source unwrapped.
	WrapSink func(cfg SourceConfig, sink Sink) Sink
}

// Manager runs the configured sources and feeds their groups to the store.
//
// Each source gets a Sink that coalesces hand-overs by key without blocking
// and one goroutine that applies them: a burst of updates from a source
// becomes one store transaction, and a slow store never makes a source
// queue.
//
// The applier also enforces two per-source bounds. stale_after: once a
// failing source's last successful contact is older, its endpoints are
// dropped from the store; the manager keeps the groups it last applied for
// the source and re-applies them (with anything newer) at its next
// successful contact. The deletion guard: a hand-over that would withdraw
// more than the configured share of the source's endpoints is held for the
// confirmation period; newer hand-overs merge into it, and it is applied
// once it no longer withdraws that much or the period is over.
type Manager struct {
	store  Store
	log    *slog.Logger
	now    func() time.Time
	onApp  func(string, time.Time, bool, error)
	states []*sourceState

	syncedOnce sync.Once
	synced     chan struct{}
	wg         sync.WaitGroup
}

// NewManager prepares a manager for the given sources; Run starts them.
func NewManager(store Store, instances []Instance, opts ManagerOptions) *Manager {
	m := &Manager{
		store:  store,
		log:    opts.Logger,
		now:    opts.Now,
		onApp:  opts.OnApply,
		synced: make(chan struct{}),
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	if m.now == nil {
		m.now = time.Now
	}
	for _, in := range instances {
		st := &sourceState{
			m:          m,
			src:        in.Source,
			staleAfter: time.Duration(in.Config.StaleAfter),
			guard:      in.Config.DeletionGuard,
			status:     SourceStatus{Name: in.Config.Name, Kind: in.Config.Kind},
			wake:       make(chan struct{}, 1),
			applied:    make(map[string]Group),
		}
		st.sink = st
		if opts.WrapSink != nil {
			if w := opts.WrapSink(in.Config, st); w != nil {
				st.sink = w
			}
		}
		m.states = append(m.states, st)
	}
	if len(m.states) == 0 {
		close(m.synced)
	}
	return m
}

// Run starts every source and blocks until ctx is done and all of them
// (and their appliers) have returned.
func (m *Manager) Run(ctx context.Context) {
	for _, st := range m.states {
		m.wg.Add(2)
		go func() {
			defer m.wg.Done()
			st.src.Run(ctx, st.sink)
		}()
		go func() {
			defer m.wg.Done()
			st.applyLoop(ctx)
		}()
	}
	<-ctx.Done()
	m.wg.Wait()
}

// Synced is closed once every source's first complete state is in the store.
func (m *Manager) Synced() <-chan struct{} { return m.synced }

// Status returns every source's status, sorted by name.
func (m *Manager) Status() []SourceStatus {
	out := make([]SourceStatus, 0, len(m.states))
	for _, st := range m.states {
		st.mu.Lock()
		s := st.status
		st.mu.Unlock()
		if rc, ok := st.src.(RejectCounter); ok {
			s.Rejected = rc.Rejected()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (m *Manager) checkSynced() {
	for _, st := range m.states {
		st.mu.Lock()
		ok := st.status.Synced
		st.mu.Unlock()
		if !ok {
			return
		}
	}
	m.syncedOnce.Do(func() {
		m.log.Info("all sources synced", "sources", len(m.states))
		close(m.synced)
	})
}

// sourceState is one source's Sink and bookkeeping.
type sourceState struct {
	m          *Manager
	src        Source
	sink       Sink // what the source is given: st, or a wrapper of it
	staleAfter time.Duration
	guard      DeletionGuard
	wake       chan struct{}

	mu      sync.Mutex
	status  SourceStatus
	pending map[string]Group
	replace bool      // pending is a complete listing
	arrived time.Time // when the oldest pending hand-over came in
	restore bool      // a successful contact while expired: re-apply everything
	failed  time.Time // when the source last went from fresh to stale

	// Owned by the applier goroutine.
	applied     map[string]Group // the groups in the store, by key (none empty)
	appliedEps  int              // endpoints in applied
	held        map[string]Group // the hand-over the deletion guard holds
	heldReplace bool
	heldArrived time.Time
}

// HealthUpdater is implemented by the manager's sinks. UpdateHealth is
// Update for hand-overs that do not come from the source's backend: the
// active checker handing a group over again because its endpoints' health
// changed. It records no contact with the backend, so a failing source
// stays stale and its stale_after keeps running.
type HealthUpdater interface {
	UpdateHealth(groups ...Group)
}

var (
	_ Sink          = (*sourceState)(nil)
	_ HealthUpdater = (*sourceState)(nil)
)

func (st *sourceState) Update(groups ...Group) {
	st.mu.Lock()
	st.take(groups)
	st.mu.Unlock()
	st.signal()
}

func (st *sourceState) UpdateHealth(groups ...Group) {
	st.mu.Lock()
	st.merge(groups, st.m.now())
	st.mu.Unlock()
	st.signal()
}

func (st *sourceState) Replace(groups []Group) {
	st.mu.Lock()
	st.pending = make(map[string]Group, len(groups))
	st.replace = true
	st.take(groups)
	st.mu.Unlock()
	st.signal()
}

// take merges groups from the source into pending; the caller holds mu.
func (st *sourceState) take(groups []Group) {
	now := st.m.now()
	st.merge(groups, now)
	st.contact(now)
}

// merge adds groups to pending, the newest of a key winning; the caller holds mu.
func (st *sourceState) merge(groups []Group, now time.Time) {
	if st.pending == nil {
		st.pending = make(map[string]Group, len(groups))
	}
	if st.arrived.IsZero() {
		st.arrived = now
	}
	for _, g := range groups {
		st.pending[g.Key] = g
	}
}

// contact records a successful contact; the caller holds mu.
func (st *sourceState) contact(now time.Time) {
	if st.status.Stale {
		// The counterpart of Failed's warning, so that a log reader sees
		// the outage end as well as begin.
		st.m.log.Info("source recovered; serving it fresh again", "source", st.status.Name,
			"stale_for", now.Sub(st.failed).Round(time.Millisecond), "last_error", st.status.LastError)
	}
	st.status.Stale = false
	st.status.LastSuccess = now
	if st.status.Expired {
		st.restore = true
	}
}

func (st *sourceState) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *sourceState) Healthy() {
	st.mu.Lock()
	st.contact(st.m.now())
	restore := st.restore
	st.mu.Unlock()
	if restore {
		st.signal()
	}
}

func (st *sourceState) Failed(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	st.mu.Lock()
	wasStale := st.status.Stale
	if !wasStale {
		st.failed = st.m.now()
	}
	st.status.Stale = true
	st.status.Errors++
	st.status.LastError = err.Error()
	st.status.LastErrorTime = st.m.now()
	st.mu.Unlock()
	if !wasStale {
		st.m.log.Warn("source failed; serving its last good state as stale", "source", st.status.Name, "err", err)
		if st.staleAfter > 0 {
			st.signal() // the applier arms the stale_after timer
		}
	}
}

func (st *sourceState) applyLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-st.wake:
		case <-timer.C:
		}
		next := st.step()
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(max(next.Sub(st.m.now()), 0))
		}
	}
}

// step does what is due for the source: expire it, restore it, apply or
// hold its pending hand-over. It returns when it wants to run again (zero:
// only when woken).
func (st *sourceState) step() (next time.Time) {
	st.mu.Lock()
	pending, replace, arrived, restore := st.pending, st.replace, st.arrived, st.restore
	st.pending, st.replace, st.arrived, st.restore = nil, false, time.Time{}, false
	stale, lastSuccess, expired := st.status.Stale, st.status.LastSuccess, st.status.Expired
	st.mu.Unlock()
	now := st.m.now()

	// A held hand-over takes in what came since; the newest group of a key wins.
	if st.held != nil {
		if pending != nil && replace {
			st.heldReplace = true
		} else {
			maps.Copy(st.held, pending)
			pending = st.held
		}
		replace, arrived = st.heldReplace, st.heldArrived
		st.held = nil
	}

	if !expired && stale && st.staleAfter > 0 && !lastSuccess.IsZero() {
		deadline := lastSuccess.Add(st.staleAfter)
		if now.Before(deadline) {
			next = deadline
		} else {
			st.expire(lastSuccess)
			expired = true
		}
	}
	if expired && !restore {
		if pending != nil {
			st.hold(pending, replace, arrived) // applied with the rest on recovery
		}
		return next
	}
	if expired && restore {
		st.restoreAll(pending, replace, arrived)
		return next
	}
	if pending == nil {
		return next
	}
	if until, ok := st.guardHolds(pending, replace, now); ok {
		st.hold(pending, replace, arrived)
		return earliest(next, until)
	}
	st.apply(pending, replace, arrived)
	return next
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// hold keeps a hand-over aside until the next step.
func (st *sourceState) hold(pending map[string]Group, replace bool, arrived time.Time) {
	st.held, st.heldReplace, st.heldArrived = pending, replace, arrived
}

// expire withdraws the source's endpoints: it has been stale too long.
func (st *sourceState) expire(lastSuccess time.Time) {
	name := st.status.Name
	_, err := st.m.store.DropProvider(name)
	st.mu.Lock()
	st.status.Expired = true
	st.status.Expiries++
	if err != nil {
		st.status.Errors++
		st.status.LastError = err.Error()
		st.status.LastErrorTime = st.m.now()
	}
	st.mu.Unlock()
	if err != nil {
		st.m.log.Error("cannot withdraw an expired source's endpoints", "source", name, "err", err)
		return
	}
	st.m.log.Warn("source stale for longer than stale_after; its endpoints are withdrawn until it recovers",
		"source", name, "stale_after", st.staleAfter, "last_success", lastSuccess)
}

// restoreAll re-applies the source's whole state after an expiry: what it
// last applied, with anything handed over since on top.
func (st *sourceState) restoreAll(pending map[string]Group, replace bool, arrived time.Time) {
	full := pending
	if !replace {
		full = maps.Clone(st.applied)
		maps.Copy(full, pending)
	}
	if full == nil {
		full = map[string]Group{}
	}
	if arrived.IsZero() {
		arrived = st.m.now()
	}
	st.mu.Lock()
	st.status.Expired = false
	st.status.HeldWithdrawal, st.status.HeldEndpoints, st.status.HeldSince = false, 0, time.Time{}
	st.mu.Unlock()
	st.m.log.Info("source recovered; re-applying its state", "source", st.status.Name, "groups", len(full))
	st.apply(full, replace, arrived)
}

// epKey identifies an endpoint of a source for the deletion guard.
type epKey struct {
	auth Authority
	addr netip.AddrPort
}

func countEndpoints(g Group) int {
	n := 0
	for _, s := range g.Services {
		n += len(s.Endpoints)
	}
	return n
}

// withdrawn counts the endpoints now applied that the hand-over removes.
// It looks at the keys handed over only, and at every key for a complete
// listing (which withdraws the keys it leaves out).
func (st *sourceState) withdrawn(pending map[string]Group, replace bool) int {
	n := 0
	if replace {
		for k, old := range st.applied {
			if _, ok := pending[k]; !ok {
				n += countEndpoints(old)
			}
		}
	}
	for k, g := range pending {
		old, ok := st.applied[k]
		if !ok {
			continue
		}
		n += gone(old, g)
	}
	return n
}

// gone counts the endpoints of old that are not in g (by authority and
// address). Small groups, the usual hand-over under churn, are compared
// pairwise: cheaper than building a set for every hand-over.
func gone(old, g Group) int {
	n := 0
	if countEndpoints(old)*countEndpoints(g) <= 256 {
		for _, os := range old.Services {
			for _, oe := range os.Endpoints {
				if !hasEndpoint(g, os.Authority, oe.Addr) {
					n++
				}
			}
		}
		return n
	}
	keep := make(map[epKey]struct{}, countEndpoints(g))
	for _, s := range g.Services {
		for _, e := range s.Endpoints {
			keep[epKey{s.Authority, e.Addr}] = struct{}{}
		}
	}
	for _, s := range old.Services {
		for _, e := range s.Endpoints {
			if _, ok := keep[epKey{s.Authority, e.Addr}]; !ok {
				n++
			}
		}
	}
	return n
}

func hasEndpoint(g Group, a Authority, addr netip.AddrPort) bool {
	for _, s := range g.Services {
		if s.Authority != a {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Addr == addr {
				return true
			}
		}
	}
	return false
}

// guardHolds decides whether the deletion guard holds a hand-over, and
// until when. It keeps the status and logs.
func (st *sourceState) guardHolds(pending map[string]Group, replace bool, now time.Time) (until time.Time, hold bool) {
	g := st.guard
	name := st.status.Name
	var n int
	trips := g.Enabled() && st.appliedEps > 0 && st.appliedEps >= g.MinEndpoints
	if trips {
		n = st.withdrawn(pending, replace)
		trips = float64(n) > g.MaxWithdraw*float64(st.appliedEps)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	wasHeld, since := st.status.HeldWithdrawal, st.status.HeldSince
	if !trips {
		st.status.HeldWithdrawal, st.status.HeldEndpoints, st.status.HeldSince = false, 0, time.Time{}
		if wasHeld {
			st.m.log.Info("deletion guard: the held withdrawal was undone by a newer hand-over; applying", "source", name)
		}
		return time.Time{}, false
	}
	if !wasHeld {
		since = now
		st.status.GuardTrips++
		st.m.log.Warn("deletion guard: holding a hand-over that would withdraw most of the source's endpoints",
			"source", name, "withdrawn", n, "endpoints", st.appliedEps, "max_withdraw", g.MaxWithdraw, "confirm_for", g.ConfirmFor)
	}
	until = since.Add(g.ConfirmFor)
	if !now.Before(until) {
		st.status.HeldWithdrawal, st.status.HeldEndpoints, st.status.HeldSince = false, 0, time.Time{}
		st.m.log.Warn("deletion guard: the withdrawal persisted for the confirmation period; applying it",
			"source", name, "withdrawn", n, "endpoints", st.appliedEps)
		return time.Time{}, false
	}
	st.status.HeldWithdrawal, st.status.HeldEndpoints, st.status.HeldSince = true, n, since
	return until, true
}

func (st *sourceState) apply(pending map[string]Group, replace bool, arrived time.Time) {
	name := st.status.Name // immutable after NewManager
	if replace {
		for k := range st.applied {
			if _, ok := pending[k]; !ok {
				pending[k] = Group{Key: k}
			}
		}
		for _, k := range st.m.store.Keys(name) {
			if _, ok := pending[k]; !ok {
				pending[k] = Group{Key: k}
			}
		}
	}
	groups := make([]Group, 0, len(pending))
	for _, g := range pending {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i].Key < groups[j].Key })

	changed, err := st.m.store.ApplyAt(name, groups, arrived)
	var rejected map[string]bool
	if err != nil && len(groups) > 1 {
		changed, rejected, err = st.applyEach(name, groups, arrived)
	} else if err != nil {
		rejected = map[string]bool{groups[0].Key: true}
	}
	for _, g := range groups {
		if rejected[g.Key] {
			continue
		}
		st.appliedEps -= countEndpoints(st.applied[g.Key])
		if len(g.Services) == 0 {
			delete(st.applied, g.Key)
		} else {
			st.applied[g.Key] = g
			st.appliedEps += countEndpoints(g)
		}
	}
	if st.m.onApp != nil {
		st.m.onApp(name, arrived, changed, err)
	}
	st.mu.Lock()
	if err != nil {
		// The store rejected a group: its previous state stays.
		st.status.Errors++
		st.status.LastError = err.Error()
		st.status.LastErrorTime = st.m.now()
	}
	if changed {
		st.status.Applies++
	}
	// A rejected group does not hold back sync: the rest of the state is in.
	first := !st.status.Synced
	if first {
		st.status.Synced = true
	}
	st.mu.Unlock()
	if err != nil {
		st.m.log.Error("store rejected a source's update; keeping the previous state of what it rejected", "source", name, "err", err)
	}
	if first {
		st.m.log.Info("source synced", "source", name, "groups", len(groups))
		st.m.checkSynced()
	}
}

// applyEach applies groups one transaction each, so that one group the store
// rejects does not hold back its valid siblings. It returns the keys rejected.
func (st *sourceState) applyEach(name string, groups []Group, arrived time.Time) (changed bool, rejected map[string]bool, err error) {
	var errs []error
	rejected = map[string]bool{}
	for _, g := range groups {
		c, e := st.m.store.ApplyAt(name, []Group{g}, arrived)
		changed = changed || c
		if e != nil {
			errs = append(errs, e)
			rejected[g.Key] = true
		}
	}
	return changed, rejected, errors.Join(errs...)
}
