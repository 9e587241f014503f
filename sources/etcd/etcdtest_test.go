package etcd

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
	"github.com/tributary-mesh/tributary/sources/etcd/etcdtest"
)

// waitFor bounds every wait: a hang guard, never a latency claim.
const waitFor = etcdtest.WaitFor

// running is a Source in its own goroutine, recording into a sink.
type running struct {
	sink   *sinktest.Sink
	cancel func()
}

func runSource(t testing.TB, s discovery.Source) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sink := sinktest.New(10000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx, sink)
	}()
	r := &running{sink: sink}
	r.cancel = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("Run did not return after cancellation")
		}
	}
	t.Cleanup(r.cancel)
	return r
}

// next returns the next call whose op is one of ops, skipping the others
// (healthy, and failed unless asked for).
func (r *running) next(t testing.TB, ops ...string) sinktest.Call {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case c := <-r.sink.Calls:
			for _, op := range ops {
				if c.Op == op {
					return c
				}
			}
		case <-deadline:
			t.Fatalf("no %v call within %s", ops, waitFor)
		}
	}
}

// none fails if a call of one of ops is waiting.
func (r *running) none(t testing.TB, ops ...string) {
	t.Helper()
	for {
		select {
		case c := <-r.sink.Calls:
			for _, op := range ops {
				if c.Op == op {
					t.Fatalf("unexpected %v", c)
				}
			}
		default:
			return
		}
	}
}

// render lists a call's groups as "key authority addr,addr…" lines.
func render(gs []discovery.Group) []string {
	var out []string
	for _, g := range gs {
		line := g.Key
		for _, s := range g.Services {
			line += " " + s.Authority.String()
			for i, e := range s.Endpoints {
				sep := " "
				if i > 0 {
					sep = ","
				}
				line += sep + e.Addr.String()
			}
		}
		out = append(out, line)
	}
	return out
}

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// parseYAML returns the mapping node of a document.
func parseYAML(t testing.TB, s string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}
