package destination

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// The hub shares work between the streams of one service. Every Get
// stream for the same (authority, client zone) uses one hubEntry. The entry
// has one goroutine that sleeps on the registry's watch channels for the
// authority and its aliases; when their version moves it builds the new
// snapshot — the view at that version, whose messages are encoded once —
// publishes it and wakes the entry's streams by closing a channel. A stream
// keeps only a pointer to the snapshot it last sent, so an idle stream costs
// its goroutine, and a change to a service watched by 10,000 streams is
// read, resolved and encoded once, not 10,000 times.
type hub struct {
	store *cache.Store
	// build computes the view for key (members are its authority's
	// federation members).
	build func(snap *cache.Snapshot, key hubKey, members []discovery.Authority) view
	fed   *discovery.Federation

	mu      sync.Mutex
	entries map[hubKey]*hubEntry
	wg      sync.WaitGroup // entry goroutines
}

type hubKey struct {
	authority discovery.Authority
	zone      string // the client's zone: it decides zone_locality labels
}

type hubEntry struct {
	key  hubKey
	refs int // streams using the entry; guarded by hub.mu
	stop context.CancelFunc

	state atomic.Pointer[published]
}

// published is the entry's newest snapshot (nil until the first one is
// built) and the channel closed when a newer one replaces it.
type published struct {
	snap *snapshot
	next chan struct{}
}

// acquire returns the entry for key, starting it; release it when the
// stream ends.
func (h *hub) acquire(key hubKey) *hubEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.entries[key]
	if e == nil {
		ctx, cancel := context.WithCancel(context.Background())
		e = &hubEntry{key: key, stop: cancel}
		e.state.Store(&published{next: make(chan struct{})})
		h.entries[key] = e
		h.wg.Go(func() { h.follow(ctx, e) })
	}
	e.refs++
	return e
}

func (h *hub) release(e *hubEntry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(h.entries, e.key)
		e.stop()
	}
}

// wait stops every entry goroutine once their streams have ended.
func (h *hub) wait() { h.wg.Wait() }

// follow is an entry's goroutine: it publishes a snapshot whenever the
// version of the authority's members moves, until the last stream leaves.
func (h *hub) follow(ctx context.Context, e *hubEntry) {
	members := h.fed.Members(e.key.authority)
	var cur *snapshot
	for {
		ws := memdb.NewWatchSet()
		snap := h.store.Snapshot()
		version := hostsVersion(snap, ws, members)
		if cur == nil || version != cur.version {
			cur = &snapshot{version: version, view: h.build(snap, e.key, members), zone: e.key.zone}
			old := e.state.Load()
			e.state.Store(&published{snap: cur, next: make(chan struct{})})
			close(old.next)
		}
		if ws.WatchCtx(ctx) != nil {
			return
		}
	}
}

// snapshot is a view at one registry version, immutable once built, with
// the messages that lead to it encoded lazily and shared by every stream.
type snapshot struct {
	version uint64
	view    view
	zone    string

	firstOnce sync.Once
	first     []encoded
	diffs     sync.Map // previous snapshot's version (uint64) → []encoded
}

// encoded is one Update marshalled once and sent as is on every stream
// that needs it (see rawCodec).
type encoded struct {
	kind string // add, remove, no_endpoints: for metrics
	b    []byte
	msg  *preEncoded // b as SendMsg takes it
}

// messagesFrom returns what a stream that was last sent prev (nil: nothing
// yet) must be sent to hold this snapshot. The result is shared: callers
// must not modify it.
func (sn *snapshot) messagesFrom(prev *snapshot) []encoded {
	if prev == nil {
		sn.firstOnce.Do(func() { sn.first = encodeDiff(nil, &sn.view, sn.zone) })
		return sn.first
	}
	if m, ok := sn.diffs.Load(prev.version); ok {
		return m.([]encoded)
	}
	m, _ := sn.diffs.LoadOrStore(prev.version, encodeDiff(&prev.view, &sn.view, sn.zone))
	return m.([]encoded)
}

// hostsVersion adds watches for every member authority and returns the
// newest version among them. Store versions are global and increase with
// every change, so the maximum over the members moves whenever any member
// changes: it identifies the view.
func hostsVersion(snap *cache.Snapshot, ws memdb.WatchSet, members []discovery.Authority) uint64 {
	var v uint64
	for _, m := range members {
		if mv := snap.Watch(ws, m); mv > v {
			v = mv
		}
	}
	return v
}
