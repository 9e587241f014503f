// Package admit is how the streaming edges (Linkerd's destination API,
// xDS) admit new streams and tell a refused client when to come back: one
// rule for every edge, so that a reconnect storm is spread the same way
// whichever API the clients speak.
package admit

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Admission rate-limits new streams and tells each refused client when to
// come back.
//
// A token bucket (rate, burst) admits. A refused client is placed in a
// virtual queue: the horizon is the time at which the token of the last
// client refused so far will have been refilled, and each refusal moves it
// one slot (1/rate) further: horizon = max(horizon, now) + 1/rate. The
// client's RetryInfo delay is horizon − now plus a jitter of less than a
// slot, so clients honouring it come back one per slot, in refusal order,
// each when a token has just been refilled for it: admitted on its first
// retry. The hint is where the client stands behind everyone refused
// before it, not the one-token deficit of the moment, which sent every
// refused client back within milliseconds to be refused again.
//
// Nothing is held per refused client. A client that never comes back
// leaves its slot's token in the bucket (up to the burst) for whoever comes
// next, and the horizon passes; a new stream that takes a token meant for
// a returning one (they cannot be told apart) makes that one wait once
// more, at the end of the queue.
type Admission struct {
	mu      sync.Mutex
	bucket  *rate.Limiter // nil: no rate limit
	slot    time.Duration // 1/rate
	horizon time.Time

	now func() time.Time
	// jitter returns a value in [0, n).
	jitter func(n int64) int64
}

// New returns the admission of perSecond new streams with a burst of
// burst (burst <= 0: one second's worth of the rate); perSecond <= 0: no
// rate limit. now and jitter may be nil (the clock, math/rand).
func New(perSecond float64, burst int, now func() time.Time, jitter func(int64) int64) *Admission {
	if now == nil {
		now = time.Now
	}
	if jitter == nil {
		jitter = rand.Int64N
	}
	a := &Admission{now: now, jitter: jitter}
	if perSecond > 0 {
		if burst <= 0 {
			burst = max(1, int(min(perSecond, float64(1<<31-1))))
		}
		a.bucket = rate.NewLimiter(rate.Limit(perSecond), burst)
		a.slot = max(time.Duration(float64(time.Second)/perSecond), 8)
	}
	return a
}

// Admit takes a token (true) or places the caller in the queue and returns
// when it should try again.
func (a *Admission) Admit() (bool, time.Duration) {
	if a.bucket == nil {
		return true, 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if a.bucket.AllowN(now, 1) {
		return true, 0
	}
	a.horizon = later(a.horizon, now).Add(a.slot)
	// The jitter spreads clients within their slot but never past it, so
	// that they keep their order: [slot/8, slot), clear of the instant the
	// token is refilled.
	return false, a.horizon.Sub(now) + a.slot/8 + time.Duration(a.jitter(int64(a.slot-a.slot/8)))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// MaxStreamsRetry is the base delay told to a client refused because the
// maximum of open streams is reached. Slots free as streams end, at a pace
// the server cannot foresee: the delay is jittered over [1 s, 2 s) so that
// the refused clients do not all come back at once.
const MaxStreamsRetry = time.Second

// FullDelay is the delay for a client refused because the maximum of open
// streams is reached.
func (a *Admission) FullDelay() time.Duration {
	a.mu.Lock() // the jitter source need not be safe for concurrent use
	defer a.mu.Unlock()
	return MaxStreamsRetry + time.Duration(a.jitter(int64(MaxStreamsRetry)))
}

// RetryLater is the refusal a client is sent: ResourceExhausted with a
// RetryInfo detail of after.
func RetryLater(after time.Duration, format string, args ...any) error {
	st := status.New(codes.ResourceExhausted, fmt.Sprintf(format, args...)+"; retry later")
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(after)}); err == nil {
		st = d
	}
	return st.Err()
}
