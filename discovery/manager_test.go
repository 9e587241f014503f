package discovery

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"
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
	reject  string // a group key Apply refuses
}

func newMemStore() *memStore {
	return &memStore{groups: map[string]map[string]Group{}, applied: make(chan []Group, 100)}
}

func (s *memStore) Apply(provider string, groups []Group) (bool, error) {
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
	var instances []Instance
	src := &scriptSource{sinks: make(chan Sink, n)}
	for i := 0; i < n; i++ {
		instances = append(instances, Instance{Config: SourceConfig{Name: string(rune('a' + i)), Kind: "test"}, Source: src})
	}
	m := NewManager(store, instances, ManagerOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sinks := make([]Sink, n)
	got := map[*sourceState]bool{}
	for i := 0; i < n; i++ {
		s := <-src.sinks
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
	st := m.Status()[0]
	if !st.Synced || st.Errors == 0 {
		t.Fatalf("status %+v", st)
	}
}

func TestManagerWithoutSourcesIsSynced(t *testing.T) {
	m := NewManager(newMemStore(), nil, ManagerOptions{})
	select {
	case <-m.Synced():
	default:
		t.Fatal("no sources: should be synced at once")
	}
}
