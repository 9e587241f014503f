//go:build integration

// Package faults runs the fault matrix cases that need only the file
// source: restart under load and conflicting sources.
package faults

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// endpointsFile renders one service with n endpoints 10.0.x.y:80, each with
// the given weight.
func endpointsFile(host string, first, n int, weight int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "services:\n  - name: %s\n    port: 80\n    endpoints:\n", host)
	for i := first; i < first+n; i++ {
		fmt.Fprintf(&b, "      - address: 10.0.%d.%d:80\n        weight: %d\n", i/256, i%256, weight)
	}
	return b.String()
}

// reconnectingWatcher is a client that, like a proxy, re-issues Get when its
// stream ends and replaces what it holds with the new stream's answer.
type reconnectingWatcher struct {
	mu      sync.Mutex
	set     destination.EndpointSet
	ends    []error
	streams int
}

func (w *reconnectingWatcher) run(ctx context.Context, client pb.DestinationClient, path string) {
	for ctx.Err() == nil {
		st, err := client.Get(ctx, &pb.GetDestination{Path: path})
		if err == nil {
			fresh := destination.EndpointSet{}
			for {
				u, rerr := st.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				_ = fresh.Apply(u)
				w.mu.Lock()
				w.set = fresh
				w.mu.Unlock()
			}
			w.mu.Lock()
			w.streams++
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.ends = append(w.ends, err)
		w.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // the proxy's reconnect backoff, shortened
		}
	}
}

func (w *reconnectingWatcher) holds() (map[netip.AddrPort]uint32, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[netip.AddrPort]uint32{}
	for ap, wa := range w.set.Addrs {
		out[ap] = wa.GetWeight()
	}
	return out, w.streams
}

func expect(first, n int, weight uint32) map[netip.AddrPort]uint32 {
	out := map[netip.AddrPort]uint32{}
	for i := first; i < first+n; i++ {
		out[netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i / 256), byte(i % 256)}), 80)] = weight
	}
	return out
}

func equal(a, b map[netip.AddrPort]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRestartUnderLoad: SIGTERM with 200 open streams drains them with
// Unavailable and exits 0 within 10 s; the clients reconnect to the new
// process (same address) and converge to its state, which changed while
// no server was running.
func TestRestartUnderLoad(t *testing.T) {
	dir := t.TempDir()
	svc := filepath.Join(dir, "svc.yaml")
	harness.WriteAtomic(t, svc, endpointsFile("web.demo", 0, 50, 1))
	src := "sources:\n  - name: local\n    kind: file\n    paths: [\"*.yaml\"]\n"
	a := harness.Start(t, dir, src)

	conn, err := grpc.NewClient(a.API, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	watchers := make([]*reconnectingWatcher, 200)
	for i := range watchers {
		watchers[i] = &reconnectingWatcher{}
		wg.Go(func() { watchers[i].run(ctx, pb.NewDestinationClient(conn), "web.demo:80") })
	}
	defer func() { cancel(); wg.Wait() }()
	waitAll(t, watchers, expect(0, 50, 1), 1)

	code, took := a.Sigterm()
	if code != 0 || took > 10*time.Second {
		t.Fatalf("exit %d after %v\n%s", code, took, a.Logs.String())
	}
	for i, w := range watchers {
		w.mu.Lock()
		end := w.ends[0]
		w.mu.Unlock()
		if status.Code(end) != codes.Unavailable {
			t.Fatalf("watcher %d: stream ended with %v, want Unavailable", i, end)
		}
	}

	// The world changes while no server runs; the new process serves it.
	harness.WriteAtomic(t, svc, endpointsFile("web.demo", 20, 50, 3))
	harness.StartAt(t, dir, a.API, a.Admin, src)
	waitAll(t, watchers, expect(20, 50, 3), 2)
}

func waitAll(t *testing.T, ws []*reconnectingWatcher, want map[netip.AddrPort]uint32, minStreams int) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for i, w := range ws {
		for {
			got, streams := w.holds()
			if streams+1 >= minStreams && equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("watcher %d holds %d endpoints after %d streams, want %d", i, len(got), streams, len(want))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestConflictingSourcesAreDeterministic: two sources of equal priority
// rewrite the same addresses with different weights, fast and interleaved.
// Whatever the interleaving, the served state is the one the rules give
// for the final files (the tie goes to the source whose name sorts first),
// and every client ends holding it.
func TestConflictingSourcesAreDeterministic(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"a", "b"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	fa, fb := filepath.Join(dir, "a", "svc.yaml"), filepath.Join(dir, "b", "svc.yaml")
	harness.WriteAtomic(t, fa, endpointsFile("web.demo", 0, 20, 1))
	harness.WriteAtomic(t, fb, endpointsFile("web.demo", 10, 20, 2))
	s := harness.Start(t, dir, `sources:
  - {name: alpha, kind: file, paths: ["a/*.yaml"]}
  - {name: beta, kind: file, paths: ["b/*.yaml"]}
`)
	streams := make([]*harness.Stream, 10)
	for i := range streams {
		streams[i] = s.Get("web.demo:80")
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < 40; i++ {
			harness.WriteAtomic(t, fa, endpointsFile("web.demo", i%7, 20, 10+i))
		}
		harness.WriteAtomic(t, fa, endpointsFile("web.demo", 0, 20, 5))
	})
	wg.Go(func() {
		for i := 0; i < 40; i++ {
			harness.WriteAtomic(t, fb, endpointsFile("web.demo", 10+i%5, 20, 100+i))
		}
		harness.WriteAtomic(t, fb, endpointsFile("web.demo", 10, 20, 6))
	})
	wg.Wait()

	// alpha wins 10.0.0.10-19 (the tie); beta alone serves 20-29.
	want := expect(0, 20, 5)
	for k, v := range expect(20, 10, 6) {
		want[k] = v
	}
	for i, st := range streams {
		deadline := time.Now().Add(harness.WaitFor)
		for {
			got := map[netip.AddrPort]uint32{}
			for ap, wa := range st.Set.Addrs {
				got[ap] = wa.GetWeight()
			}
			if equal(got, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("stream %d holds %v, want %v", i, got, want)
			}
			st.Next()
		}
	}
	_, reg := s.HTTPGet("/debug/registry?authority=web.demo:80")
	if strings.Count(reg, `"address"`) != 40 {
		t.Errorf("the registry should keep both sources' 40 rows (provenance), got:\n%.400s", reg)
	}
}

// TestSlowClientsDoNotHoldBackOthers: a few clients stop reading while the
// rest follow a churning service. The readers converge to every final state;
// the stalled clients are disconnected once their writes block past
// server.streams.send_timeout, counted, and a reconnect gets a full snapshot.
func TestSlowClientsDoNotHoldBackOthers(t *testing.T) {
	dir := t.TempDir()
	svc := filepath.Join(dir, "svc.yaml")
	big := func(round int) string {
		var b strings.Builder
		b.WriteString("services:\n  - name: web.demo\n    port: 80\n    endpoints:\n")
		for i := 0; i < 300; i++ {
			fmt.Fprintf(&b, "      - address: 10.%d.%d.%d:80\n        labels: {pad: %s}\n", round%2, i/256, i%256, strings.Repeat("x", 100))
		}
		return b.String()
	}
	harness.WriteAtomic(t, svc, big(0))
	// Each round replaces every address: the deletion guard would hold that.
	s := harness.StartWith(t, dir, "  streams: {send_timeout: 1s}\n",
		"sources:\n  - name: local\n    kind: file\n    paths: [\"*.yaml\"]\n    deletion_guard: {confirm_for: 0s}\n")

	var slow []pb.Destination_GetClient
	for i := 0; i < 5; i++ {
		conn, err := grpc.NewClient(s.API, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(65535), grpc.WithInitialConnWindowSize(65535))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := pb.NewDestinationClient(conn).Get(ctx, &pb.GetDestination{Path: "web.demo:80"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, st) // and never read again until the end
	}
	fast := make([]*harness.Stream, 50)
	for i := range fast {
		fast[i] = s.Get("web.demo:80")
	}
	for round := 1; round <= 20; round++ {
		harness.WriteAtomic(t, svc, big(round))
		want := fmt.Sprintf("10.%d.0.0:80", round%2)
		for i, st := range fast {
			for !hasAddr(st, want) || len(st.Set.Addrs) != 300 {
				if got := st.Next(); got == "" {
					t.Fatalf("round %d: fast stream %d stalled", round, i)
				}
			}
		}
	}
	deadline := time.Now().Add(harness.WaitFor)
	for {
		_, body := s.HTTPGet("/metrics")
		if strings.Contains(body, "tributary_streams_slow_closed_total 5") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slow clients were not all closed:\n%s", grep(body, "slow_closed"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i, st := range slow {
		var err error
		for err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.Unavailable {
			t.Errorf("slow client %d ended with %v, want Unavailable", i, err)
		}
	}
	// A reconnecting client gets the full current state at once.
	if got := s.Get("web.demo:80").Next(); !strings.HasPrefix(got, "add:") || strings.Count(got, ",") != 299 {
		t.Fatalf("reconnect: %.60s… (%d addresses)", got, strings.Count(got, ",")+1)
	}
}

func hasAddr(st *harness.Stream, addr string) bool {
	_, ok := st.Set.Addrs[netip.MustParseAddrPort(addr)]
	return ok
}

func grep(body, substr string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
