// Package refresh turns a poll function into a discovery.Source, for
// backends that are read by asking again (DNS, an etcd listing) rather than
// watched.
//
// The poll function reads the backend and returns what it found; the Source
// keeps what it last handed over per key and hands over only the groups that
// changed, calls Healthy when nothing did, and Failed when the poll reports
// an error, after handing over what it could read. A poll that failed as a
// whole is retried with a jittered exponential backoff (retry.Backoff).
// Every wait is retry's: cancellation ends Run at once and is not an error.
package refresh

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/retry"
)

// Result is what one poll found.
type Result struct {
	// Groups are the complete current state under each key polled. A group
	// without services withdraws its key (if it was handed over). Keys not
	// listed keep their state, unless Complete.
	Groups []discovery.Group
	// Complete says Groups is everything the backend holds: keys handed
	// over before and not listed are withdrawn.
	Complete bool
	// Err reports what could not be read; its keys keep their last state
	// and the source is marked stale. A poll with an error and no groups
	// failed as a whole: the next one comes after a backoff.
	Err error
	// Next is the wait before the next poll; 0 means Options.Interval (or
	// the backoff after a poll that failed as a whole).
	Next time.Duration
}

// PollFunc reads the backend. It should return promptly when ctx is done.
type PollFunc func(ctx context.Context) Result

// Options configures a Source.
type Options struct {
	// Interval is the wait between polls when the poll does not say.
	// Required.
	Interval time.Duration
	// MinBackoff and MaxBackoff bound the wait after polls that failed as a
	// whole: it starts at MinBackoff (default Interval/10, at least 100ms)
	// and doubles up to MaxBackoff (default Interval), each wait moved by
	// up to ±20% at random (retry.Backoff).
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// Logger, optional.
	Logger *slog.Logger
}

// Source is a polling discovery.Source.
type Source struct {
	poll PollFunc
	opts Options
	log  *slog.Logger

	// after starts a wait; tests replace it.
	after func(time.Duration) (<-chan time.Time, func() bool)
}

var _ discovery.Source = (*Source)(nil)

// New returns a Source that calls poll. It starts nothing.
func New(poll PollFunc, opts Options) *Source {
	if opts.Interval <= 0 {
		panic("refresh: Options.Interval must be positive")
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = opts.Interval
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = max(opts.Interval/10, 100*time.Millisecond)
	}
	opts.MinBackoff = min(opts.MinBackoff, opts.MaxBackoff)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{poll: poll, opts: opts, log: log, after: realAfter}
}

func realAfter(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Run implements discovery.Source: poll, hand over, wait, until ctx ends.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) {
	last := map[string]discovery.Group{}
	first := true
	failures := 0
	bo := retry.Backoff{Min: s.opts.MinBackoff, Max: s.opts.MaxBackoff}
	for ctx.Err() == nil {
		res := s.poll(ctx)
		if ctx.Err() != nil {
			return // a poll cut short by cancellation says nothing
		}
		changed := diff(last, res)
		contact := res.Err == nil || len(res.Groups) > 0
		switch {
		case first:
			first = false
			all := slices.Collect(maps.Values(last))
			slices.SortFunc(all, byKey)
			sink.Replace(all)
		case len(changed) > 0:
			sink.Update(changed...)
		case contact:
			sink.Healthy()
		}
		if res.Err != nil && !errors.Is(res.Err, context.Canceled) {
			sink.Failed(res.Err)
		}

		wait := res.Next
		if contact {
			failures = 0
			bo.Reset()
			if wait <= 0 {
				wait = s.opts.Interval
			}
		} else {
			failures++
			if d := bo.Next(); wait <= 0 { // every failure doubles the step, used or not
				wait = d
			}
			s.log.Debug("poll failed; retrying after a backoff", "err", res.Err, "failures", failures, "wait", wait)
		}
		c, stop := s.after(wait)
		if retry.WaitOn(ctx, c, stop) != nil {
			return
		}
	}
}

// diff updates last with a poll's result and returns the groups to hand
// over, sorted by key.
func diff(last map[string]discovery.Group, res Result) []discovery.Group {
	var changed []discovery.Group
	listed := make(map[string]bool, len(res.Groups))
	for _, g := range res.Groups {
		listed[g.Key] = true
		prev, known := last[g.Key]
		if len(g.Services) == 0 {
			if known {
				delete(last, g.Key)
				changed = upsert(changed, discovery.Group{Key: g.Key})
			}
			continue
		}
		if known && GroupsEqual(prev, g) {
			continue
		}
		last[g.Key] = g
		changed = upsert(changed, g)
	}
	if res.Complete {
		for k := range last {
			if !listed[k] {
				delete(last, k)
				changed = upsert(changed, discovery.Group{Key: k})
			}
		}
	}
	slices.SortFunc(changed, byKey)
	return changed
}

// upsert appends g, replacing an earlier group of its key (the last wins).
func upsert(gs []discovery.Group, g discovery.Group) []discovery.Group {
	for i := range gs {
		if gs[i].Key == g.Key {
			gs[i] = g
			return gs
		}
	}
	return append(gs, g)
}

func byKey(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) }

// GroupsEqual reports whether two groups carry the same services and
// endpoints, in the same order.
func GroupsEqual(a, b discovery.Group) bool {
	return a.Key == b.Key && slices.EqualFunc(a.Services, b.Services, func(x, y discovery.Service) bool {
		return x.Authority == y.Authority && x.Opaque == y.Opaque &&
			slices.EqualFunc(x.Endpoints, y.Endpoints, func(e, f discovery.Endpoint) bool { return e.Equal(&f) })
	})
}
