package destination

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// stallWatch finds Get streams whose send has been blocked for longer than
// the send timeout: their client stopped reading, gRPC's flow control holds
// the send, and only closing the connection frees the stream (see
// Server.send). A send marks its stream busy with two atomic stores; one
// goroutine, running only while streams are open, looks at every busy
// stream a few times per timeout. A timer per send did the same for about
// 5% of the server's CPU under churn.
type stallWatch struct {
	timeout time.Duration
	onStall func(*sendState) // closes the stream's connection; called once per stall

	mu      sync.Mutex
	streams map[*sendState]struct{}
	running bool
	idle    chan struct{} // remove's signal that the last stream left
	wg      sync.WaitGroup
}

// sendState is one stream's entry: since is when its current send began
// (Unix ns; 0 when it is not sending); stalled is set when the watch gave
// up on it.
type sendState struct {
	ctx     context.Context // the stream's: identifies its connection
	since   atomic.Int64
	stalled atomic.Bool
}

// add registers a stream and starts the watch goroutine if it is not
// running; remove the stream when it ends.
func (w *stallWatch) add(ctx context.Context) *sendState {
	st := &sendState{ctx: ctx}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.streams == nil {
		w.streams = map[*sendState]struct{}{}
		w.idle = make(chan struct{}, 1)
	}
	w.streams[st] = struct{}{}
	if !w.running {
		w.running = true
		w.wg.Go(w.run)
	}
	return st
}

func (w *stallWatch) remove(st *sendState) {
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
func (w *stallWatch) run() {
	t := time.NewTicker(w.timeout / 4)
	defer t.Stop()
	var stalled []*sendState
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

// wait returns once the watch goroutine has stopped (after the last stream
// was removed).
func (w *stallWatch) wait() { w.wg.Wait() }
