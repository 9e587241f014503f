package retry

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		min, max time.Duration
		rand     float64
		want     []time.Duration // milliseconds
	}{
		{"doubles to max", time.Second, 5 * time.Second, 0.5, []time.Duration{1000, 2000, 4000, 5000, 5000}},
		{"lowest jitter", time.Second, 4 * time.Second, 0, []time.Duration{800, 1600, 3200, 3200}},
		{"highest jitter", time.Second, 4 * time.Second, 1, []time.Duration{1200, 2400, 4800, 4800}},
		{"max below min", 2 * time.Second, time.Second, 0.5, []time.Duration{2000, 2000, 2000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := Backoff{Min: tc.min, Max: tc.max, Rand: func() float64 { return tc.rand }}
			for i, w := range tc.want {
				if got := b.Next(); got != w*time.Millisecond {
					t.Fatalf("wait %d = %v, want %v", i, got, w*time.Millisecond)
				}
			}
		})
	}
}

func TestBackoffReset(t *testing.T) {
	b := Backoff{Min: time.Second, Max: time.Minute, Rand: func() float64 { return 0.5 }}
	b.Next()
	b.Next()
	b.Reset()
	if got := b.Next(); got != time.Second {
		t.Fatalf("after Reset: %v, want 1s", got)
	}
}

func TestBackoffRandomStaysWithinJitter(t *testing.T) {
	b := Backoff{Min: time.Second, Max: time.Second}
	for range 1000 {
		if d := b.Next(); d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("wait %v outside 0.8s..1.2s", d)
		}
	}
}

func TestWait(t *testing.T) {
	if err := Wait(context.Background(), 0); err != nil {
		t.Fatalf("Wait(0) = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Wait(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on a cancelled context = %v", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Wait(ctx, time.Hour) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait cancelled while waiting = %v", err)
	}
}

func TestWaitOnStopsTheTimer(t *testing.T) {
	stopped := 0
	c := make(chan time.Time, 1)
	c <- time.Time{}
	if err := WaitOn(context.Background(), c, func() bool { stopped++; return false }); err != nil || stopped != 1 {
		t.Fatalf("WaitOn = %v, stop called %d times", err, stopped)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WaitOn(ctx, nil, func() bool { stopped++; return true }); !errors.Is(err, context.Canceled) || stopped != 2 {
		t.Fatalf("WaitOn = %v, stop called %d times", err, stopped)
	}
}
