package destination

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/grpc"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// The hub shares work between the streams of one service. Every Get
// stream for the same (authority, client zone) subscribes to one hubEntry.
// The entry has one goroutine that sleeps on the registry's watch channels
// for the authority and its aliases; when their version moves it builds the
// new snapshot — the view at that version, whose messages are encoded once —
// publishes it, and starts a send job for every subscriber that is not
// already sending. A job sends its stream the difference from the snapshot
// it last sent to the newest one, until the stream has caught up, and ends.
// So an idle stream costs a goroutine parked on its context and nothing
// else, a change to a service watched by 10,000 streams is read, resolved
// and encoded once, and a client that stops reading holds up only its own
// job: the next snapshots skip it until it drains, and then it gets one
// diff to the newest.
type hub struct {
	store *cache.Store
	// serve is a send job: it brings a subscriber up to the newest
	// snapshot (Server.serve).
	serve func(*subscriber)
	// build computes the view for key (members are its authority's
	// federation members).
	// Its reads add the watches that wake the entry for the next change.
	build func(snap *cache.Snapshot, ws memdb.WatchSet, key hubKey, members []discovery.Authority) view
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

	snap atomic.Pointer[snapshot] // the newest; nil until the first is built

	subsMu sync.Mutex
	subs   map[*subscriber]struct{}
}

// subscriber is one Get stream of an entry, as its send jobs see it.
type subscriber struct {
	entry  *hubEntry
	stream grpc.ServerStream
	g      *getStream

	// state says who may touch last and send on the stream: subIdle (no
	// one: a job may start), subBusy (one job), subClosed (the stream's
	// handler is leaving; no job may start), subFailed (a send failed).
	state atomic.Int32
	last  *snapshot // what the stream was last sent; owned by the busy job

	failed   chan error    // the first failed send, for the handler to return
	released chan struct{} // a job that finds the stream closed says it is done
}

const (
	subIdle int32 = iota
	subBusy
	subClosed
	subFailed
)

// acquire returns the entry for key, starting it; release it when the
// stream ends.
func (h *hub) acquire(key hubKey) *hubEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.entries[key]
	if e == nil {
		ctx, cancel := context.WithCancel(context.Background())
		e = &hubEntry{key: key, stop: cancel, subs: map[*subscriber]struct{}{}}
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
		// One read of the members' rows both builds the view and arms the
		// watches; a wake that changed nothing here (a watch also fires for
		// a neighbour in the tree) builds a view of the same version, which
		// is dropped.
		ws := memdb.NewWatchSet()
		v := h.build(h.store.Snapshot(), ws, e.key, members)
		if cur == nil || v.version != cur.version {
			cur = &snapshot{version: v.version, view: v, zone: e.key.zone}
			e.snap.Store(cur)
			h.dispatch(e)
		}
		if ws.WatchCtx(ctx) != nil {
			return
		}
	}
}

// subscribe adds a stream to the entry and starts its first send if the
// entry has a snapshot already. Call unsubscribe when the stream ends.
func (h *hub) subscribe(e *hubEntry, g *getStream, stream grpc.ServerStream) *subscriber {
	sub := &subscriber{entry: e, stream: stream, g: g, failed: make(chan error, 1), released: make(chan struct{}, 1)}
	e.subsMu.Lock()
	e.subs[sub] = struct{}{}
	e.subsMu.Unlock()
	if e.snap.Load() != nil && sub.state.CompareAndSwap(subIdle, subBusy) {
		go h.serve(sub)
	}
	return sub
}

// unsubscribe removes a stream and returns once no send job is running for
// it, so that nothing touches the stream after its handler returns.
func (h *hub) unsubscribe(sub *subscriber) {
	e := sub.entry
	e.subsMu.Lock()
	delete(e.subs, sub)
	e.subsMu.Unlock()
	if sub.state.Swap(subClosed) == subBusy {
		<-sub.released
	}
}

// dispatch starts the send jobs of every idle subscriber of e, after a new
// snapshot was published: one batch, served by as few goroutines as the
// cores can keep busy, so that the streams of a connection get their
// messages in one burst (one write) and a change wakes one goroutine rather
// than one per stream.
func (h *hub) dispatch(e *hubEntry) {
	e.subsMu.Lock()
	b := &batch{hub: h}
	for sub := range e.subs {
		if sub.state.CompareAndSwap(subIdle, subBusy) {
			b.subs = append(b.subs, sub)
		}
	}
	e.subsMu.Unlock()
	if len(b.subs) > 0 {
		b.start()
	}
}

const (
	// batchPerWorker is how many streams of a batch a worker serves before
	// another is started for it.
	batchPerWorker = 64
	// batchRescue: a batch that has claimed no subscriber over a whole
	// period of this (so within two) gets another worker. Sends take
	// microseconds; one that blocks is a client that stopped reading, whose
	// send gRPC holds until it drains, and which must not hold up the rest
	// of its batch. A worker that was only descheduled costs an extra one.
	batchRescue = 5 * time.Millisecond
)

// batch is the subscribers one publish starts jobs for. Workers claim them
// in turn; rescue adds a worker when the batch stalls.
type batch struct {
	hub     *hub
	subs    []*subscriber
	next    atomic.Int32 // the next subscriber to claim
	workers atomic.Int32 // workers still running
	seen    int32        // next, at the last rescue check
	rescue  *time.Timer
}

func (b *batch) start() {
	workers := min(runtime.GOMAXPROCS(0), (len(b.subs)+batchPerWorker-1)/batchPerWorker)
	b.workers.Store(int32(workers))
	b.rescue = time.AfterFunc(time.Hour, b.rescueStalled)
	b.rescue.Reset(batchRescue) // after the field is set: the callback reads it
	for range workers {
		go b.work()
	}
}

func (b *batch) work() {
	for {
		i := int(b.next.Add(1)) - 1
		if i >= len(b.subs) {
			break
		}
		b.hub.serve(b.subs[i])
	}
	if b.workers.Add(-1) == 0 {
		b.rescue.Stop()
	}
}

// rescueStalled runs on the batch's timer: if no subscriber was claimed
// since the last check and some are left, every worker is stuck in a send.
func (b *batch) rescueStalled() {
	next := b.next.Load()
	if int(next) >= len(b.subs) {
		return
	}
	if next == b.seen {
		b.workers.Add(1)
		go b.work()
	}
	b.seen = next
	b.rescue.Reset(batchRescue)
}

// done ends a send job that has sent what it could; it reports whether the
// job must go on because a newer snapshot was published meanwhile. A
// publish either sees the subscriber idle and starts a job itself, or
// happened before the check here, which then takes it over.
func (sub *subscriber) done() (more bool) {
	last := sub.last // once idle, another job may own it
	if !sub.state.CompareAndSwap(subBusy, subIdle) {
		sub.released <- struct{}{} // closed while we sent
		return false
	}
	return sub.entry.snap.Load() != last && sub.state.CompareAndSwap(subIdle, subBusy)
}

// fail records a job's failed send; no job starts for the stream again.
func (sub *subscriber) fail(err error) {
	sub.failed <- err
	if !sub.state.CompareAndSwap(subBusy, subFailed) {
		sub.released <- struct{}{}
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
