package admit

import (
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestHorizonPasses(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	a := New(100, 1, func() time.Time { return clock }, func(int64) int64 { return 0 })
	if ok, _ := a.Admit(); !ok {
		t.Fatal("first stream refused")
	}
	var last time.Duration
	for i := range 50 {
		ok, d := a.Admit()
		if ok || d <= last {
			t.Fatalf("refusal %d: admitted %v, delay %v after %v: want a later slot each time", i, ok, d, last)
		}
		last = d
	}
	clock = clock.Add(last) // nobody came back
	if ok, _ := a.Admit(); !ok {
		t.Fatal("newcomer refused after the queue's horizon passed")
	}
	// The next refusal is one slot out, not behind the clients that left.
	if ok, d := a.Admit(); ok || d > 20*time.Millisecond {
		t.Fatalf("after the horizon: admitted %v, delay %v, want a refusal for about one slot (10ms)", ok, d)
	}
}

func TestDefaultBurstIsOneSecond(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	a := New(50, 0, func() time.Time { return clock }, nil)
	for i := range 50 {
		if ok, _ := a.Admit(); !ok {
			t.Fatalf("stream %d of the first second's 50 refused", i)
		}
	}
	if ok, _ := a.Admit(); ok {
		t.Fatal("the 51st stream in the same instant was admitted")
	}
}

func TestNoRateAdmitsAll(t *testing.T) {
	a := New(-1, 0, nil, nil)
	for range 1000 {
		if ok, _ := a.Admit(); !ok {
			t.Fatal("refused without a rate limit")
		}
	}
}

func TestFullDelayIsJittered(t *testing.T) {
	a := New(-1, 0, nil, nil)
	seen := map[time.Duration]bool{}
	for range 100 {
		d := a.FullDelay()
		if d < MaxStreamsRetry || d >= 2*MaxStreamsRetry {
			t.Fatalf("delay %v outside [1s, 2s)", d)
		}
		seen[d] = true
	}
	if len(seen) < 50 {
		t.Fatalf("only %d distinct delays in 100", len(seen))
	}
}

func TestRetryLater(t *testing.T) {
	err := RetryLater(1500*time.Millisecond, "%d streams open", 7)
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || st.Message() != "7 streams open; retry later" {
		t.Fatalf("got %v %q", st.Code(), st.Message())
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.RetryDelay.AsDuration() == 1500*time.Millisecond {
			return
		}
	}
	t.Fatalf("no RetryInfo of 1.5s in %v", st.Details())
}
