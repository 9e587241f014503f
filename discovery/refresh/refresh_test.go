package refresh

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tributary-mesh/tributary/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recSink records sink calls as strings: "replace(a=1,b=2)", "update(a=0)",
// "healthy", "failed(msg)"; n is the endpoint count of each group.
type recSink struct{ calls chan string }

func describe(op string, gs []discovery.Group) string {
	parts := make([]string, len(gs))
	for i, g := range gs {
		n := 0
		for _, s := range g.Services {
			n += len(s.Endpoints)
		}
		parts[i] = fmt.Sprintf("%s=%d", g.Key, n)
	}
	return op + "(" + strings.Join(parts, ",") + ")"
}

func (r *recSink) Update(gs ...discovery.Group) { r.calls <- describe("update", gs) }
func (r *recSink) Replace(gs []discovery.Group) { r.calls <- describe("replace", gs) }
func (r *recSink) Healthy()                     { r.calls <- "healthy" }
func (r *recSink) Failed(err error)             { r.calls <- "failed(" + err.Error() + ")" }

func group(key string, n int) discovery.Group {
	svc := discovery.Service{Authority: discovery.Authority{Host: "web", Port: 80}}
	for i := 1; i <= n; i++ {
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 80)})
	}
	return discovery.Group{Key: key, Services: []discovery.Service{svc}}
}

// script runs a Source over a list of poll results; waits are recorded and
// return at once. After the script it blocks until cancelled.
type script struct {
	results []Result
	waits   chan time.Duration
}

func run(t *testing.T, opts Options, results ...Result) (*recSink, chan time.Duration) {
	t.Helper()
	sc := &script{results: results, waits: make(chan time.Duration, 100)}
	i := 0
	s := New(func(ctx context.Context) Result {
		if i < len(sc.results) {
			i++
			return sc.results[i-1]
		}
		<-ctx.Done()
		return Result{Err: ctx.Err()}
	}, opts)
	s.after = func(d time.Duration) (<-chan time.Time, func() bool) {
		sc.waits <- d
		c := make(chan time.Time, 1)
		c <- time.Time{}
		return c, func() bool { return true }
	}
	sink := &recSink{calls: make(chan string, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, sink) }()
	t.Cleanup(func() { cancel(); <-done })
	return sink, sc.waits
}

func expect(t *testing.T, sink *recSink, want ...string) {
	t.Helper()
	for _, w := range want {
		select {
		case got := <-sink.calls:
			if got != w {
				t.Fatalf("sink call %q, want %q", got, w)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no sink call, want %q", w)
		}
	}
}

func TestHandOverOnlyWhatChanged(t *testing.T) {
	sink, _ := run(t, Options{Interval: time.Second},
		Result{Groups: []discovery.Group{group("b", 2), group("a", 1), {Key: "empty"}}},
		Result{Groups: []discovery.Group{group("a", 1), group("b", 2)}},  // nothing new
		Result{Groups: []discovery.Group{group("a", 3)}},                 // b untouched
		Result{Groups: []discovery.Group{{Key: "b"}, {Key: "never"}}},    // b withdrawn; never was not known
		Result{Groups: []discovery.Group{group("c", 1)}, Complete: true}, // a withdrawn as unlisted
		Result{Groups: []discovery.Group{group("c", 1), group("c", 2)}},  // the last of a key wins
	)
	expect(t, sink, "replace(a=1,b=2)", "healthy", "update(a=3)", "update(b=0)", "update(a=0,c=1)", "update(c=2)")
}

func TestErrors(t *testing.T) {
	boom := errors.New("boom")
	sink, waits := run(t, Options{Interval: time.Minute, MinBackoff: time.Second, MaxBackoff: 4 * time.Second},
		Result{Err: boom}, // the first poll fails as a whole: still a complete (empty) state
		Result{Err: boom}, // backoff grows
		Result{Groups: []discovery.Group{group("a", 1)}, Err: boom}, // partial: hand over, then fail
		Result{Groups: []discovery.Group{group("a", 1)}, Err: boom}, // partial, nothing new: contact, then fail
		Result{Err: boom}, Result{Err: boom}, Result{Err: boom}, Result{Err: boom},
		Result{Next: 42 * time.Second},
		Result{Err: context.Canceled},
	)
	expect(t, sink, "replace()", "failed(boom)", "failed(boom)", "update(a=1)", "failed(boom)", "healthy", "failed(boom)",
		"failed(boom)", "failed(boom)", "failed(boom)", "failed(boom)", "healthy")
	var got []time.Duration
	for range 10 {
		got = append(got, <-waits)
	}
	within := func(d, base time.Duration) bool { return d >= base*8/10 && d <= base*12/10 }
	if !within(got[0], time.Second) || !within(got[1], 2*time.Second) {
		t.Errorf("backoff %v, want about 1s then 2s", got[:2])
	}
	if got[2] != time.Minute || got[3] != time.Minute {
		t.Errorf("after a partial success the interval is used: %v", got[2:4])
	}
	if !within(got[4], time.Second) || !within(got[5], 2*time.Second) || !within(got[6], 4*time.Second) || !within(got[7], 4*time.Second) {
		t.Errorf("backoff %v, want about 1s 2s 4s 4s", got[4:8])
	}
	if got[8] != 42*time.Second {
		t.Errorf("Next ignored: %v", got[8])
	}
	// A context.Canceled error from the poll is not reported.
	// (the tenth wait above came after it: it was handled)
	select {
	case c := <-sink.calls:
		t.Fatalf("unexpected call %q", c)
	default:
	}
}

func TestCancelEndsRunPromptly(t *testing.T) {
	var mu sync.Mutex
	polls := 0
	s := New(func(ctx context.Context) Result {
		mu.Lock()
		polls++
		mu.Unlock()
		return Result{}
	}, Options{Interval: time.Hour})
	sink := &recSink{calls: make(chan string, 10)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, sink) }()
	expect(t, sink, "replace()")
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return on cancel")
	}
	if polls != 1 {
		t.Fatalf("%d polls", polls)
	}
}

func TestGroupsEqual(t *testing.T) {
	a, b := group("a", 2), group("a", 2)
	if !GroupsEqual(a, b) {
		t.Fatal("equal groups")
	}
	b.Services[0].Endpoints[1].Weight = 3
	if GroupsEqual(a, b) {
		t.Fatal("weight ignored")
	}
	c := group("a", 2)
	c.Services[0].Opaque = true
	if GroupsEqual(a, c) || GroupsEqual(a, group("b", 2)) || GroupsEqual(a, group("a", 1)) {
		t.Fatal("differences ignored")
	}
}
