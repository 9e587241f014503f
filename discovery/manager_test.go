package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is a Store that keeps groups in maps and reports each Apply.
type memStore struct {
	mu      sync.Mutex
	groups  map[string]map[string]Group
	applied chan []Group
	drops   chan string
	reject  string // a group key Apply refuses
}

func newMemStore() *memStore {
	return &memStore{groups: map[string]map[string]Group{}, applied: make(chan []Group, 100), drops: make(chan string, 10)}
}

func (s *memStore) DropProvider(provider string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := len(s.groups[provider]) > 0
	delete(s.groups, provider)
	s.drops <- provider
	return changed, nil
}

// addrs lists a provider's endpoint addresses in the store, sorted.
func (s *memStore) addrs(provider string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, g := range s.groups[provider] {
		for _, svc := range g.Services {
			for _, e := range svc.Endpoints {
				out = append(out, svc.Authority.Host+"/"+e.Addr.String())
			}
		}
	}
	sort.Strings(out)
	return out
}

func (s *memStore) ApplyAt(provider string, groups []Group, _ time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range groups {
		if g.Key == s.reject {
			return false, errors.New("invalid group " + g.Key)
		}
	}
	if s.groups[provider] == nil {
		s.groups[provider] = map[string]Group{}
	}
	for _, g := range groups {
		if len(g.Services) == 0 {
			delete(s.groups[provider], g.Key)
		} else {
			s.groups[provider][g.Key] = g
		}
	}
	s.applied <- groups
	return true, nil
}

func (s *memStore) Keys(provider string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var keys []string
	for k := range s.groups[provider] {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// scriptSource hands the sink to the test and waits for cancellation.
type scriptSource struct{ sinks chan Sink }

func (s *scriptSource) Run(ctx context.Context, sink Sink) {
	s.sinks <- sink
	<-ctx.Done()
}

func svcGroup(key, host string) Group {
	return Group{Key: key, Services: []Service{{
		Authority: Authority{Host: host, Port: 80},
		Endpoints: []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:80")}},
	}}}
}

func startManager(t *testing.T, store Store, n int) (*Manager, []Sink) {
	t.Helper()
	return startManagerWith(t, store, n, SourceConfig{}, ManagerOptions{})
}

// startManagerWith starts n sources configured as cfg (name and kind set here).
func startManagerWith(t testing.TB, store Store, n int, cfg SourceConfig, opts ManagerOptions) (*Manager, []Sink) {
	t.Helper()
	var instances []Instance
	src := &scriptSource{sinks: make(chan Sink, n)}
	for i := 0; i < n; i++ {
		c := cfg
		c.Name, c.Kind = string(rune('a'+i)), "test"
		instances = append(instances, Instance{Config: c, Source: src})
	}
	m := NewManager(store, instances, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sinks := make([]Sink, n)
	got := map[*sourceState]bool{}
	for i := 0; i < n; i++ {
		s := <-src.sinks
		if w, ok := s.(*wrapped); ok {
			s = w.Sink
		}
		got[s.(*sourceState)] = true
	}
	for i, st := range m.states {
		if !got[st] {
			t.Fatal("sink not handed out")
		}
		sinks[i] = st
	}
	return m, sinks
}

// wrapped is a WrapSink result.
type wrapped struct{ Sink }

func waitApplied(t *testing.T, s *memStore) []Group {
	t.Helper()
	select {
	case g := <-s.applied:
		return g
	case <-time.After(5 * time.Second):
		t.Fatal("nothing applied")
	}
	return nil
}

func TestManagerSyncsWhenEverySourceHandedOver(t *testing.T) {
	store := newMemStore()
	m, sinks := startManager(t, store, 2)
	sinks[0].Replace([]Group{svcGroup("k1", "web")})
	waitApplied(t, store)
	select {
	case <-m.Synced():
		t.Fatal("synced before the second source handed over")
	default:
	}
	sinks[1].Replace(nil) // knows nothing: still a complete state
	waitApplied(t, store)
	select {
	case <-m.Synced():
	case <-time.After(5 * time.Second):
		t.Fatal("not synced")
	}
	for _, st := range m.Status() {
		if !st.Synced || st.Stale {
			t.Errorf("status %+v", st)
		}
	}
}

func TestManagerReplaceWithdrawsUnlistedKeys(t *testing.T) {
	store := newMemStore()
	_, sinks := startManager(t, store, 1)
	sinks[0].Replace([]Group{svcGroup("k1", "a"), svcGroup("k2", "b")})
	waitApplied(t, store)
	sinks[0].Replace([]Group{svcGroup("k2", "b")})
	got := waitApplied(t, store)
	keys := []string{}
	for _, g := range got {
		keys = append(keys, g.Key)
		if g.Key == "k1" && len(g.Services) != 0 {
			t.Error("k1 should be withdrawn with an empty group")
		}
	}
	if !slices.Equal(keys, []string{"k1", "k2"}) {
		t.Fatalf("applied keys %v", keys)
	}
	if got := store.Keys("a"); !slices.Equal(got, []string{"k2"}) {
		t.Fatalf("store keys %v", got)
	}
}

func TestManagerCoalescesByKey(t *testing.T) {
	store := newMemStore()
	m, _ := startManager(t, store, 1)
	st := m.states[0]
	// Hold the applier off by taking the lock, hand over a burst, release.
	st.mu.Lock()
	st.take([]Group{svcGroup("k", "v1")})
	st.take([]Group{svcGroup("k", "v2")})
	st.take([]Group{svcGroup("j", "x")})
	st.mu.Unlock()
	st.signal()
	got := waitApplied(t, store)
	if len(got) != 2 || got[1].Key != "k" || got[1].Services[0].Authority.Host != "v2" {
		t.Fatalf("want one transaction with j and the newest k, got %+v", got)
	}
}

func TestManagerFailedMarksStaleAndKeepsState(t *testing.T) {
	store := newMemStore()
	m, sinks := startManager(t, store, 1)
	sinks[0].Replace([]Group{svcGroup("k1", "a")})
	waitApplied(t, store)
	sinks[0].Failed(errors.New("backend down"))
	st := m.Status()[0]
	if !st.Stale || st.Errors != 1 || st.LastError != "backend down" {
		t.Fatalf("status after failure %+v", st)
	}
	if got := store.Keys("a"); !slices.Equal(got, []string{"k1"}) {
		t.Fatalf("state lost: %v", got)
	}
	sinks[0].Failed(context.Canceled) // cancellation is not an error
	if m.Status()[0].Errors != 1 {
		t.Fatal("cancellation counted as an error")
	}
	sinks[0].Healthy()
	if st := m.Status()[0]; st.Stale {
		t.Fatalf("still stale after Healthy: %+v", st)
	}
}

func TestManagerRejectedGroupDoesNotHoldBackSiblings(t *testing.T) {
	store := newMemStore()
	store.reject = "bad"
	m, sinks := startManager(t, store, 1)
	sinks[0].Replace([]Group{svcGroup("bad", "x"), svcGroup("good", "y")})
	waitApplied(t, store) // the retry of "good" alone
	if got := store.Keys("a"); !slices.Equal(got, []string{"good"}) {
		t.Fatalf("keys %v", got)
	}
	// The store has the group before the applier records its status.
	waitStatus(t, m, func(st SourceStatus) bool { return st.Synced && st.Errors > 0 })
}

func TestManagerWithoutSourcesIsSynced(t *testing.T) {
	m := NewManager(newMemStore(), nil, ManagerOptions{})
	select {
	case <-m.Synced():
	default:
		t.Fatal("no sources: should be synced at once")
	}
}

// clock is a settable ManagerOptions.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// eps builds a group of one service with n endpoints 10.0.<base>.<i>:80.
func eps(key, host string, base, n int) Group {
	svc := Service{Authority: Authority{Host: host, Port: 80}}
	for i := 1; i <= n; i++ {
		svc.Endpoints = append(svc.Endpoints, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(base), byte(i)}), 80)})
	}
	return Group{Key: key, Services: []Service{svc}}
}

func waitDrop(t *testing.T, s *memStore) {
	t.Helper()
	select {
	case <-s.drops:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing dropped")
	}
}

// waitStatus waits until the status of the first source satisfies ok.
func waitStatus(t *testing.T, m *Manager, ok func(SourceStatus) bool) SourceStatus {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := m.Status()[0]
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never as expected: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestManagerStaleAfterWithdrawsAndRestores(t *testing.T) {
	for _, how := range []string{"healthy", "update", "replace"} {
		t.Run(how, func(t *testing.T) {
			store := newMemStore()
			m, sinks := startManagerWith(t, store, 1, SourceConfig{StaleAfter: Duration(20 * time.Millisecond)}, ManagerOptions{})
			sinks[0].Replace([]Group{eps("k1", "web", 1, 2), eps("k2", "api", 2, 1)})
			waitApplied(t, store)
			sinks[0].Failed(errors.New("backend down"))
			waitDrop(t, store)
			st := waitStatus(t, m, func(s SourceStatus) bool { return s.Expired })
			if !st.Stale || st.Expiries != 1 || len(store.addrs("a")) != 0 {
				t.Fatalf("after expiry: status %+v, store %v", st, store.addrs("a"))
			}
			var want []string
			switch how {
			case "healthy": // nothing changed: everything it had comes back
				sinks[0].Healthy()
				want = []string{"api/10.0.2.1:80", "web/10.0.1.1:80", "web/10.0.1.2:80"}
			case "update": // one key changed: the other comes back as it was
				sinks[0].Update(eps("k2", "api", 3, 1))
				want = []string{"api/10.0.3.1:80", "web/10.0.1.1:80", "web/10.0.1.2:80"}
			case "replace": // a complete listing: only it
				sinks[0].Replace([]Group{eps("k2", "api", 3, 1)})
				want = []string{"api/10.0.3.1:80"}
			}
			waitApplied(t, store)
			if got := store.addrs("a"); !slices.Equal(got, want) {
				t.Fatalf("after recovery (%s): %v, want %v", how, got, want)
			}
			if st := m.Status()[0]; st.Expired || st.Stale {
				t.Fatalf("status after recovery %+v", st)
			}
			// Expiring again works the same way.
			sinks[0].Failed(errors.New("down again"))
			waitDrop(t, store)
			waitStatus(t, m, func(s SourceStatus) bool { return s.Expired && s.Expiries == 2 })
		})
	}
}

func TestManagerStaleAfterCountsFromLastSuccess(t *testing.T) {
	store := newMemStore()
	c := &clock{now: time.Unix(1000, 0)}
	m, sinks := startManagerWith(t, store, 1, SourceConfig{StaleAfter: Duration(time.Minute)}, ManagerOptions{Now: c.Now})
	sinks[0].Replace([]Group{eps("k1", "web", 1, 1)})
	waitApplied(t, store)
	st := m.states[0]

	c.Add(50 * time.Second)
	sinks[0].Failed(errors.New("down")) // 50s after the last success: 10s left
	st.signal()
	c.Add(9 * time.Second)
	st.signal()
	sinks[0].Healthy() // recovered in time: nothing is dropped
	c.Add(time.Hour)
	st.signal()
	sinks[0].Failed(errors.New("down")) // a fresh failure, an hour after the last success: drop
	waitDrop(t, store)
	// The status is marked right after the drop returns: wait for it.
	if got := waitStatus(t, m, func(s SourceStatus) bool { return s.Expired }); got.Expiries != 1 {
		t.Fatalf("status %+v", got)
	}
	select {
	case p := <-store.drops:
		t.Fatalf("dropped twice (%s)", p)
	default:
	}
}

func TestManagerWithoutStaleAfterNeverDrops(t *testing.T) {
	store := newMemStore()
	c := &clock{now: time.Unix(1000, 0)}
	m, sinks := startManagerWith(t, store, 1, SourceConfig{}, ManagerOptions{Now: c.Now})
	sinks[0].Replace([]Group{eps("k1", "web", 1, 1)})
	waitApplied(t, store)
	sinks[0].Failed(errors.New("down"))
	c.Add(1000 * time.Hour)
	m.states[0].signal()
	sinks[0].Update(eps("k2", "api", 2, 1)) // a later apply proves the step ran
	waitApplied(t, store)
	if len(store.drops) != 0 || m.Status()[0].Expired {
		t.Fatal("a source without stale_after was dropped")
	}
}

func guarded(confirm time.Duration) SourceConfig {
	return SourceConfig{DeletionGuard: DeletionGuard{MaxWithdraw: 0.5, ConfirmFor: confirm, MinEndpoints: 4}}
}

func TestManagerDeletionGuardHoldsAndNewerHandOverUndoes(t *testing.T) {
	store := newMemStore()
	m, sinks := startManagerWith(t, store, 1, guarded(time.Hour), ManagerOptions{})
	sinks[0].Replace([]Group{eps("k1", "web", 1, 8), eps("k2", "api", 2, 2)})
	waitApplied(t, store)

	// 6 of 10 withdrawn at once: held.
	sinks[0].Update(eps("k1", "web", 1, 2))
	st := waitStatus(t, m, func(s SourceStatus) bool { return s.HeldWithdrawal })
	if st.HeldEndpoints != 6 || st.GuardTrips != 1 || st.HeldSince.IsZero() {
		t.Fatalf("status while held %+v", st)
	}
	if n := len(store.addrs("a")); n != 10 {
		t.Fatalf("the held withdrawal reached the store: %d endpoints", n)
	}
	// The source takes it back, and changes k2: one transaction, nothing withdrawn.
	sinks[0].Update(eps("k1", "web", 1, 8), eps("k2", "api", 2, 3))
	got := waitApplied(t, store)
	if len(got) != 2 || countEndpoints(got[0])+countEndpoints(got[1]) != 11 {
		t.Fatalf("applied %+v", got)
	}
	if st := m.Status()[0]; st.HeldWithdrawal || st.HeldEndpoints != 0 || st.GuardTrips != 1 {
		t.Fatalf("status after undo %+v", st)
	}
	// A small withdrawal passes at once.
	sinks[0].Update(eps("k2", "api", 2, 1))
	waitApplied(t, store)
	if n := len(store.addrs("a")); n != 9 {
		t.Fatalf("%d endpoints", n)
	}
}

func TestManagerDeletionGuardAppliesWhenItPersists(t *testing.T) {
	store := newMemStore()
	m, sinks := startManagerWith(t, store, 1, guarded(20*time.Millisecond), ManagerOptions{})
	sinks[0].Replace([]Group{eps("k1", "web", 1, 8), eps("k2", "api", 2, 2)})
	waitApplied(t, store)
	sinks[0].Replace([]Group{eps("k2", "api", 2, 2)}) // a listing without k1: 8 of 10
	got := waitApplied(t, store)                      // after the confirmation period
	if len(got) != 2 || got[0].Key != "k1" || len(got[0].Services) != 0 {
		t.Fatalf("applied %+v", got)
	}
	if addrs := store.addrs("a"); len(addrs) != 2 {
		t.Fatalf("store %v", addrs)
	}
	st := m.Status()[0]
	if st.HeldWithdrawal || st.GuardTrips != 1 {
		t.Fatalf("status %+v", st)
	}
}

func TestManagerDeletionGuardKeepsTheFirstHoldTime(t *testing.T) {
	store := newMemStore()
	c := &clock{now: time.Unix(1000, 0)}
	m, sinks := startManagerWith(t, store, 1, guarded(time.Minute), ManagerOptions{Now: c.Now})
	sinks[0].Replace([]Group{eps("k1", "web", 1, 10)})
	waitApplied(t, store)
	sinks[0].Update(eps("k1", "web", 1, 2))
	first := waitStatus(t, m, func(s SourceStatus) bool { return s.HeldWithdrawal }).HeldSince
	c.Add(40 * time.Second)
	sinks[0].Update(eps("k1", "web", 1, 3)) // still a mass withdrawal: the hold goes on
	waitStatus(t, m, func(s SourceStatus) bool { return s.HeldEndpoints == 7 })
	if st := m.Status()[0]; !st.HeldSince.Equal(first) || st.GuardTrips != 1 {
		t.Fatalf("status %+v, first hold at %v", st, first)
	}
	c.Add(30 * time.Second) // 70s after the first hold
	m.states[0].signal()
	got := waitApplied(t, store)
	if len(got) != 1 || countEndpoints(got[0]) != 3 {
		t.Fatalf("applied %+v", got)
	}
}

func TestManagerDeletionGuardSpares(t *testing.T) {
	cases := map[string]struct {
		guard DeletionGuard
		start []Group
		next  Group
	}{
		"below min_endpoints":                    {DeletionGuard{MaxWithdraw: 0.5, ConfirmFor: time.Hour, MinEndpoints: 10}, []Group{eps("k", "web", 1, 9)}, Group{Key: "k"}},
		"exactly the share":                      {DeletionGuard{MaxWithdraw: 0.5, ConfirmFor: time.Hour, MinEndpoints: 1}, []Group{eps("k", "web", 1, 4), eps("j", "api", 2, 4)}, Group{Key: "k"}},
		"guard off":                              {DeletionGuard{MaxWithdraw: 0.5}, []Group{eps("k", "web", 1, 20)}, Group{Key: "k"}},
		"moves are no withdrawals of other keys": {DeletionGuard{MaxWithdraw: 0.1, ConfirmFor: time.Hour, MinEndpoints: 1}, []Group{eps("k", "web", 1, 10)}, eps("j", "web", 2, 10)},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			store := newMemStore()
			m, sinks := startManagerWith(t, store, 1, SourceConfig{DeletionGuard: tc.guard}, ManagerOptions{})
			sinks[0].Replace(tc.start)
			waitApplied(t, store)
			sinks[0].Update(tc.next)
			waitApplied(t, store)
			if st := m.Status()[0]; st.GuardTrips != 0 {
				t.Fatalf("status %+v", st)
			}
		})
	}
}

func TestManagerWrapSink(t *testing.T) {
	store := newMemStore()
	var seen []string
	m, sinks := startManagerWith(t, store, 2, SourceConfig{}, ManagerOptions{WrapSink: func(cfg SourceConfig, s Sink) Sink {
		seen = append(seen, cfg.Name)
		if cfg.Name == "b" {
			return &wrapped{s}
		}
		return s
	}})
	if !slices.Equal(seen, []string{"a", "b"}) {
		t.Fatalf("WrapSink called for %v", seen)
	}
	if _, ok := m.states[1].sink.(*wrapped); !ok || m.states[0].sink != Sink(m.states[0]) {
		t.Fatal("the wrapper is not what the source gets")
	}
	sinks[1].Replace([]Group{svcGroup("k", "web")})
	waitApplied(t, store)
}

func TestManagerUpdateHealthIsNoContact(t *testing.T) {
	store := newMemStore()
	m, sinks := startManagerWith(t, store, 1, SourceConfig{StaleAfter: Duration(50 * time.Millisecond)}, ManagerOptions{})
	sinks[0].Replace([]Group{eps("k1", "web", 1, 2)})
	waitApplied(t, store)
	sinks[0].Failed(errors.New("down"))
	last := m.Status()[0].LastSuccess
	// The checker's re-hand-over of k1 with new health: applied, but the source stays stale…
	g := eps("k1", "web", 1, 2)
	g.Services[0].Endpoints[0].Health = HealthCritical
	sinks[0].(HealthUpdater).UpdateHealth(g)
	waitApplied(t, store)
	if st := m.Status()[0]; !st.Stale || !st.LastSuccess.Equal(last) {
		t.Fatalf("a health update counted as contact: %+v", st)
	}
	// …and expires on time; health updates while expired wait for the recovery.
	waitDrop(t, store)
	waitStatus(t, m, func(s SourceStatus) bool { return s.Expired })
	g2 := eps("k1", "web", 1, 2)
	g2.Services[0].Endpoints[1].Health = HealthCritical
	sinks[0].(HealthUpdater).UpdateHealth(g2)
	sinks[0].Healthy()
	got := waitApplied(t, store)
	if len(got) != 1 || got[0].Services[0].Endpoints[1].Health != HealthCritical || got[0].Services[0].Endpoints[0].Health != HealthUnknown {
		t.Fatalf("restored %+v", got)
	}
	if st := m.Status()[0]; st.Stale || st.Expired {
		t.Fatalf("status %+v", st)
	}
}

// rejectingSource counts objects it left out.
type rejectingSource struct{ scriptSource }

func (rejectingSource) Rejected() uint64 { return 7 }

func TestStatusReportsRejectedObjects(t *testing.T) {
	m := NewManager(newMemStore(), []Instance{{Config: SourceConfig{Name: "r", Kind: "test"}, Source: &rejectingSource{}}}, ManagerOptions{})
	if got := m.Status()[0].Rejected; got != 7 {
		t.Fatalf("Rejected = %d, want 7", got)
	}
}

// timedMemStore records the hand-over time ApplyAt is given.
type timedMemStore struct {
	*memStore
	at chan time.Time
}

func (s timedMemStore) ApplyAt(provider string, groups []Group, at time.Time) (bool, error) {
	s.at <- at
	return s.memStore.ApplyAt(provider, groups, at)
}

func TestManagerPassesHandOverTimeToTheStore(t *testing.T) {
	store := timedMemStore{newMemStore(), make(chan time.Time, 10)}
	_, sinks := startManager(t, store, 1)
	before := time.Now()
	sinks[0].Replace([]Group{svcGroup("k1", "web")})
	select {
	case at := <-store.at:
		if at.Before(before) || at.After(time.Now()) {
			t.Fatalf("hand-over time %v outside the call", at)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ApplyAt never called")
	}
}

// A group the store rejects is retried alone, beside its siblings, with the
// same hand-over time.
func TestManagerRetriesGroupsWithTheHandOverTime(t *testing.T) {
	store := timedMemStore{newMemStore(), make(chan time.Time, 10)}
	store.reject = "bad"
	_, sinks := startManager(t, store, 1)
	sinks[0].Replace([]Group{svcGroup("bad", "db"), svcGroup("k1", "web")})
	var times []time.Time
	for len(times) < 3 { // both groups together, then each alone
		select {
		case at := <-store.at:
			times = append(times, at)
		case <-time.After(5 * time.Second):
			t.Fatalf("ApplyAt called %d times, want 3", len(times))
		}
	}
	for _, at := range times[1:] {
		if !at.Equal(times[0]) {
			t.Fatalf("hand-over times %v: the retries lost it", times)
		}
	}
}

// TestGoneCountsBothWays checks the pairwise count of withdrawn endpoints
// (small groups) against the set-based one (large groups) on random groups.
func TestGoneCountsBothWays(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	group := func(n int) Group {
		var g Group
		for s := range 1 + rng.IntN(3) {
			svc := Service{Authority: Authority{Host: fmt.Sprintf("s%d.test", s%2), Port: uint16(80 + s)}}
			for range n {
				svc.Endpoints = append(svc.Endpoints, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(12))}), 80)})
			}
			g.Services = append(g.Services, svc)
		}
		return g
	}
	bySet := func(old, g Group) int {
		keep := map[epKey]bool{}
		for _, s := range g.Services {
			for _, e := range s.Endpoints {
				keep[epKey{s.Authority, e.Addr}] = true
			}
		}
		n := 0
		for _, s := range old.Services {
			for _, e := range s.Endpoints {
				if !keep[epKey{s.Authority, e.Addr}] {
					n++
				}
			}
		}
		return n
	}
	for i := range 2000 {
		old, g := group(rng.IntN(8)), group(rng.IntN(8))
		if i%10 == 0 { // past the pairwise bound
			old, g = group(20+rng.IntN(20)), group(20+rng.IntN(20))
		}
		if got, want := gone(old, g), bySet(old, g); got != want {
			t.Fatalf("case %d: gone = %d, want %d", i, got, want)
		}
	}
}

// lockedBuffer is a log destination written by the manager's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestManagerLogsRecovery: a source that failed logs its recovery once, at
// the first successful contact, with how long it was stale and what its
// last error was; a source that never failed logs none.
func TestManagerLogsRecovery(t *testing.T) {
	logs := &lockedBuffer{}
	store := newMemStore()
	m, sinks := startManagerWith(t, store, 1, SourceConfig{}, ManagerOptions{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	sinks[0].Replace([]Group{svcGroup("k1", "web")})
	waitApplied(t, store)
	sinks[0].Healthy()
	if strings.Contains(logs.String(), "source recovered") {
		t.Fatalf("a source that never failed logged a recovery:\n%s", logs)
	}
	sinks[0].Failed(errors.New("backend down"))
	sinks[0].Failed(errors.New("still down"))
	sinks[0].Healthy()
	sinks[0].Healthy()
	if n := strings.Count(logs.String(), "source recovered"); n != 1 {
		t.Fatalf("%d recovery lines, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), `last_error="still down"`) || !strings.Contains(logs.String(), "stale_for=") {
		t.Fatalf("the recovery line lacks its last error or duration:\n%s", logs)
	}
	if m.Status()[0].Stale {
		t.Fatal("still stale after recovering")
	}
}

// signalStore answers every ApplyAt as a change and says so on done.
type signalStore struct{ done chan struct{} }

func (s *signalStore) ApplyAt(string, []Group, time.Time) (bool, error) {
	s.done <- struct{}{}
	return true, nil
}
func (s *signalStore) Keys(string) []string              { return nil }
func (s *signalStore) DropProvider(string) (bool, error) { return false, nil }

// BenchmarkManagerUpdate is the manager's own cost per change: one group
// handed over, coalesced, and applied to a store that does nothing.
func BenchmarkManagerUpdate(b *testing.B) {
	st := &signalStore{done: make(chan struct{})}
	_, sinks := startManagerWith(b, st, 1, SourceConfig{}, ManagerOptions{})
	groups := [2]Group{svcGroup("k", "web"), svcGroup("k", "api")}
	b.ReportAllocs()
	for n := 0; b.Loop(); n++ {
		sinks[0].Update(groups[n%2])
		<-st.done
	}
}
