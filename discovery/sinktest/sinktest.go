// Package sinktest is a discovery.Sink that records what a source hands
// over, in order, for the sources' unit tests.
package sinktest

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"

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

// LogBuffer collects log output written from a source's goroutine while
// the test reads it.
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
