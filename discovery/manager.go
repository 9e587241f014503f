package discovery

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Store is what the manager writes to; cache.Store implements it.
type Store interface {
	// Apply replaces the provider's groups by key in one transaction and
	// reports whether anything changed.
	Apply(provider string, groups []Group) (changed bool, err error)
	// Keys lists the group keys the provider holds.
	Keys(provider string) []string
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
}

// Manager runs the configured sources and feeds their groups to the store.
//
// Each source gets a Sink that coalesces hand-overs by key without blocking
// and one goroutine that applies them: a burst of updates from a source
// becomes one store transaction, and a slow store never makes a source
// queue.
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
		m.states = append(m.states, &sourceState{
			m:      m,
			src:    in.Source,
			status: SourceStatus{Name: in.Config.Name, Kind: in.Config.Kind},
			wake:   make(chan struct{}, 1),
		})
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
			st.src.Run(ctx, st)
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
		out = append(out, st.status)
		st.mu.Unlock()
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
	m    *Manager
	src  Source
	wake chan struct{}

	mu      sync.Mutex
	status  SourceStatus
	pending map[string]Group
	replace bool      // pending is a complete listing
	arrived time.Time // when the oldest pending hand-over came in
}

var _ Sink = (*sourceState)(nil)

func (st *sourceState) Update(groups ...Group) {
	st.mu.Lock()
	st.take(groups)
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

// take merges groups into pending; the caller holds mu.
func (st *sourceState) take(groups []Group) {
	now := st.m.now()
	if st.pending == nil {
		st.pending = make(map[string]Group, len(groups))
	}
	if st.arrived.IsZero() {
		st.arrived = now
	}
	for _, g := range groups {
		st.pending[g.Key] = g
	}
	st.status.Stale = false
	st.status.LastSuccess = now
}

func (st *sourceState) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *sourceState) Healthy() {
	st.mu.Lock()
	st.status.Stale = false
	st.status.LastSuccess = st.m.now()
	st.mu.Unlock()
}

func (st *sourceState) Failed(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	st.mu.Lock()
	wasStale := st.status.Stale
	st.status.Stale = true
	st.status.Errors++
	st.status.LastError = err.Error()
	st.status.LastErrorTime = st.m.now()
	st.mu.Unlock()
	if !wasStale {
		st.m.log.Warn("source failed; serving its last good state as stale", "source", st.status.Name, "err", err)
	}
}

func (st *sourceState) applyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-st.wake:
		}
		st.mu.Lock()
		pending, replace, arrived := st.pending, st.replace, st.arrived
		st.pending, st.replace, st.arrived = nil, false, time.Time{}
		st.mu.Unlock()
		if pending == nil {
			continue
		}
		st.apply(pending, replace, arrived)
	}
}

func (st *sourceState) apply(pending map[string]Group, replace bool, arrived time.Time) {
	name := st.status.Name // immutable after NewManager
	if replace {
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

	changed, err := st.m.store.Apply(name, groups)
	if err != nil && len(groups) > 1 {
		changed, err = st.applyEach(name, groups)
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
// rejects does not hold back its valid siblings.
func (st *sourceState) applyEach(name string, groups []Group) (changed bool, err error) {
	var errs []error
	for _, g := range groups {
		c, e := st.m.store.Apply(name, []Group{g})
		changed = changed || c
		if e != nil {
			errs = append(errs, e)
		}
	}
	return changed, errors.Join(errs...)
}
