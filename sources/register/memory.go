package register

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tributary-mesh/tributary/discovery"
)

// memory is the in-process backend: leases expire here.
type memory struct {
	now func() time.Time

	mu    sync.Mutex
	byID  map[string]*Lease
	byKey map[string]*Lease
	dirty map[string]bool // group keys to hand over
	// soonest is the earliest expiry the run loop waits for; a
	// registration expiring earlier wakes it.
	soonest time.Time
	wake    chan struct{}
}

func newMemory(now func() time.Time) *memory {
	return &memory{now: now, byID: map[string]*Lease{}, byKey: map[string]*Lease{}, dirty: map[string]bool{}, wake: make(chan struct{}, 1)}
}

func (m *memory) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func newLeaseID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (m *memory) register(_ context.Context, r Registration) (Lease, error) {
	l := &Lease{ID: newLeaseID(), Registration: r, Expires: m.now().Add(r.TTL)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.byKey[r.Key()]; old != nil {
		if r.Exclusive && old.By != r.By && m.now().Before(old.Expires) {
			return Lease{}, fmt.Errorf("%w (%s)", ErrTaken, old.By)
		}
		delete(m.byID, old.ID)
	}
	m.byID[l.ID], m.byKey[r.Key()] = l, l
	m.dirty[r.Key()] = true
	if m.soonest.IsZero() || l.Expires.Before(m.soonest) {
		m.soonest = l.Expires
	}
	m.signal()
	return *l, nil
}

func (m *memory) keepAlive(_ context.Context, id string) (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.byID[id]
	now := m.now()
	if l == nil || !now.Before(l.Expires) {
		return 0, ErrUnknownLease
	}
	// The Lease is shared with byKey; a copy keeps handed-out values intact.
	renewed := *l
	renewed.Expires = now.Add(l.TTL)
	m.byID[id], m.byKey[l.Key()] = &renewed, &renewed
	return l.TTL, nil
}

func (m *memory) deregister(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.byID[id]
	if l == nil || !m.now().Before(l.Expires) {
		return ErrUnknownLease
	}
	delete(m.byID, id)
	delete(m.byKey, l.Key())
	m.dirty[l.Key()] = true
	m.signal()
	return nil
}

func (m *memory) lease(_ context.Context, id string) (Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.byID[id]
	if l == nil || !m.now().Before(l.Expires) {
		return Lease{}, ErrUnknownLease
	}
	return *l, nil
}

func (m *memory) list(context.Context) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	out := make([]Lease, 0, len(m.byID))
	for _, l := range m.byID {
		if now.Before(l.Expires) {
			out = append(out, *l)
		}
	}
	return out, nil
}

// expire withdraws the leases that have ended and returns the next expiry
// (zero when none is left). Called with mu held.
func (m *memory) expire(now time.Time) time.Time {
	var next time.Time
	for id, l := range m.byID {
		if !now.Before(l.Expires) {
			delete(m.byID, id)
			delete(m.byKey, l.Key())
			m.dirty[l.Key()] = true
			continue
		}
		if next.IsZero() || l.Expires.Before(next) {
			next = l.Expires
		}
	}
	return next
}

// take returns the dirty groups, sorted by key. Called with mu held.
func (m *memory) take() []discovery.Group {
	gs := make([]discovery.Group, 0, len(m.dirty))
	for k := range m.dirty {
		if l := m.byKey[k]; l != nil {
			gs = append(gs, group(l.Registration))
		} else {
			gs = append(gs, discovery.Group{Key: k})
		}
	}
	clear(m.dirty)
	slices.SortFunc(gs, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	return gs
}

func (m *memory) run(ctx context.Context, sink discovery.Sink) {
	m.mu.Lock()
	m.soonest = m.expire(m.now())
	clear(m.dirty)
	all := make([]discovery.Group, 0, len(m.byKey))
	for _, l := range m.byKey {
		all = append(all, group(l.Registration))
	}
	m.mu.Unlock()
	slices.SortFunc(all, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	sink.Replace(all)

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		m.mu.Lock()
		wait := time.Duration(-1)
		if !m.soonest.IsZero() {
			wait = max(m.soonest.Sub(m.now()), 0)
		}
		m.mu.Unlock()
		timer.Stop()
		var fire <-chan time.Time
		if wait >= 0 {
			timer.Reset(wait)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-fire:
		}
		m.mu.Lock()
		now := m.now()
		if !m.soonest.IsZero() && !now.Before(m.soonest) {
			m.soonest = m.expire(now)
		}
		gs := m.take()
		m.mu.Unlock()
		if len(gs) > 0 {
			sink.Update(gs...)
		}
	}
}
