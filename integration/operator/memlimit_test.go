//go:build integration

package operator

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// The Go memory limit follows the memory limit of the cgroup the server
// runs in (server.memory_limit_ratio), and the environment wins over it.
// The server runs in a cgroup this test creates, with a real limit.
func TestMemoryLimitFollowsTheContainer(t *testing.T) {
	var limit int64 = 512 << 20
	procs, remove, err := harness.MemoryCgroup("tributary-test", limit)
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() {
		if err := remove(); err != nil {
			t.Errorf("removing the test's cgroup: %v", err)
		}
	})
	inCgroup := func(env ...string) func(*exec.Cmd) {
		return func(cmd *exec.Cmd) {
			harness.InCgroup(cmd, procs)
			cmd.Env = append(os.Environ(), env...)
		}
	}
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "svc.yaml"), "services:\n  - name: web.demo:8080\n    endpoints: [{address: 127.0.0.1:1}]\n")
	sources := "sources:\n  - {name: local, kind: file, paths: [\"" + filepath.Join(dir, "*.yaml") + "\"]}\n"

	for _, tc := range []struct {
		name       string
		serverKeys string
		wrap       func(*exec.Cmd)
		want       int64
		fromCgroup bool
	}{
		{"default ratio 0.9", "", inCgroup(), int64(float64(limit) * 0.9), true},
		{"ratio 0.5", "  memory_limit_ratio: 0.5\n", inCgroup(), int64(float64(limit) * 0.5), true},
		{"GOMEMLIMIT wins", "", inCgroup("GOMEMLIMIT=300MiB"), 300 << 20, false},
		{"AUTOMEMLIMIT=off wins", "", inCgroup("AUTOMEMLIMIT=off"), math.MaxInt64, false},
		{"ratio 0 is off", "  memory_limit_ratio: 0\n", inCgroup(), math.MaxInt64, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := harness.StartWrapped(t, t.TempDir(), tc.serverKeys, sources, tc.wrap)
			if got := gomemlimit(t, srv); got != tc.want {
				t.Errorf("go_gc_gomemlimit_bytes = %d, want %d", got, tc.want)
			}
			if tc.fromCgroup && !strings.Contains(srv.Logs.String(), "Go memory limit set from the container's") {
				t.Errorf("no log line saying the limit was set:\n%s", srv.Logs.String())
			}
			if code, _ := srv.Sigterm(); code != 0 {
				t.Errorf("exit code %d", code)
			}
		})
	}
}

func gomemlimit(t *testing.T, srv *harness.Server) int64 {
	t.Helper()
	code, body := srv.HTTPGet("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for line := range strings.Lines(body) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go_gc_gomemlimit_bytes "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			if f >= math.MaxInt64 {
				return math.MaxInt64
			}
			return int64(f)
		}
	}
	t.Fatal("/metrics has no go_gc_gomemlimit_bytes")
	return 0
}
