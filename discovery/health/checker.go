// Package health is Tributary's active health checker: it probes the
// endpoints of the sources configured with a health_check block (TCP
// connect, HTTP GET, gRPC grpc.health.v1) and sets each endpoint's Health
// from the results, with rise/fall thresholds, jittered intervals and
// hold-down of flapping endpoints.
//
// It sits between a source and the manager as a discovery.Sink wrapper
// (Checker.WrapSink, for discovery.ManagerOptions.WrapSink): groups the
// source hands over go on to the manager at once, decorated with the
// current verdicts, so checks never delay an update; when a verdict flips,
// the groups holding that endpoint are handed over again, and only then.
//
// One scheduler serves every source: a min-heap of due times and a bounded
// number of checks in flight (Options.Workers), each in a short-lived
// goroutine. Nothing sleeps per endpoint; an address listed under several
// keys or services with the same check is probed once.
package health

import (
	"container/heap"
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-mesh/tributary/discovery"
)

// ProbeFunc runs one check of addr. It returns nil when the check passes.
// ctx carries the check's timeout.
type ProbeFunc func(ctx context.Context, hc *Check, addr netip.AddrPort) error

// Options configures a Checker. Zero values are fine.
type Options struct {
	// Workers bounds the checks in flight (DefaultMaxConcurrentChecks when 0).
	Workers int
	// Sources holds the checks of each source, by name (Config.Sources):
	// WrapSink puts a checking sink in front of these sources.
	Sources map[string]*Checks
	Logger  *slog.Logger
	// Registerer, when set, gets the checker's metrics.
	Registerer prometheus.Registerer
	// Probe replaces the real TCP/HTTP/gRPC checks (tests).
	Probe ProbeFunc
	// Now is the clock of the verdicts (thresholds, hold-down); tests
	// inject one. Scheduling always uses real time.
	Now func() time.Time
}

// Checker runs the active health checks of every wrapped source.
type Checker struct {
	log     *slog.Logger
	probe   ProbeFunc
	now     func() time.Time
	workers int
	sources map[string]*Checks
	metrics *metrics
	http    *http.Client

	mu    sync.Mutex
	queue schedule
	sinks []*sourceSink

	wake  chan struct{} // the head of the queue changed
	dirty chan struct{} // a verdict flipped: some groups need handing over
}

// New returns a checker; Run starts its checks.
func New(opts Options) *Checker {
	c := &Checker{
		log:     opts.Logger,
		probe:   opts.Probe,
		now:     opts.Now,
		workers: opts.Workers,
		sources: opts.Sources,
		wake:    make(chan struct{}, 1),
		dirty:   make(chan struct{}, 1),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.workers <= 0 {
		c.workers = DefaultMaxConcurrentChecks
	}
	c.http = newHTTPClient()
	if c.probe == nil {
		c.probe = c.realProbe
	}
	c.metrics = newMetrics(c)
	if opts.Registerer != nil {
		c.metrics.register(opts.Registerer)
	}
	return c
}

// WrapSink is a discovery.ManagerOptions.WrapSink: a source with checks
// in Options.Sources gets a checking sink in front of the manager's; any
// other source keeps the manager's.
func (c *Checker) WrapSink(cfg discovery.SourceConfig, next discovery.Sink) discovery.Sink {
	checks := c.sources[cfg.Name]
	if checks == nil {
		return next
	}
	return c.Wrap(cfg.Name, checks, next)
}

// Wrap returns a sink that checks the endpoints handed to it as cfg says
// and hands them on to next with their health set. Call it before Run.
func (c *Checker) Wrap(source string, cfg *Checks, next discovery.Sink) discovery.Sink {
	s := &sourceSink{
		c:       c,
		name:    source,
		cfg:     cfg,
		next:    next,
		groups:  map[string]*groupState{},
		targets: map[targetKey]*target{},
		dirty:   map[string]bool{},
	}
	c.mu.Lock()
	c.sinks = append(c.sinks, s)
	c.mu.Unlock()
	return s
}

// Run runs the checks until ctx is done, then waits for the checks in
// flight (they share ctx) and returns.
func (c *Checker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { c.flushLoop(ctx) })
	c.dispatch(ctx, &wg)
	wg.Wait()
	c.http.CloseIdleConnections()
}

// target is one checked address under one check. Its state and refs
// belong to its sink's lock; due, index and gone to the checker's.
type target struct {
	sink *sourceSink
	hc   *Check
	addr netip.AddrPort // the address probed (the check's port, if it sets one)

	st   state
	refs int            // endpoints pointing at it, over every group
	keys map[string]int // group key → endpoints of that group pointing at it

	due   time.Time
	index int  // in the queue; -1 when not queued
	gone  bool // no endpoint points at it any more

	// What the last checks said, for CheckState (its sink's lock):
	// when the last check ended, and the last failure's error and time.
	lastCheck   time.Time
	lastErr     string
	lastErrTime time.Time
}

// schedule is a min-heap of targets by due time.
type schedule []*target

func (q schedule) Len() int           { return len(q) }
func (q schedule) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q schedule) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *schedule) Push(x any) {
	t := x.(*target)
	t.index = len(*q)
	*q = append(*q, t)
}
func (q *schedule) Pop() any {
	old := *q
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*q = old[:len(old)-1]
	return t
}

// enqueue schedules t's next check at due.
func (c *Checker) enqueue(t *target, due time.Time) {
	c.mu.Lock()
	if t.gone || t.index >= 0 {
		c.mu.Unlock()
		return
	}
	t.due = due
	heap.Push(&c.queue, t)
	first := t.index == 0
	c.mu.Unlock()
	if first {
		signal(c.wake)
	}
}

// forget takes t off the schedule for good.
func (c *Checker) forget(t *target) {
	c.mu.Lock()
	t.gone = true
	if t.index >= 0 {
		heap.Remove(&c.queue, t.index)
	}
	c.mu.Unlock()
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// jittered is interval moved by up to ±jitter of it.
func jittered(hc *Check) time.Duration {
	if hc.Jitter <= 0 {
		return hc.Interval
	}
	return time.Duration(float64(hc.Interval) * (1 + hc.Jitter*(2*rand.Float64()-1)))
}

// dispatch starts each check when it is due, at most c.workers at a time.
func (c *Checker) dispatch(ctx context.Context, wg *sync.WaitGroup) {
	sem := make(chan struct{}, c.workers)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		var t *target
		wait := time.Duration(-1)
		now := time.Now()
		c.mu.Lock()
		if len(c.queue) > 0 {
			if head := c.queue[0]; !head.due.After(now) {
				t = heap.Pop(&c.queue).(*target)
			} else {
				wait = head.due.Sub(now)
			}
		}
		c.mu.Unlock()
		if t != nil {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			c.metrics.delay.Observe(time.Since(t.due).Seconds())
			wg.Go(func() {
				defer func() { <-sem }()
				c.check(ctx, t)
			})
			continue
		}
		if wait >= 0 {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
			timer.Stop()
		case <-timer.C:
		}
	}
}

// check probes t once, records the result and schedules the next check.
func (c *Checker) check(ctx context.Context, t *target) {
	pctx, cancel := context.WithTimeout(ctx, t.hc.Timeout)
	start := time.Now()
	err := c.probe(pctx, t.hc, t.addr)
	took := time.Since(start)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: the result says nothing
	}
	t.sink.record(t, err, took)
	c.enqueue(t, time.Now().Add(jittered(t.hc)))
}

// flushLoop hands over the groups whose endpoints' verdicts flipped, off
// the checks' path: flips that come while it works are taken together.
func (c *Checker) flushLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.dirty:
		}
		c.mu.Lock()
		sinks := c.sinks
		c.mu.Unlock()
		for _, s := range sinks {
			s.flush()
		}
	}
}
