package destination

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"
)

// TestBatchGoesOnPastABlockedSend: a send job that blocks (a client that
// stopped reading) must not hold up the rest of its batch — the batch's
// rescue timer adds a worker when nothing was claimed for a while.
func TestBatchGoesOnPastABlockedSend(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	served := map[*subscriber]bool{}
	allServed := make(chan struct{})
	var blocked *subscriber
	h := &hub{}
	b := &batch{hub: h}
	for range 5 {
		b.subs = append(b.subs, &subscriber{})
	}
	blocked = b.subs[0] // claimed first, by the only worker a batch this small gets
	h.serve = func(sub *subscriber) {
		if sub == blocked {
			<-release
			return
		}
		mu.Lock()
		defer mu.Unlock()
		served[sub] = true
		if len(served) == len(b.subs)-1 {
			close(allServed)
		}
	}
	b.start()
	select {
	case <-allServed:
	case <-time.After(waitFor):
		t.Fatal("the batch stopped behind a blocked send")
	}
	close(release)
	// Every worker ends and the timer stops once the blocked send returns
	// (goleak checks that nothing is left).
	deadline := time.Now().Add(waitFor)
	for b.workers.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still running", b.workers.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBatchServesEverySubscriberOnce: however many workers a batch gets,
// each subscriber is served exactly once.
func TestBatchServesEverySubscriberOnce(t *testing.T) {
	for _, n := range []int{1, 63, 64, 65, 1000} {
		var mu sync.Mutex
		count := map[*subscriber]int{}
		var wg sync.WaitGroup
		wg.Add(n)
		h := &hub{serve: func(sub *subscriber) {
			mu.Lock()
			count[sub]++
			mu.Unlock()
			wg.Done()
		}}
		b := &batch{hub: h}
		for range n {
			b.subs = append(b.subs, &subscriber{})
		}
		b.start()
		wg.Wait()
		for b.workers.Load() != 0 {
			time.Sleep(time.Millisecond)
		}
		for _, sub := range b.subs {
			if count[sub] != 1 {
				t.Fatalf("n=%d: a subscriber was served %d times", n, count[sub])
			}
		}
	}
}

// TestSubscribersRaceWithPublishes drives the subscriber state machine the
// way the hub does — publishes dispatching jobs while streams come and go —
// and checks that no job touches a stream after unsubscribe returned, and
// that every stream still subscribed ends holding the newest snapshot.
func TestSubscribersRaceWithPublishes(t *testing.T) {
	type tracked struct {
		sub  *subscriber
		gone atomic.Bool // unsubscribe returned
	}
	var mu sync.Mutex
	bySub := map[*subscriber]*tracked{}
	var violations atomic.Int32
	h := &hub{}
	h.serve = func(sub *subscriber) {
		mu.Lock()
		tr := bySub[sub]
		mu.Unlock()
		for {
			for cur := sub.entry.snap.Load(); cur != sub.last; cur = sub.entry.snap.Load() {
				if tr != nil && tr.gone.Load() {
					violations.Add(1)
				}
				sub.last = cur
			}
			if !sub.done() {
				return
			}
		}
	}
	e := &hubEntry{subs: map[*subscriber]struct{}{}}
	subscribe := func() *tracked {
		// Registered before the first job can look it up.
		tr := &tracked{}
		mu.Lock()
		e.subsMu.Lock() // hold off dispatch until bySub knows the subscriber
		tr.sub = &subscriber{entry: e, failed: make(chan error, 1), released: make(chan struct{}, 1)}
		e.subs[tr.sub] = struct{}{}
		bySub[tr.sub] = tr
		e.subsMu.Unlock()
		mu.Unlock()
		if e.snap.Load() != nil && tr.sub.state.CompareAndSwap(subIdle, subBusy) {
			go h.serve(tr.sub)
		}
		return tr
	}
	var live []*tracked
	for range 20 {
		live = append(live, subscribe())
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // the follower
		for v := uint64(1); ; v++ {
			select {
			case <-stop:
				return
			default:
			}
			e.snap.Store(&snapshot{version: v})
			h.dispatch(e)
		}
	})
	for i := range 400 {
		k := i % len(live)
		h.unsubscribe(live[k].sub)
		live[k].gone.Store(true)
		live[k] = subscribe()
	}
	close(stop)
	wg.Wait()
	final := &snapshot{version: 1 << 62}
	e.snap.Store(final)
	h.dispatch(e)
	deadline := time.Now().Add(waitFor)
	for _, tr := range live {
		for tr.sub.state.Load() != subIdle || tr.sub.last != final {
			if time.Now().After(deadline) {
				t.Fatalf("a stream did not catch up: state %d", tr.sub.state.Load())
			}
			time.Sleep(time.Millisecond)
		}
		h.unsubscribe(tr.sub)
	}
	if n := violations.Load(); n > 0 {
		t.Fatalf("%d sends on streams whose handler had returned", n)
	}
	for b := 0; b < 1000 && runtime.NumGoroutine() > 2; b++ {
		time.Sleep(time.Millisecond) // batch workers and timers wind down
	}
}

// TestWaitAny: a profile stream's wait wakes for any channel of its watch
// set, whatever its size (small sets take the shallow select, large ones
// memdb's), and reports the end of its context.
func TestWaitAny(t *testing.T) {
	for _, n := range []int{1, 4, 6, 7, 40} {
		for fire := 0; fire < n; fire += max(1, n/3) {
			ws := memdb.NewWatchSet()
			chs := make([]chan struct{}, n)
			for i := range chs {
				chs[i] = make(chan struct{})
				ws.Add(chs[i])
			}
			close(chs[fire])
			if !waitAny(context.Background(), ws) {
				t.Fatalf("n=%d: closing channel %d did not wake the wait", n, fire)
			}
		}
		ws := memdb.NewWatchSet()
		for range n {
			ws.Add(make(chan struct{}))
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if waitAny(ctx, ws) {
			t.Fatalf("n=%d: an ended context reported a change", n)
		}
	}
}
