package file

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The recording sink and log buffer are shared by every source's tests;
// fakeSink is local so these tests can add helpers to it.
type (
	call      = sinktest.Call
	logBuffer = sinktest.LogBuffer
)

type fakeSink struct{ *sinktest.Sink }

func newFakeSink() *fakeSink { return &fakeSink{sinktest.New(1000)} }

// wait bounds every wait for the source; tests never assert durations.
const wait = 5 * time.Second

// The settling wait and the withdrawal confirmation of the tests' sources.
const (
	testSettle  = 40 * time.Millisecond
	testConfirm = 300 * time.Millisecond
)

// fixture is a running source over a temp dir.
type fixture struct {
	dir  string // the watched directory
	sink *fakeSink
	tick chan time.Time // forces a periodic refresh
	logs *logBuffer
	stop func() // cancels Run and waits for it
}

// start runs a source on patterns (relative to dir) with a one-hour
// refresh that only the test's tick triggers, so only the watch is tested.
func start(t *testing.T, dir string, patterns ...string) *fixture {
	t.Helper()
	return startWith(t, dir, testSettle, testConfirm, patterns...)
}

// startWith is start with the settling wait and withdrawal confirmation
// given.
func startWith(t *testing.T, dir string, settle, confirm time.Duration, patterns ...string) *fixture {
	t.Helper()
	f := &fixture{dir: dir, sink: newFakeSink(), tick: make(chan time.Time), logs: &logBuffer{}}
	logger := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	src, err := NewSource(Config{Paths: patterns, RefreshInterval: time.Hour}, discovery.BuildContext{Name: "test", BaseDir: dir, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	// Short waits, so the tests are quick; the rules are the same.
	src.readDelay, src.settle, src.confirm = 5*time.Millisecond, settle, confirm
	src.newTicker = func(d time.Duration) (<-chan time.Time, func()) {
		if d != time.Hour {
			t.Errorf("refresh interval %v, want 1h", d)
		}
		return f.tick, func() {}
	}
	f.stop = runSource(t, src, f.sink)
	return f
}

// runSource runs src until the returned stop (also a cleanup) is called.
func runSource(t *testing.T, src discovery.Source, sink discovery.Sink) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Run(ctx, sink)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(wait):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// next returns the next Sink call.
func (f *fixture) next(t *testing.T) call {
	t.Helper()
	select {
	case c := <-f.sink.Calls:
		return c
	case <-time.After(wait):
		t.Fatalf("no Sink call within %v; logs:\n%s", wait, f.logs)
		return call{}
	}
}

// nextChange returns the next call that is not Healthy: a filesystem
// event may be followed by further re-reads that find nothing new.
func (f *fixture) nextChange(t *testing.T) call {
	t.Helper()
	for {
		if c := f.next(t); c.Op != "healthy" {
			return c
		}
	}
}

// nextUpdate returns the next call that is neither Healthy nor Failed: a
// broken file reports the source failed at every re-read until its fix has
// settled and is applied.
func (f *fixture) nextUpdate(t *testing.T) call {
	t.Helper()
	for {
		if c := f.next(t); c.Op != "healthy" && c.Op != "failed" {
			return c
		}
	}
}

// settle forces a refresh and expects it to find nothing new: proof that
// nothing unchanged is re-sent and no failure is pending.
func (f *fixture) settle(t *testing.T, wantOp string) {
	t.Helper()
	select {
	case f.tick <- time.Now():
	case <-time.After(wait):
		t.Fatal("the source does not take a refresh tick")
	}
	// Drain re-reads caused by earlier events, up to the tick's own.
	deadline := time.After(wait)
	for {
		select {
		case c := <-f.sink.Calls:
			if c.Op != wantOp {
				t.Fatalf("after a refresh: got %v, want only %s", c, wantOp)
			}
			if len(f.sink.Calls) == 0 {
				return
			}
		case <-deadline:
			t.Fatalf("no %s after a refresh tick", wantOp)
		}
	}
}

func (f *fixture) path(name string) string { return filepath.Join(f.dir, name) }

// expectGroups checks that c is op carrying exactly want (key -> hosts:ports).
func expectGroups(t *testing.T, c call, op string, want map[string][]string) {
	t.Helper()
	if c.Op != op {
		t.Fatalf("got %v, want %s", c, op)
	}
	got := map[string][]string{}
	for _, g := range c.Groups {
		if _, dup := got[g.Key]; dup {
			t.Errorf("key %s handed over twice in one call", g.Key)
		}
		got[g.Key] = describeServices(g.Services)
	}
	if len(want) == 0 && len(got) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s groups:\n got %v\nwant %v", op, got, want)
	}
}

// describeServices renders services as "host:port=addr,addr".
func describeServices(services []discovery.Service) []string {
	out := []string{}
	for _, s := range services {
		var addrs []string
		for _, e := range s.Endpoints {
			addrs = append(addrs, e.Addr.String())
		}
		out = append(out, s.Authority.String()+"="+strings.Join(addrs, ","))
	}
	return out
}

// svc renders a services file with one service.
func svc(host string, port int, addrs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "services:\n  - name: %s\n    port: %d\n    endpoints:\n", host, port)
	for _, a := range addrs {
		fmt.Fprintf(&b, "      - address: %s\n", a)
	}
	if len(addrs) == 0 {
		b.WriteString("      []\n")
	}
	return b.String()
}

func desc(host string, port int, addrs ...string) []string {
	return []string{fmt.Sprintf("%s:%d=%s", host, port, strings.Join(addrs, ","))}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeAtomic writes content next to nothing watched and renames it over
// path, as config management tools do.
func writeAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), "tmp")
	write(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestRunInitialReplace(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
	write(t, filepath.Join(dir, "b.json"), `{"services": [{"name": "b.demo", "port": 81, "endpoints": [{"address": "10.0.0.2:81"}]}]}`)
	write(t, filepath.Join(dir, "empty.yaml"), "services: []\n")
	write(t, filepath.Join(dir, "notes.txt"), "not matched")
	write(t, filepath.Join(dir, ".hidden.yaml"), "not: matched\n")
	if err := os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755); err != nil { // a directory is skipped
		t.Fatal(err)
	}
	if err := os.Symlink("missing.yaml", filepath.Join(dir, "dangling.yaml")); err != nil {
		t.Fatal(err)
	}

	// The second pattern matches a.yaml again: one group per file.
	f := start(t, dir, "*.yaml", "*.json", filepath.Join(dir, "a.yaml"))
	expectGroups(t, f.next(t), "replace", map[string][]string{
		f.path("a.yaml"): desc("a.demo", 80, "10.0.0.1:80"),
		f.path("b.json"): desc("b.demo", 81, "10.0.0.2:81"),
	})
	f.settle(t, "healthy")
}

func TestRunInitialReplaceEmpty(t *testing.T) {
	f := start(t, t.TempDir(), "*.yaml")
	expectGroups(t, f.next(t), "replace", nil)
	f.settle(t, "healthy")
}

func TestRunWatch(t *testing.T) {
	type step struct {
		name   string
		change func(t *testing.T, f *fixture)
		want   map[string][]string // the one Update expected (empty group: withdraw)
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"create", []step{{
			"new file",
			func(t *testing.T, f *fixture) { write(t, f.path("b.yaml"), svc("b.demo", 81, "10.0.0.2:81")) },
			map[string][]string{"b.yaml": desc("b.demo", 81, "10.0.0.2:81")},
		}}},
		{"atomic rename from outside", []step{{
			"rename over a.yaml",
			func(t *testing.T, f *fixture) { writeAtomic(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.9:80")) },
			map[string][]string{"a.yaml": desc("a.demo", 80, "10.0.0.9:80")},
		}}},
		{"atomic rename from a temp name", []step{{
			"write .a.yaml.tmp, rename over a.yaml",
			func(t *testing.T, f *fixture) {
				write(t, f.path(".a.yaml.tmp"), svc("a.demo", 80, "10.0.0.8:80"))
				if err := os.Rename(f.path(".a.yaml.tmp"), f.path("a.yaml")); err != nil {
					t.Fatal(err)
				}
			},
			map[string][]string{"a.yaml": desc("a.demo", 80, "10.0.0.8:80")},
		}}},
		{"delete", []step{{
			"remove a.yaml",
			func(t *testing.T, f *fixture) {
				if err := os.Remove(f.path("a.yaml")); err != nil {
					t.Fatal(err)
				}
			},
			map[string][]string{"a.yaml": {}},
		}}},
		{"rename away", []step{{
			"rename a.yaml to a.yaml.bak",
			func(t *testing.T, f *fixture) {
				if err := os.Rename(f.path("a.yaml"), f.path("a.yaml.bak")); err != nil {
					t.Fatal(err)
				}
			},
			map[string][]string{"a.yaml": {}},
		}}},
		{"valid empty file withdraws", []step{
			{
				"services: []",
				func(t *testing.T, f *fixture) { writeAtomic(t, f.path("a.yaml"), "services: []\n") },
				map[string][]string{"a.yaml": {}},
			},
			{
				"services again",
				func(t *testing.T, f *fixture) { writeAtomic(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.3:80")) },
				map[string][]string{"a.yaml": desc("a.demo", 80, "10.0.0.3:80")},
			},
			{
				"zero bytes",
				func(t *testing.T, f *fixture) { writeAtomic(t, f.path("a.yaml"), "") },
				map[string][]string{"a.yaml": {}},
			},
		}},
		{"new service in the file", []step{{
			"second service",
			func(t *testing.T, f *fixture) {
				writeAtomic(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.1:80")+"  - name: c.demo\n    port: 82\n")
			},
			map[string][]string{"a.yaml": {"a.demo:80=10.0.0.1:80", "c.demo:82="}},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, "a.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
			write(t, filepath.Join(dir, "z.yaml"), svc("z.demo", 90, "10.0.0.90:90"))
			f := start(t, dir, "*.yaml")
			expectGroups(t, f.next(t), "replace", map[string][]string{
				f.path("a.yaml"): desc("a.demo", 80, "10.0.0.1:80"),
				f.path("z.yaml"): desc("z.demo", 90, "10.0.0.90:90"),
			})
			for _, st := range tt.steps {
				st.change(t, f)
				want := map[string][]string{}
				for name, d := range st.want {
					want[f.path(name)] = d
				}
				// Only the changed file: z.yaml is never re-sent.
				expectGroups(t, f.nextChange(t), "update", want)
				f.settle(t, "healthy")
			}
		})
	}
}

func TestRunModifyInPlace(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
	write(t, filepath.Join(dir, "z.yaml"), svc("z.demo", 90, "10.0.0.90:90"))
	f := start(t, dir, "*.yaml")
	f.next(t)

	write(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.1:80", "10.0.0.2:80"))
	// An in-place write is a truncate then a write; a re-read between the
	// two may see an empty file (and withdraw). Wait for the final state.
	want := desc("a.demo", 80, "10.0.0.1:80", "10.0.0.2:80")
	for {
		c := f.nextChange(t)
		if c.Op != "update" || len(c.Groups) != 1 || c.Groups[0].Key != f.path("a.yaml") {
			t.Fatalf("got %v, want an update of a.yaml only", c)
		}
		if reflect.DeepEqual(describeServices(c.Groups[0].Services), want) {
			break
		}
	}
	f.settle(t, "healthy")
}

func TestRunUnchangedContentIsNotResent(t *testing.T) {
	dir := t.TempDir()
	content := svc("a.demo", 80, "10.0.0.1:80")
	write(t, filepath.Join(dir, "a.yaml"), content)
	f := start(t, dir, "*.yaml")
	f.next(t)

	writeAtomic(t, f.path("a.yaml"), content) // same bytes
	if c := f.next(t); c.Op != "healthy" {
		t.Fatalf("same bytes: got %v, want healthy", c)
	}
	writeAtomic(t, f.path("a.yaml"), "# a comment changes nothing\n"+content)
	if c := f.next(t); c.Op != "healthy" {
		t.Fatalf("same services: got %v, want healthy", c)
	}
	f.settle(t, "healthy")
}

func TestRunConfigMapSymlinkSwap(t *testing.T) {
	// The layout of a Kubernetes ConfigMap volume:
	//   svc.yaml -> ..data/svc.yaml, ..data -> ..2026_a
	dir := t.TempDir()
	mustMkdir(t, filepath.Join(dir, "..2026_a"))
	write(t, filepath.Join(dir, "..2026_a", "svc.yaml"), svc("cm.demo", 80, "10.0.1.1:80"))
	mustSymlink(t, "..2026_a", filepath.Join(dir, "..data"))
	mustSymlink(t, filepath.Join("..data", "svc.yaml"), filepath.Join(dir, "svc.yaml"))

	f := start(t, dir, "*.yaml")
	expectGroups(t, f.next(t), "replace", map[string][]string{
		f.path("svc.yaml"): desc("cm.demo", 80, "10.0.1.1:80"),
	})

	// The kubelet writes the new version aside, then re-points ..data
	// atomically with a temporary symlink renamed over it.
	mustMkdir(t, filepath.Join(dir, "..2026_b"))
	write(t, filepath.Join(dir, "..2026_b", "svc.yaml"), svc("cm.demo", 80, "10.0.1.2:80"))
	mustSymlink(t, "..2026_b", filepath.Join(dir, "..data_tmp"))
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_a")); err != nil {
		t.Fatal(err)
	}
	expectGroups(t, f.nextChange(t), "update", map[string][]string{
		f.path("svc.yaml"): desc("cm.demo", 80, "10.0.1.2:80"),
	})
	f.settle(t, "healthy")
}

func TestRunSyntaxErrorKeepsLastState(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
	f := start(t, dir, "*.yaml")
	f.next(t)

	writeAtomic(t, f.path("a.yaml"), "services:\n  - name: a.demo\n    port: [80\n")
	c := f.nextChange(t)
	if c.Op != "failed" || !strings.Contains(c.Err.Error(), f.path("a.yaml")+":3: syntax error") {
		t.Fatalf("broken file: got %v, want failed with path:line", c)
	}
	// Still broken: every refresh fails again, nothing is handed over.
	f.settle(t, "failed")
	if logs := f.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, f.path("a.yaml")+":3:") {
		t.Errorf("no error log with path:line:\n%s", logs)
	}

	writeAtomic(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.5:80"))
	expectGroups(t, f.nextUpdate(t), "update", map[string][]string{
		f.path("a.yaml"): desc("a.demo", 80, "10.0.0.5:80"),
	})
	f.settle(t, "healthy")
}

func TestRunValidationErrorThenSameContentBack(t *testing.T) {
	dir := t.TempDir()
	good := svc("a.demo", 80, "10.0.0.1:80")
	write(t, filepath.Join(dir, "a.yaml"), good)
	f := start(t, dir, "*.yaml")
	f.next(t)

	writeAtomic(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.1"))
	if c := f.nextChange(t); c.Op != "failed" || !strings.Contains(c.Err.Error(), f.path("a.yaml")+":5: services[0].endpoints[0].address:") {
		t.Fatalf("got %v, want failed naming the address", c)
	}
	// Back to what was last handed over: nothing to send, healthy again.
	writeAtomic(t, f.path("a.yaml"), good)
	if c := f.next(t); c.Op != "healthy" {
		t.Fatalf("got %v, want healthy", c)
	}
	f.settle(t, "healthy")
}

func TestRunBrokenFileAtStartup(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "good.yaml"), svc("good.demo", 80, "10.0.0.1:80"))
	write(t, filepath.Join(dir, "bad.yaml"), "services:\n  - name: bad.demo\n    colour: blue\n")
	f := start(t, dir, "*.yaml")

	// The source syncs with what it could read, then reports the failure.
	expectGroups(t, f.next(t), "replace", map[string][]string{
		f.path("good.yaml"): desc("good.demo", 80, "10.0.0.1:80"),
	})
	if c := f.next(t); c.Op != "failed" || !strings.Contains(c.Err.Error(), f.path("bad.yaml")+":3: services[0].colour: unknown key") {
		t.Fatalf("got %v, want failed naming bad.yaml:3", c)
	}
	writeAtomic(t, f.path("bad.yaml"), svc("bad.demo", 80, "10.0.0.2:80"))
	expectGroups(t, f.nextUpdate(t), "update", map[string][]string{
		f.path("bad.yaml"): desc("bad.demo", 80, "10.0.0.2:80"),
	})
	f.settle(t, "healthy")
}

func TestRunGlobInDirectoryPart(t *testing.T) {
	dir := t.TempDir()
	for _, team := range []string{"team-a", "team-b"} {
		mustMkdir(t, filepath.Join(dir, team))
	}
	write(t, filepath.Join(dir, "team-README"), "a file the directory glob matches") // not a directory: skipped
	mustMkdir(t, filepath.Join(dir, ".team-old"))                                    // a dot name: skipped as in a shell
	write(t, filepath.Join(dir, ".team-old", "svc.yaml"), svc("old.demo", 80, "10.0.0.9:80"))
	write(t, filepath.Join(dir, "team-a", "svc.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
	write(t, filepath.Join(dir, "team-b", "svc.yaml"), svc("b.demo", 80, "10.0.0.2:80"))
	f := start(t, dir, "team-*/svc.yaml", "*team-old/svc.yaml")
	expectGroups(t, f.next(t), "replace", map[string][]string{
		f.path("team-a/svc.yaml"): desc("a.demo", 80, "10.0.0.1:80"),
		f.path("team-b/svc.yaml"): desc("b.demo", 80, "10.0.0.2:80"),
	})
	writeAtomic(t, f.path("team-b/svc.yaml"), svc("b.demo", 80, "10.0.0.3:80"))
	expectGroups(t, f.nextChange(t), "update", map[string][]string{
		f.path("team-b/svc.yaml"): desc("b.demo", 80, "10.0.0.3:80"),
	})
	// A directory that disappears withdraws its files.
	if err := os.RemoveAll(filepath.Join(dir, "team-a")); err != nil {
		t.Fatal(err)
	}
	expectGroups(t, f.nextChange(t), "update", map[string][]string{f.path("team-a/svc.yaml"): {}})
	f.settle(t, "healthy")
}

// TestRunWatchAddedAtRefresh: the directory does not exist at start; the
// periodic refresh finds it, reads it and starts watching it.
func TestRunWatchAddedAtRefresh(t *testing.T) {
	base := t.TempDir()
	f := start(t, base, "later/*.yaml")
	f.dir = filepath.Join(base, "later")
	expectGroups(t, f.next(t), "replace", nil)
	if logs := f.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "cannot watch directory") {
		t.Errorf("no warning about the missing directory:\n%s", logs)
	}

	mustMkdir(t, f.dir)
	write(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
	f.tick <- time.Now()
	expectGroups(t, f.nextChange(t), "update", map[string][]string{f.path("a.yaml"): desc("a.demo", 80, "10.0.0.1:80")})

	// Now watched: a change arrives without a tick.
	writeAtomic(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.2:80"))
	expectGroups(t, f.nextChange(t), "update", map[string][]string{f.path("a.yaml"): desc("a.demo", 80, "10.0.0.2:80")})
}

// TestRunShortRefresh builds the source from YAML the way the config
// loader does, with a short refresh_interval, and relies on it alone: the
// directory is created after start, so no watch can see the file arrive.
func TestRunShortRefresh(t *testing.T) {
	base := t.TempDir()
	k, ok := discovery.LookupKind("file")
	if !ok {
		t.Fatal(`kind "file" is not registered`)
	}
	var node yaml.Node
	if err := yaml.Unmarshal([]byte("paths: [later/*.yaml]\nrefresh_interval: 20ms\n"), &node); err != nil {
		t.Fatal(err)
	}
	src, err := k.New(node.Content[0], discovery.BuildContext{Name: "short", BaseDir: base})
	if err != nil {
		t.Fatal(err)
	}
	sink := newFakeSink()
	runSource(t, src, sink)
	f := &fixture{dir: filepath.Join(base, "later"), sink: sink, logs: &logBuffer{}}
	expectGroups(t, f.next(t), "replace", nil)

	mustMkdir(t, f.dir)
	writeAtomic(t, f.path("a.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
	expectGroups(t, f.nextChange(t), "update", map[string][]string{f.path("a.yaml"): desc("a.demo", 80, "10.0.0.1:80")})
}

func TestRunStopsQuietly(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), svc("a.demo", 80, "10.0.0.1:80"))
	f := start(t, dir, "*.yaml")
	f.next(t)
	write(t, f.path("b.yaml"), svc("b.demo", 80, "10.0.0.2:80")) // a pending debounce at stop
	f.stop()
	if logs := f.logs.String(); strings.Contains(logs, "level=ERROR") || strings.Contains(logs, "level=WARN") {
		t.Errorf("cancellation logged as a problem:\n%s", logs)
	}
}

func TestRunCancelledBeforeStart(t *testing.T) {
	src, err := NewSource(Config{Paths: []string{"*.yaml"}}, discovery.BuildContext{BaseDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sink := newFakeSink()
	src.Run(ctx, sink)
	if len(sink.Calls) != 0 {
		t.Errorf("Sink called by a source cancelled before it ran")
	}
}

func TestNewFromConfig(t *testing.T) {
	k, ok := discovery.LookupKind(KindName)
	if !ok {
		t.Fatal("not registered")
	}
	base := t.TempDir()
	tests := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, s *Source)
	}{
		{name: "defaults", yaml: "paths: [services/*.yaml, /etc/tributary/more/*.json, services/*.yaml]", check: func(t *testing.T, s *Source) {
			want := []string{filepath.Join(base, "services/*.yaml"), "/etc/tributary/more/*.json"}
			if !slices.Equal(s.Patterns(), want) {
				t.Errorf("patterns %v, want %v", s.Patterns(), want)
			}
			if s.interval != DefaultRefreshInterval {
				t.Errorf("refresh %v, want %v", s.interval, DefaultRefreshInterval)
			}
		}},
		{name: "refresh", yaml: "paths: [a.yaml]\nrefresh_interval: 90s", check: func(t *testing.T, s *Source) {
			if s.interval != 90*time.Second {
				t.Errorf("refresh %v", s.interval)
			}
		}},
		{name: "settling defaults", yaml: "paths: [a.yaml]", check: func(t *testing.T, s *Source) {
			if s.settle != DefaultSettle || s.confirm != DefaultWithdrawConfirm || s.maxWithdraw != DefaultWithdrawMax {
				t.Errorf("settle %v, withdraw_confirm %v, withdraw_max %v", s.settle, s.confirm, s.maxWithdraw)
			}
		}},
		{name: "settling keys", yaml: "paths: [a.yaml]\nsettle: 1s\nwithdraw_confirm: 0s\nwithdraw_max: 30%", check: func(t *testing.T, s *Source) {
			if s.settle != time.Second || s.confirm != 0 || s.maxWithdraw != 0.3 {
				t.Errorf("settle %v, withdraw_confirm %v, withdraw_max %v", s.settle, s.confirm, s.maxWithdraw)
			}
		}},
		{name: "bad withdraw_max", yaml: "paths: [a.yaml]\nwithdraw_max: 150%", wantErr: "line 2: withdraw_max:"},
		{name: "negative settle", yaml: "paths: [a.yaml]\nsettle: -1s", wantErr: "line 2: settle:"},
		{name: "unknown key", yaml: "paths: [a.yaml]\nrefresh: 5m", wantErr: "line 2: refresh:"},
		{name: "no paths", yaml: "refresh_interval: 5m", wantErr: "line 1: paths: required"},
		{name: "empty paths", yaml: "refresh_interval: 5m\npaths: []", wantErr: "line 2: paths: required"},
		{name: "empty pattern", yaml: "paths:\n  - a.yaml\n  - ''", wantErr: "line 3: paths[1]: empty pattern"},
		{name: "bad pattern", yaml: "paths:\n  - a.yaml\n  - 'x/[a.yaml'", wantErr: "line 3: paths[1]: \"x/[a.yaml\": syntax error in pattern"},
		{name: "paths not a list", yaml: "paths: {a: b}", wantErr: "line 1: paths: want a list"},
		{name: "bad duration", yaml: "paths: [a.yaml]\nrefresh_interval: 300", wantErr: "line 2: refresh_interval: invalid duration"},
		{name: "negative duration", yaml: "paths: [a.yaml]\nrefresh_interval: -5m", wantErr: "line 2: refresh_interval: invalid duration"},
		{name: "zero duration", yaml: "paths: [a.yaml]\nrefresh_interval: 0s", wantErr: "line 2: refresh_interval: must be positive"},
		{name: "not a mapping", yaml: "[a.yaml]", wantErr: "want a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var node yaml.Node
			if err := yaml.Unmarshal([]byte(tt.yaml), &node); err != nil {
				t.Fatal(err)
			}
			src, err := k.New(node.Content[0], discovery.BuildContext{Name: "x", BaseDir: base})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, src.(*Source))
		})
	}
}

func TestServicesEqual(t *testing.T) {
	a := []discovery.Service{{Authority: discovery.Authority{Host: "a", Port: 1}, Endpoints: []discovery.Endpoint{
		{Addr: netip.MustParseAddrPort("10.0.0.1:1"), Labels: map[string]string{"k": "v"}},
	}}}
	b := []discovery.Service{{Authority: discovery.Authority{Host: "a", Port: 1}, Endpoints: []discovery.Endpoint{
		{Addr: netip.MustParseAddrPort("10.0.0.1:1"), Labels: map[string]string{"k": "w"}},
	}}}
	if !servicesEqual(a, a) || servicesEqual(a, b) || servicesEqual(a, nil) {
		t.Error("servicesEqual is wrong")
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
