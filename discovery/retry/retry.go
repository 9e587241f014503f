// Package retry is how every source waits before trying again: one
// exponential backoff with jitter, and one wait that ends when the context
// does.
//
// Sources retry a backend that failed (an API server, a Consul agent, a DNS
// server) and must neither hammer it nor retry in lockstep with every other
// waiter that failed at the same moment, and must stop waiting at once when
// they are stopped.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the wait before each retry of something that keeps failing:
// Min, doubled per failure up to Max, each wait a random 80–120% of that
// step (±20%), so that waiters who failed together spread out. Reset after
// a success starts again from Min. A Backoff is not safe for concurrent
// use; each retrying loop has its own.
type Backoff struct {
	// Min is the first step and Max the largest; Max below Min counts as Min.
	Min, Max time.Duration
	// Rand returns a random number in [0, 1); nil means math/rand/v2's
	// Float64. Tests may fix it.
	Rand func() float64

	step time.Duration // the last step; 0 before the first failure
}

// Jitter is how far Next moves a step at random, either way.
const Jitter = 0.2

// Next returns the wait after one more failure.
func (b *Backoff) Next() time.Duration {
	switch {
	case b.step == 0:
		b.step = b.Min
	case b.step < b.Max:
		b.step = min(2*b.step, b.Max)
	}
	b.step = max(b.step, b.Min)
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return time.Duration(float64(b.step) * (1 - Jitter + 2*Jitter*r()))
}

// Reset forgets the failures: the next wait is about Min again.
func (b *Backoff) Reset() { b.step = 0 }

// Wait waits d, or until ctx is done; it returns ctx.Err() in that case and
// nil when d has passed. It never sleeps through a cancellation.
func Wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	return WaitOn(ctx, t.C, t.Stop)
}

// WaitOn is Wait on a timer the caller started: it waits for c, or until
// ctx is done, and then calls stop. It lets a test stand in for the clock.
func WaitOn(ctx context.Context, c <-chan time.Time, stop func() bool) error {
	defer stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c:
		return nil
	}
}
