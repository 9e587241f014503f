package fanout

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitFor = 5 * time.Second

// TestBatchGoesOnPastABlockedSend: a send job that blocks (a client that
// stopped reading) must not hold up the rest of its batch — the batch's
// rescue timer adds a worker when nothing was claimed for a while.
func TestBatchGoesOnPastABlockedSend(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	served := map[*Subscriber[int]]bool{}
	allServed := make(chan struct{})
	var blocked *Subscriber[int]
	h := &Hub[int]{}
	b := &batch[int]{hub: h}
	for range 5 {
		b.subs = append(b.subs, &Subscriber[int]{})
	}
	blocked = b.subs[0] // claimed first, by the only worker a batch this small gets
	h.serve = func(sub *Subscriber[int]) {
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
		count := map[*Subscriber[int]]int{}
		var wg sync.WaitGroup
		wg.Add(n)
		h := &Hub[int]{serve: func(sub *Subscriber[int]) {
			mu.Lock()
			count[sub]++
			mu.Unlock()
			wg.Done()
		}}
		b := &batch[int]{hub: h}
		for range n {
			b.subs = append(b.subs, &Subscriber[int]{})
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
		sub  *Subscriber[int]
		gone atomic.Bool // unsubscribe returned
	}
	var mu sync.Mutex
	bySub := map[*Subscriber[int]]*tracked{}
	var violations atomic.Int32
	h := &Hub[int]{}
	h.serve = func(sub *Subscriber[int]) {
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
	e := &Entry[int]{subs: map[*Subscriber[int]]struct{}{}}
	subscribe := func() *tracked {
		// Registered before the first job can look it up.
		tr := &tracked{}
		mu.Lock()
		e.subsMu.Lock() // hold off dispatch until bySub knows the subscriber
		tr.sub = &Subscriber[int]{entry: e, failed: make(chan error, 1), released: make(chan struct{}, 1)}
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
			vv := int(v)
			e.snap.Store(&vv)
			h.dispatch(e)
		}
	})
	for i := range 400 {
		k := i % len(live)
		h.Unsubscribe(live[k].sub)
		live[k].gone.Store(true)
		live[k] = subscribe()
	}
	close(stop)
	wg.Wait()
	final := new(int)
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
		h.Unsubscribe(tr.sub)
	}
	if n := violations.Load(); n > 0 {
		t.Fatalf("%d sends on streams whose handler had returned", n)
	}
	for b := 0; b < 1000 && runtime.NumGoroutine() > 2; b++ {
		time.Sleep(time.Millisecond) // batch workers and timers wind down
	}
}
