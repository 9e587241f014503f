//go:build integration

package integration

// Real writers that do not rename atomically (issue 11): a slow shell
// redirection, truncate + pause + write, a half-written YAML prefix that
// parses, and a burst of mixed renames and in-place writes. Thirty Get
// streams watch the service while it happens; every state a stream holds
// must contain some complete version of the file (so a stream is never
// emptier than a version that was really written), and every stream must
// end on the final file's state.
//
// The tests log their figures (no_endpoints and remove messages, the
// longest time a stream held a state below every complete version) on the
// line "figures:"; `go test -v -run FileWriter` prints them.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"

	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/integration/harness"
)

// writerStreams is how many streams watch the service, as in the issue.
const writerStreams = 30

const writerAuthority = "web.demo:8080"

// version is one complete content of the watched file: web.demo:8080 with
// the endpoints 10.1.0.lo .. 10.1.0.hi.
type version struct{ lo, hi int }

func (v version) addrs() []string {
	var out []string
	for i := v.lo; i <= v.hi; i++ {
		out = append(out, fmt.Sprintf("10.1.0.%d:8080", i))
	}
	return out
}

func (v version) content() string {
	return services(writerAuthority + "=" + strings.Join(v.addrs(), ","))
}

// writerRig is a server whose file source reads services/*.yaml: the file
// under test, f.yaml, and other.yaml with 40 endpoints of another service,
// so that f.yaml holds a small share of the source's endpoints and the
// source-wide deletion guard stays out of the way (the normal case with
// many files).
type writerRig struct {
	t        *testing.T
	dir      string // the config's folder; helper files live here
	file     string // services/f.yaml
	server   *harness.Server
	mu       sync.Mutex
	versions [][]netip.AddrPort // every complete version written, sorted
	streams  []*watchedStream
}

func newWriterRig(t *testing.T, first version, sourceKeys string) *writerRig {
	t.Helper()
	dir := t.TempDir()
	svcDir := filepath.Join(dir, "services")
	if err := os.Mkdir(svcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &writerRig{t: t, dir: dir, file: filepath.Join(svcDir, "f.yaml")}
	var others []string
	for i := 1; i <= 40; i++ {
		others = append(others, fmt.Sprintf("10.9.0.%d:9000", i))
	}
	harness.WriteAtomic(t, filepath.Join(svcDir, "other.yaml"), services("other.demo:9000="+strings.Join(others, ",")))
	r.register(first)
	harness.WriteAtomic(t, r.file, first.content())
	r.server = harness.Start(t, dir, "sources:\n"+fileSource("local", "services/*.yaml", 0)+sourceKeys)
	for range writerStreams {
		r.streams = append(r.streams, r.watch())
	}
	r.waitAll(first)
	return r
}

// register records v as a complete version before it is written.
func (r *writerRig) register(v version) {
	var set []netip.AddrPort
	for _, a := range v.addrs() {
		set = append(set, netip.MustParseAddrPort(a))
	}
	slices.SortFunc(set, netip.AddrPort.Compare)
	r.mu.Lock()
	r.versions = append(r.versions, set)
	r.mu.Unlock()
}

// coversSomeVersion reports whether the set contains every endpoint of at
// least one complete version written so far.
func (r *writerRig) coversSomeVersion(set map[netip.AddrPort]*pb.WeightedAddr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range r.versions {
		all := true
		for _, a := range v {
			if _, ok := set[a]; !ok {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// watchedStream is one Get stream read by its own goroutine, which checks
// every state against the complete versions and keeps the figures.
type watchedStream struct {
	mu       sync.Mutex
	set      destination.EndpointSet
	nones    int
	removes  int
	below    int           // states held that contain no complete version
	worst    string        // the first such state, for the failure message
	badSince time.Time     // when the current state below every version began
	maxGap   time.Duration // the longest such state
	err      error
}

func (r *writerRig) watch() *watchedStream {
	t := r.t
	ctx, cancel := context.WithCancel(context.Background())
	c, err := r.server.Client().Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: writerAuthority})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ws := &watchedStream{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			u, err := c.Recv()
			now := time.Now()
			ws.mu.Lock()
			if err != nil {
				if ctx.Err() == nil {
					ws.err = err
				}
				ws.mu.Unlock()
				return
			}
			if err := ws.set.Apply(u); err != nil && ws.err == nil {
				ws.err = err
			}
			switch u.GetUpdate().(type) {
			case *pb.Update_NoEndpoints:
				ws.nones++
			case *pb.Update_Remove:
				ws.removes++
			}
			if r.coversSomeVersion(ws.set.Addrs) {
				if !ws.badSince.IsZero() {
					ws.maxGap = max(ws.maxGap, now.Sub(ws.badSince))
					ws.badSince = time.Time{}
				}
			} else {
				ws.below++
				if ws.worst == "" {
					ws.worst = fmt.Sprint(ws.set.Sorted())
				}
				if ws.badSince.IsZero() {
					ws.badSince = now
				}
			}
			ws.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ws
}

// waitAll waits until every stream holds exactly v's endpoints.
func (r *writerRig) waitAll(v version) {
	r.t.Helper()
	want := v.addrs()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		ok := true
		var got string
		for _, ws := range r.streams {
			ws.mu.Lock()
			var have []string
			for _, a := range ws.set.Sorted() {
				have = append(have, a.String())
			}
			ws.mu.Unlock()
			if !slices.Equal(have, want) {
				ok, got = false, strings.Join(have, ",")
				break
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("streams never reached %v; one holds [%s]", want, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// check fails the test if any stream held a state below every complete
// version or broke the wire contract, and logs the figures.
func (r *writerRig) check(scenario string) {
	r.t.Helper()
	var nones, removes, below int
	var gap time.Duration
	var worst string
	for _, ws := range r.streams {
		ws.mu.Lock()
		if ws.err != nil {
			r.t.Errorf("stream: %v", ws.err)
		}
		nones += ws.nones
		removes += ws.removes
		below += ws.below
		gap = max(gap, ws.maxGap)
		if worst == "" {
			worst = ws.worst
		}
		ws.mu.Unlock()
	}
	r.t.Logf("figures: %s: %d streams: %d no_endpoints, %d remove messages, %d states below every complete version, longest %v",
		scenario, len(r.streams), nones, removes, below, gap.Round(time.Millisecond))
	if below > 0 {
		r.t.Errorf("%s: streams held %d states emptier than every complete version of the file, for up to %v; the first: %s",
			scenario, below, gap.Round(time.Millisecond), worst)
	}
}

// settleWindow is how long the tests keep watching after the streams reach
// the final state, so a late withdrawal would be seen.
const settleWindow = 700 * time.Millisecond

var (
	versionA = version{1, 10}
	versionB = version{2, 11}
)

// A shell redirection truncates the file at once; the content comes 150 ms
// later, from a slow writer.
func TestFileWriterSlowShellRedirection(t *testing.T) {
	r := newWriterRig(t, versionA, "")
	for i, v := range []version{versionB, versionA, versionB} {
		next := filepath.Join(r.dir, fmt.Sprintf("new%d.yaml", i))
		if err := os.WriteFile(next, []byte(v.content()), 0o644); err != nil {
			t.Fatal(err)
		}
		r.register(v)
		script := fmt.Sprintf("sh -c 'sleep 0.15; cat %s' > %s", next, r.file)
		if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", script, err, out)
		}
		r.waitAll(v)
	}
	time.Sleep(settleWindow)
	r.waitAll(versionB)
	r.check("sh -c 'sleep 0.15; cat new.yaml' > f.yaml, 3 times")
}

// truncateWrite truncates path in place, pauses, and writes content: what
// an editor saving in place or a configuration tool does.
func truncateWrite(t *testing.T, path string, pause time.Duration, parts ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range parts {
		time.Sleep(pause)
		if _, err := f.WriteString(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// Truncate, a 3 ms pause, and the write, again and again about every
// 100 ms: some truncations land just before a re-read that an earlier
// write scheduled.
func TestFileWriterTruncatePauseWrite(t *testing.T) {
	r := newWriterRig(t, versionA, "")
	rng := rand.New(rand.NewPCG(3, 3))
	var last version
	for i := range 21 {
		v := versionB
		if i%2 == 1 {
			v = versionA
		}
		r.register(v)
		truncateWrite(t, r.file, 3*time.Millisecond, v.content())
		last = v
		time.Sleep(94*time.Millisecond + time.Duration(rng.IntN(6000))*time.Microsecond)
	}
	r.waitAll(last)
	time.Sleep(settleWindow)
	r.waitAll(last)
	r.check("truncate, 3 ms pause, write; 21 times about 100 ms apart")
}

// A prefix of a YAML list is valid YAML: a file caught half written parses
// and lists only its first endpoints.
func TestFileWriterHalfWrittenPrefixParses(t *testing.T) {
	r := newWriterRig(t, versionA, "")
	for _, v := range []version{versionB, versionA, versionB} {
		content := v.content()
		// Cut after the third endpoint's line: a complete YAML document.
		cut := 0
		for range 3 + 4 { // "services:", "- name", "port", "endpoints:", 3 endpoints
			cut += strings.Index(content[cut:], "\n") + 1
		}
		prefix := content[:cut]
		if !strings.HasSuffix(prefix, fmt.Sprintf("\"10.1.0.%d:8080\"\n", v.lo+2)) {
			t.Fatalf("prefix does not end on the third endpoint: %q", prefix)
		}
		r.register(v)
		truncateWrite(t, r.file, 150*time.Millisecond, prefix, content[cut:])
		r.waitAll(v)
	}
	time.Sleep(settleWindow)
	r.waitAll(versionB)
	r.check("half-written prefix (3 of 10 endpoints), 150 ms pause, the rest; 3 times")
}

// 200 rewrites in 2 s, mixing atomic renames, one-shot in-place writes
// and in-place writes in two halves with pauses.
func TestFileWriterManyMixedRewrites(t *testing.T) {
	r := newWriterRig(t, versionA, "")
	rng := rand.New(rand.NewPCG(11, 11))
	var last version
	start := time.Now()
	for i := range 200 {
		lo := 1 + rng.IntN(10)
		v := version{lo, lo + 9}
		r.register(v)
		content := v.content()
		switch i % 3 {
		case 0:
			harness.WriteAtomic(t, r.file, content)
		case 1:
			if err := os.WriteFile(r.file, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		case 2:
			half := len(content) / 2
			truncateWrite(t, r.file, 2*time.Millisecond, content[:half], content[half:])
		}
		last = v
		if wait := time.Until(start.Add(time.Duration(i+1) * 10 * time.Millisecond)); wait > 0 {
			time.Sleep(wait)
		}
	}
	t.Logf("200 rewrites in %v", time.Since(start).Round(time.Millisecond))
	r.waitAll(last)
	time.Sleep(settleWindow)
	r.waitAll(last)
	r.check("200 rewrites in 2 s, renames and in-place writes")
}
