// Package sinktest is what the sources' tests share: a discovery.Sink that
// records what a source hands over, in order, and a source run into one; a
// reader of fuzz input; and the check every source's output must pass.
package sinktest

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/discovery"
)

// Call is one Sink call.
type Call struct {
	Op     string // update, replace, healthy, failed
	Groups []discovery.Group
	Err    error
}

func (c Call) String() string {
	if c.Op == "failed" {
		return fmt.Sprintf("failed(%v)", c.Err)
	}
	keys := make([]string, 0, len(c.Groups))
	for _, g := range c.Groups {
		keys = append(keys, fmt.Sprintf("%s=%d services", g.Key, len(g.Services)))
	}
	return c.Op + "(" + strings.Join(keys, ", ") + ")"
}

// Sink records every call on Calls. It never blocks while the buffer has
// room, as the manager's sink never blocks a source.
type Sink struct{ Calls chan Call }

var _ discovery.Sink = (*Sink)(nil)

// New returns a Sink whose channel holds buffer calls.
func New(buffer int) *Sink { return &Sink{Calls: make(chan Call, buffer)} }

func (s *Sink) Update(groups ...discovery.Group) {
	s.Calls <- Call{Op: "update", Groups: slices.Clone(groups)}
}

func (s *Sink) Replace(groups []discovery.Group) {
	s.Calls <- Call{Op: "replace", Groups: slices.Clone(groups)}
}

func (s *Sink) Healthy() { s.Calls <- Call{Op: "healthy"} }

func (s *Sink) Failed(err error) { s.Calls <- Call{Op: "failed", Err: err} }

// LogBuffer collects output written from another goroutine (a source's
// logger, a child process's stderr) while the test reads it.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FuzzInput hands out a fuzz input a byte at a time, deterministically, and
// zeros once it runs out, so that every input decodes to some backend state.
// Sources' fuzz tests embed it and add their own value generators.
type FuzzInput []byte

// Byte takes the next byte.
func (b *FuzzInput) Byte() byte {
	if len(*b) == 0 {
		return 0
	}
	c := (*b)[0]
	*b = (*b)[1:]
	return c
}

// U16 takes the next two bytes, big-endian.
func (b *FuzzInput) U16() uint16 { return uint16(b.Byte())<<8 | uint16(b.Byte()) }

// Pick chooses one of from with the next byte of in.
func Pick[T any](in interface{ Byte() byte }, from ...T) T {
	return from[int(in.Byte())%len(from)]
}

// CheckGroup fails tb unless g is well-formed as every source must hand it
// over: each authority reads back as itself; each endpoint has a valid
// address with a port and no zone, and appears once per service
// (::ffff:10.0.0.1 and 10.0.0.1 are one backend); and the group passes
// discovery.ValidateGroup, the rules the registry applies.
func CheckGroup(tb testing.TB, g discovery.Group) {
	tb.Helper()
	for _, s := range g.Services {
		a, err := discovery.ParseAuthority(s.Authority.String(), 0)
		if err != nil || a != s.Authority {
			tb.Fatalf("authority %q does not parse back (%v, %v)", s.Authority, a, err)
		}
		seen := map[netip.AddrPort]bool{}
		for _, e := range s.Endpoints {
			if !e.Addr.IsValid() || e.Addr.Port() == 0 || e.Addr.Addr().Zone() != "" {
				tb.Fatalf("%s: endpoint address %v is not a valid address and port", s.Authority, e.Addr)
			}
			k := netip.AddrPortFrom(e.Addr.Addr().Unmap(), e.Addr.Port())
			if seen[k] {
				tb.Fatalf("%s: endpoint address %v twice:\n%s", s.Authority, e.Addr, render(g))
			}
			seen[k] = true
		}
	}
	if err := discovery.ValidateGroup(&g); err != nil {
		tb.Fatalf("the registry would reject the output: %v\n%s", err, render(g))
	}
}

// render lists a group's services and endpoints, one per line.
func render(g discovery.Group) string {
	var b strings.Builder
	fmt.Fprintf(&b, "group %q\n", g.Key)
	for _, s := range g.Services {
		fmt.Fprintf(&b, "  %s opaque=%v\n", s.Authority, s.Opaque)
		for _, e := range s.Endpoints {
			fmt.Fprintf(&b, "    %v weight=%d health=%v identity=%q\n", e.Addr, e.Weight, e.Health, e.Identity.Name)
		}
	}
	return b.String()
}

// Running is a Source run by a test on its own goroutine, recording into a
// Sink (Calls).
type Running struct {
	*Sink
	wait time.Duration
	stop func()
}

// Run runs s into a new Sink until the test ends (or Stop). wait bounds
// every wait of Next and of Stop: a hang guard, never a latency claim.
func Run(tb testing.TB, s discovery.Source, wait time.Duration) *Running {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{Sink: New(10000), wait: wait}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx, r.Sink)
	}()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(wait):
				tb.Error("Run did not return after cancellation")
			}
		})
	}
	tb.Cleanup(r.stop)
	return r
}

// Stop cancels the source and waits for Run to return.
func (r *Running) Stop() { r.stop() }

// Next returns the next call whose op is one of ops, skipping the others.
func (r *Running) Next(tb testing.TB, ops ...string) Call {
	tb.Helper()
	deadline := time.After(r.wait)
	for {
		select {
		case c := <-r.Calls:
			if slices.Contains(ops, c.Op) {
				return c
			}
		case <-deadline:
			tb.Fatalf("no %v call within %s", ops, r.wait)
		}
	}
}

// None fails if a call of one of ops is waiting.
func (r *Running) None(tb testing.TB, ops ...string) {
	tb.Helper()
	for {
		select {
		case c := <-r.Calls:
			if slices.Contains(ops, c.Op) {
				tb.Fatalf("unexpected %v", c)
			}
		default:
			return
		}
	}
}
