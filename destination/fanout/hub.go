// Package fanout is the protocol-neutral half of every streaming edge: it
// follows a service in the registry, builds the view once per change, and
// hands it to every subscriber of that service. The edges (Linkerd's
// destination API, xDS) are adapters: they say how a view is built from a
// registry snapshot (Options.Build) and how a subscriber is brought from
// the view it last got to the newest one (Client.Send).
//
// The rules it keeps for them: newest state wins — nothing is queued per
// subscriber, a subscriber that is slow gets one step to the newest view
// when it is ready; a change is read, resolved and built once per (service,
// client zone), whatever the number of subscribers; sends run as batches on
// a few short-lived workers, so a change wakes a handful of goroutines and
// a client that stops reading holds up only its own send.
package fanout

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// Key is what an entry follows: a service, for clients of one zone (the
// zone may shape the view: topology hints, locality order).
type Key struct {
	Authority discovery.Authority
	Zone      string
}

// BuildFunc computes the view of key at snap (members are the key's
// authority and its federation aliases) and its version: the largest store
// version among the members. Its reads must add their watches to ws, which
// wake the entry for the next change. A view whose version equals the last
// published one is dropped.
type BuildFunc[T any] func(snap *cache.Snapshot, ws memdb.WatchSet, key Key, members []discovery.Authority) (view *T, version uint64)

// Client is one subscriber as its edge sees it.
type Client[T any] interface {
	// Send brings the client from prev (nil: nothing sent yet) to cur.
	// Calls for one subscriber never overlap. An error ends the
	// subscription: no Send is made for it again, and the error is
	// delivered on Subscriber.Failed.
	Send(prev, cur *T) error
}

// Options configures a Hub.
type Options[T any] struct {
	Store      *cache.Store
	Federation *discovery.Federation // nil: no rules
	Build      BuildFunc[T]
}

// Hub shares the work between the subscribers of one key. Every subscriber
// of the same Key subscribes to one Entry. The entry has one goroutine that
// sleeps on the registry's watch channels for the authority and its
// aliases; when their version moves it builds the new view, publishes it,
// and starts a send job for every subscriber that is not already sending.
// A job sends its subscriber the step from the view it last sent to the
// newest, until it has caught up, and ends. So an idle subscriber costs a
// pointer to the view it last got, and a client that stops reading holds
// up only its own job: the next views skip it until it drains, and then it
// gets one step to the newest.
type Hub[T any] struct {
	store *cache.Store
	fed   *discovery.Federation
	build BuildFunc[T]
	// serve is a send job (Hub.serveSub; replaced in tests).
	serve func(*Subscriber[T])

	mu      sync.Mutex
	entries map[Key]*Entry[T]
	wg      sync.WaitGroup // entry goroutines
}

// New returns a hub; call Wait after the last subscriber left.
func New[T any](opts Options[T]) *Hub[T] {
	h := &Hub[T]{store: opts.Store, fed: opts.Federation, build: opts.Build, entries: map[Key]*Entry[T]{}}
	h.serve = h.serveSub
	return h
}

// Entry is the shared state of one key: the newest view and its
// subscribers.
type Entry[T any] struct {
	key  Key
	refs int // users of the entry; guarded by Hub.mu
	stop context.CancelFunc

	snap atomic.Pointer[T] // the newest; nil until the first is built

	subsMu sync.Mutex
	subs   map[*Subscriber[T]]struct{}
}

// Key is what the entry follows.
func (e *Entry[T]) Key() Key { return e.key }

// Current is the newest view, nil until the first is built.
func (e *Entry[T]) Current() *T { return e.snap.Load() }

// Subscriber is one client of an entry, as its send jobs see it.
type Subscriber[T any] struct {
	entry  *Entry[T]
	client Client[T]

	// state says who may touch last and call Send: subIdle (no one: a
	// job may start), subBusy (one job), subClosed (the client is
	// leaving; no job may start), subFailed (a send failed).
	state atomic.Int32
	last  *T // what the client was last sent; owned by the busy job

	failed   chan error    // the first failed send, for the client to return
	released chan struct{} // a job that finds the subscriber closed says it is done
}

const (
	subIdle int32 = iota
	subBusy
	subClosed
	subFailed
)

// Failed delivers the error of the send that ended the subscription.
func (sub *Subscriber[T]) Failed() <-chan error { return sub.failed }

// Entry is the entry the subscriber is on.
func (sub *Subscriber[T]) Entry() *Entry[T] { return sub.entry }

// Acquire returns the entry for key, starting it; Release it when done.
func (h *Hub[T]) Acquire(key Key) *Entry[T] {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.entries[key]
	if e == nil {
		ctx, cancel := context.WithCancel(context.Background())
		e = &Entry[T]{key: key, stop: cancel, subs: map[*Subscriber[T]]struct{}{}}
		h.entries[key] = e
		h.wg.Go(func() { h.follow(ctx, e) })
	}
	e.refs++
	return e
}

// Release gives back an entry from Acquire; the last release stops it.
func (h *Hub[T]) Release(e *Entry[T]) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(h.entries, e.key)
		e.stop()
	}
}

// Len is the number of entries running.
func (h *Hub[T]) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.entries)
}

// Wait returns once every entry goroutine has stopped (they stop with
// their last Release).
func (h *Hub[T]) Wait() { h.wg.Wait() }

// follow is an entry's goroutine: it publishes a view whenever the version
// of the key's members moves, until the last user leaves.
func (h *Hub[T]) follow(ctx context.Context, e *Entry[T]) {
	members := h.fed.Members(e.key.Authority)
	var have bool
	var cur uint64
	for {
		// One read of the members' rows both builds the view and arms the
		// watches; a wake that changed nothing here (a watch also fires for
		// a neighbour in the tree) builds a view of the same version, which
		// is dropped.
		ws := memdb.NewWatchSet()
		v, version := h.build(h.store.Snapshot(), ws, e.key, members)
		if !have || version != cur {
			have, cur = true, version
			e.snap.Store(v)
			h.dispatch(e)
		}
		if ws.WatchCtx(ctx) != nil {
			return
		}
	}
}

// Subscribe adds a client to the entry and starts its first send if the
// entry has a view already. Call Unsubscribe when the client leaves.
func (h *Hub[T]) Subscribe(e *Entry[T], c Client[T]) *Subscriber[T] {
	sub := &Subscriber[T]{entry: e, client: c, failed: make(chan error, 1), released: make(chan struct{}, 1)}
	e.subsMu.Lock()
	e.subs[sub] = struct{}{}
	e.subsMu.Unlock()
	if e.snap.Load() != nil && sub.state.CompareAndSwap(subIdle, subBusy) {
		go h.serve(sub)
	}
	return sub
}

// Unsubscribe removes a client and returns once no send job is running for
// it, so that nothing calls its Send after it returns.
func (h *Hub[T]) Unsubscribe(sub *Subscriber[T]) {
	e := sub.entry
	e.subsMu.Lock()
	delete(e.subs, sub)
	e.subsMu.Unlock()
	if sub.state.Swap(subClosed) == subBusy {
		<-sub.released
	}
}

// serveSub is a send job: it brings the subscriber from what it last got
// to the newest view, again if a newer one is published meanwhile, and
// ends when it has caught up.
func (h *Hub[T]) serveSub(sub *Subscriber[T]) {
	for {
		for cur := sub.entry.snap.Load(); cur != sub.last; cur = sub.entry.snap.Load() {
			if err := sub.client.Send(sub.last, cur); err != nil {
				sub.fail(err)
				return
			}
			sub.last = cur
		}
		if !sub.done() {
			return
		}
	}
}

// dispatch starts the send jobs of every idle subscriber of e, after a new
// view was published: one batch, served by as few goroutines as the cores
// can keep busy, so that the streams of a connection get their messages in
// one burst (one write) and a change wakes one goroutine rather than one
// per subscriber.
func (h *Hub[T]) dispatch(e *Entry[T]) {
	e.subsMu.Lock()
	b := &batch[T]{hub: h}
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
	// batchPerWorker is how many subscribers of a batch a worker serves
	// before another is started for it.
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
type batch[T any] struct {
	hub     *Hub[T]
	subs    []*Subscriber[T]
	next    atomic.Int32 // the next subscriber to claim
	workers atomic.Int32 // workers still running
	seen    int32        // next, at the last rescue check
	rescue  *time.Timer
}

func (b *batch[T]) start() {
	workers := min(runtime.GOMAXPROCS(0), (len(b.subs)+batchPerWorker-1)/batchPerWorker)
	b.workers.Store(int32(workers))
	b.rescue = time.AfterFunc(time.Hour, b.rescueStalled)
	b.rescue.Reset(batchRescue) // after the field is set: the callback reads it
	for range workers {
		go b.work()
	}
}

func (b *batch[T]) work() {
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
func (b *batch[T]) rescueStalled() {
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
// job must go on because a newer view was published meanwhile. A publish
// either sees the subscriber idle and starts a job itself, or happened
// before the check here, which then takes it over.
func (sub *Subscriber[T]) done() (more bool) {
	last := sub.last // once idle, another job may own it
	if !sub.state.CompareAndSwap(subBusy, subIdle) {
		sub.released <- struct{}{} // closed while we sent
		return false
	}
	return sub.entry.snap.Load() != last && sub.state.CompareAndSwap(subIdle, subBusy)
}

// fail records a job's failed send; no job starts for the subscriber again.
func (sub *Subscriber[T]) fail(err error) {
	sub.failed <- err
	if !sub.state.CompareAndSwap(subBusy, subFailed) {
		sub.released <- struct{}{}
	}
}
