package fanout

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// StallWatch finds streams whose send has been blocked for longer than a
// timeout: their client stopped reading, gRPC's flow control holds the
// send, and only closing the connection frees the stream. A send marks its
// stream busy with two atomic stores (SendState.Begin, End); one goroutine,
// running only while streams are registered, looks at every busy stream a
// few times per timeout. A timer per send did the same for about 5% of the
// server's CPU under churn.
type StallWatch struct {
	timeout time.Duration
	onStall func(*SendState) // closes the stream's connection; called once per stall

	mu      sync.Mutex
	streams map[*SendState]struct{}
	running bool
	idle    chan struct{} // Remove's signal that the last stream left
	wg      sync.WaitGroup
}

// NewStallWatch returns a watch that calls onStall once for every stream
// whose send has been blocked for timeout.
func NewStallWatch(timeout time.Duration, onStall func(*SendState)) *StallWatch {
	return &StallWatch{timeout: timeout, onStall: onStall}
}

// SendState is one stream's entry: since is when its current send began
// (Unix ns; 0 when it is not sending); stalled is set when the watch gave
// up on it.
type SendState struct {
	ctx     context.Context // the stream's: identifies its connection
	since   atomic.Int64
	stalled atomic.Bool
}

// Context is the stream's context, as given to Add.
func (st *SendState) Context() context.Context { return st.ctx }

// Begin marks the start of a send.
func (st *SendState) Begin() { st.since.Store(time.Now().UnixNano()) }

// End marks its end.
func (st *SendState) End() { st.since.Store(0) }

// Stalled reports whether the watch gave up on the stream.
func (st *SendState) Stalled() bool { return st.stalled.Load() }

// Add registers a stream and starts the watch goroutine if it is not
// running; Remove the stream when it ends.
func (w *StallWatch) Add(ctx context.Context) *SendState {
	st := &SendState{ctx: ctx}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.streams == nil {
		w.streams = map[*SendState]struct{}{}
		w.idle = make(chan struct{}, 1)
	}
	w.streams[st] = struct{}{}
	if !w.running {
		w.running = true
		w.wg.Go(w.run)
	}
	return st
}

// Remove unregisters a stream.
func (w *StallWatch) Remove(st *SendState) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.streams, st)
	if len(w.streams) == 0 && w.running {
		select {
		case w.idle <- struct{}{}:
		default:
		}
	}
}

// run checks every stream each quarter of the timeout, so a stall is acted
// on between 1 and 1.25 timeouts after the send began. It returns as soon
// as no stream is left.
func (w *StallWatch) run() {
	t := time.NewTicker(w.timeout / 4)
	defer t.Stop()
	var stalled []*SendState
	for {
		select {
		case <-t.C:
		case <-w.idle:
		}
		deadline := time.Now().Add(-w.timeout).UnixNano()
		w.mu.Lock()
		if len(w.streams) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		for st := range w.streams {
			if since := st.since.Load(); since != 0 && since < deadline && !st.stalled.Load() {
				st.stalled.Store(true)
				stalled = append(stalled, st)
			}
		}
		w.mu.Unlock()
		for i, st := range stalled {
			w.onStall(st)
			stalled[i] = nil
		}
		stalled = stalled[:0]
	}
}

// Wait returns once the watch goroutine has stopped (after the last stream
// was removed).
func (w *StallWatch) Wait() { w.wg.Wait() }
