// Package bench is the `bench` source kind: a synthetic source that
// generates services and endpoint churn inside the server, so that the
// benchmark tool (cmd/tributary-bench) can measure how fast and how cheaply
// changes reach many Get streams. It is a measuring instrument: never
// configure it in production.
//
//	sources:
//	  - name: bench
//	    kind: bench
//	    services: 1000               # S services, svc-0 … svc-999
//	    endpoints: 10                # E endpoints each
//	    host: "svc-%d.bench:8080"    # authority of service i
//	    rate: 200                    # endpoint changes per second (0: none)
//	    weight_changes: 0.5          # fraction of changes that only change a weight
//	    seed: 1                      # reproducible sequence of changes
//	    tick: 5ms                    # batch period; default 1/rate within 1ms..50ms
//	    start_after: 0s              # delay before churn starts
//	    duration: 0s                 # churn stops after this long; 0 never
//	    paused: false                # true: churn starts only through the control API
//	    control: 127.0.0.1:9997      # control HTTP API (loopback only); optional
//
// The first hand-over is the full state, one group per service. Then, at
// every tick, the source generates the changes due at the configured rate
// (a source that fell more than one second behind skips the excess and
// counts it) and hands over the whole group of every service they touched.
// A change either gives one endpoint of one service a new weight or
// replaces it by a new address. Every endpoint carries two labels, which
// reach the proxy as metric labels: bench_ts, the wall-clock time in Unix
// nanoseconds at which its latest change was handed over, and bench_seq,
// that change's sequence number (0 for the initial state).
//
// The control API (see Control) starts, stops and re-rates the churn and
// returns the exact current state (the Truth), which a client compares with
// what it received.
package bench

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/tributary-mesh/tributary/discovery"
)

// KindName is the value of `kind:` for this source.
const KindName = "bench"

func init() {
	discovery.Register(discovery.Kind{Name: KindName, New: newFromNode})
}

// Source is a bench source; build it with NewSource.
type Source struct {
	cfg   Config
	auths []discovery.Authority
	log   *slog.Logger

	// Injectable for tests.
	now       func() time.Time
	newTicker func(time.Duration) (<-chan time.Time, func())
	onListen  func(net.Addr) // called once the control API listens
}

var _ discovery.Source = (*Source)(nil)

// NewSource validates cfg and returns a source ready to Run. It starts
// nothing; the control API listens only while Run runs.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	auths, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	log := bc.Log()
	return &Source{
		cfg:       cfg,
		auths:     auths,
		log:       log.With("source_kind", KindName),
		now:       time.Now,
		newTicker: realTicker,
	}, nil
}

func realTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// Config returns the source's configuration.
func (s *Source) Config() Config { return s.cfg }

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) {
	if ctx.Err() != nil {
		return
	}
	l := &loop{Source: s, sink: sink, gen: newGenerator(s.cfg, s.auths)}
	defer l.stopTicker()

	var reqs chan request
	var ctlErr error
	if s.cfg.Control != "" {
		reqs = make(chan request)
		stop, err := s.serveControl(ctx, reqs)
		if err != nil {
			ctlErr = err
			s.log.Error("bench control API cannot listen; churn follows the config only", "control", s.cfg.Control, "err", err)
		} else {
			defer stop()
		}
	}

	sink.Replace(l.gen.initial(s.now().UnixNano()))
	if ctlErr != nil {
		sink.Failed(ctlErr) // after the hand-over, which would clear the mark
	}
	if s.cfg.Rate > 0 && !s.cfg.Paused {
		l.setRate(s.now().Add(s.cfg.StartAfter), s.cfg.Rate, s.cfg.Duration)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.tick:
			l.onTick(s.now())
		case r := <-reqs:
			r.reply <- l.handle(r)
		}
	}
}

// loop is the state of one Run, owned by its goroutine.
type loop struct {
	*Source
	sink discovery.Sink
	gen  *generator

	tick       <-chan time.Time
	stopTick   func()
	tickPeriod time.Duration

	rate    float64
	running bool
	base    time.Time // churn starts here; the rate is counted from it
	stopAt  time.Time // zero: never
	emitted int64     // changes generated (or skipped) since base
	changes uint64    // changes generated since base
	skipped uint64    // changes skipped because the loop fell behind, ever
}

// setRate starts churn at rate from start (stopping after d when d > 0),
// or stops it when rate is 0.
func (l *loop) setRate(start time.Time, rate float64, d time.Duration) {
	l.rate = rate
	if rate <= 0 {
		if l.running {
			l.log.Info("bench churn stopped", "changes", l.changes, "seq", l.gen.seq)
		}
		l.running = false
		l.stopTicker()
		return
	}
	l.running = true
	l.base, l.emitted, l.changes = start, 0, 0
	l.stopAt = time.Time{}
	if d > 0 {
		l.stopAt = start.Add(d)
	}
	if p := l.cfg.tickFor(rate); l.tick == nil || p != l.tickPeriod {
		l.stopTicker()
		l.tick, l.stopTick = l.newTicker(p)
		l.tickPeriod = p
	}
	l.log.Info("bench churn", "rate", rate, "tick", l.tickPeriod, "start", start, "duration", d)
}

func (l *loop) stopTicker() {
	if l.stopTick != nil {
		l.stopTick()
	}
	l.tick, l.stopTick, l.tickPeriod = nil, nil, 0
}

// onTick generates and hands over the changes due by now.
func (l *loop) onTick(now time.Time) {
	if !l.running || now.Before(l.base) {
		return
	}
	end, finished := now, false
	if !l.stopAt.IsZero() && !now.Before(l.stopAt) {
		end, finished = l.stopAt, true
	}
	due := int64(float64(end.Sub(l.base))*l.rate/float64(time.Second)) - l.emitted
	if limit := max(1, int64(l.rate)); due > limit {
		// More than a second behind (a stalled process): skip the excess
		// rather than hand over a burst the configured rate never asked for.
		l.skipped += uint64(due - limit)
		l.emitted += due - limit
		due = limit
	}
	if due > 0 {
		groups := l.gen.changes(int(due), now.UnixNano())
		l.emitted += due
		l.changes += uint64(due)
		l.sink.Update(groups...)
	}
	if finished {
		l.setRate(now, 0, 0)
	}
}

// request is one control API call, served by the Run goroutine.
type request struct {
	op    string // "status", "churn", "truth"
	rate  float64
	d     time.Duration
	reply chan response // buffered, capacity 1
}

type response struct {
	status Status
	snap   snapshot
}

func (l *loop) handle(r request) response {
	switch r.op {
	case "churn":
		l.setRate(l.now(), r.rate, r.d)
	case "truth":
		return response{status: l.status(), snap: l.gen.snapshot()}
	}
	return response{status: l.status()}
}

func (l *loop) status() Status {
	st := Status{
		Services:  l.cfg.Services,
		Endpoints: l.cfg.Endpoints,
		Host:      l.cfg.Host,
		Rate:      l.rate,
		Running:   l.running,
		Seq:       l.gen.seq,
		Changes:   l.changes,
		Skipped:   l.skipped,
	}
	if l.running {
		st.Tick = l.tickPeriod.String()
		st.StartedNs = l.base.UnixNano()
	}
	return st
}

// errStopped is what a control call gets when the source is stopping.
var errStopped = errors.New("bench source stopped")
