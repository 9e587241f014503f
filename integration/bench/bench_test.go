//go:build integration

// Package bench runs the benchmark tool, cmd/tributary-bench, against the
// real tributary binary. The test runs the quick steady workload and checks
// correctness only (every stream synced, every final state exact, no
// contract violation) — never timings. The Benchmark functions run the
// full-size workloads and report their figures (see docs/performance.md).
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// buildTool builds tributary-bench (with the race detector when race is
// set: the test checks the measuring instrument too) unless
// TRIBUTARY_BENCH_BIN names one.
func buildTool(tb testing.TB, race bool) string {
	tb.Helper()
	if bin := os.Getenv("TRIBUTARY_BENCH_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(tb.TempDir(), "tributary-bench")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "github.com/tributary-mesh/tributary/cmd/tributary-bench")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("building tributary-bench: %v\n%s", err, out)
	}
	return bin
}

// runTool runs a workload with the tool's temporary files (the server's
// config and log, kept) under a folder of the test, and returns the
// decoded JSON result, stdout and stderr.
func runTool(tb testing.TB, tool, workload string, bound time.Duration, args ...string) (res map[string]any, stdout, stderr string, err error) {
	tb.Helper()
	dir := tb.TempDir()
	out := filepath.Join(dir, "result.json")
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	args = append([]string{workload, "--bin", harness.Bin, "--json", out, "--keep"}, args...)
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+dir)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	b, rerr := os.ReadFile(out)
	if rerr != nil {
		tb.Fatalf("tributary-bench %s wrote no result (%v): %v\nstdout:\n%s\nstderr:\n%s", workload, err, rerr, o.String(), e.String())
	}
	if jerr := json.Unmarshal(b, &res); jerr != nil {
		tb.Fatalf("result %s: %v", b, jerr)
	}
	// The server may be race-enabled (make test-integration): fail on a race
	// it reported, as the harness does.
	logs, _ := filepath.Glob(filepath.Join(dir, "tributary-bench-*", "server.log"))
	for _, l := range logs {
		if b, _ := os.ReadFile(l); bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			tb.Errorf("the race detector found a data race in tributary:\n%s", b)
		}
	}
	if strings.Contains(e.String(), "WARNING: DATA RACE") {
		tb.Errorf("the race detector found a data race in tributary-bench:\n%s", e.String())
	}
	return res, o.String(), e.String(), err
}

func number(tb testing.TB, res map[string]any, key string) float64 {
	tb.Helper()
	v, ok := res[key].(float64)
	if !ok {
		tb.Fatalf("result has no number %q: %v", key, res)
	}
	return v
}

// TestQuickSteadyIsCorrect: with churn running, every stream gets its first
// full answer, and ends holding exactly the bench source's final state.
func TestQuickSteadyIsCorrect(t *testing.T) {
	tool := buildTool(t, true)
	res, stdout, stderr, err := runTool(t, tool, "steady", 5*time.Minute, "--quick")
	if err != nil || res["ok"] != true {
		t.Fatalf("tributary-bench steady --quick: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	if lines := strings.Split(strings.TrimSpace(stdout), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "workload=steady ") {
		t.Errorf("stdout should be one result line: %q", stdout)
	}
	streams := number(t, res, "streams")
	if got := number(t, res, "streams_synced"); got != streams || streams == 0 {
		t.Errorf("%v of %v streams synced", got, streams)
	}
	for _, k := range []string{"lost_final_states", "contract_errors", "stream_errors"} {
		if v := number(t, res, k); v != 0 {
			t.Errorf("%s = %v, want 0", k, v)
		}
	}
	// The churn reached the streams, so the final-state check compared a
	// changed world, not the initial one.
	if d := number(t, res, "deliveries"); d == 0 {
		t.Error("no change was delivered during the churn")
	}
}

// TestQuickProfileIsCorrect: every GetProfile stream gets a first profile,
// and it names its service.
func TestQuickProfileIsCorrect(t *testing.T) {
	tool := buildTool(t, true)
	res, stdout, stderr, err := runTool(t, tool, "profile", 5*time.Minute, "--quick")
	if err != nil || res["ok"] != true {
		t.Fatalf("tributary-bench profile --quick: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	streams := number(t, res, "streams")
	if got := number(t, res, "streams_synced"); got != streams || streams == 0 {
		t.Errorf("%v of %v profile streams synced", got, streams)
	}
	if v := number(t, res, "wrong_profiles"); v != 0 {
		t.Errorf("wrong_profiles = %v, want 0", v)
	}
}

// The benchmarks run the full-size workloads of docs/performance.md (each
// from half a minute to a few minutes on two cores), print the tool's
// result line, and report the main figures:
//
//	make build && TRIBUTARY_BIN=$PWD/bin/tributary go test -tags integration \
//	    -run '^$' -bench . -benchtime 1x -timeout 30m ./integration/bench/
//
// TRIBUTARY_BENCH_FLAGS adds flags to every run (e.g. "--quick", or
// "--streams 50000"). A correctness failure fails the benchmark.
//
// BenchmarkSteady, BenchmarkManyStreams and BenchmarkMillion also measure
// the machine's wake-cost floor after the server stops, in the same run,
// and report the server's CPU against it (vs-floor: the target is
// at most 2 per delivery at the steady shape).
func BenchmarkSteady(b *testing.B) { benchWorkload(b, "steady", withFloor(latencyFigures)) }

// BenchmarkManyStreams: 100,000 streams on 1,000 connections over 1,000
// services × 10, 200 changes/s for 30 s (p99, sync, RSS, lost final states).
func BenchmarkManyStreams(b *testing.B) {
	benchWorkload(b, "manystreams", withFloor(latencyFigures, map[string]string{
		"rss_max_mib":       "rss-max-MiB",
		"lost_final_states": "lost",
		"refusals_retried":  "refusals",
	}))
}

// BenchmarkMillion: 1,000,000 endpoints (100,000 services × 10) with
// 10,000 streams and 5,000 changes/s for 30 s (RSS, ready from start, p99).
func BenchmarkMillion(b *testing.B) {
	benchWorkload(b, "million", withFloor(latencyFigures, millionFigures))
}

var millionFigures = map[string]string{
	"ready_s":           "ready-s",
	"rss_max_mib":       "rss-max-MiB",
	"achieved_rate":     "changes/s",
	"lost_final_states": "lost",
	"skipped":           "skipped-changes",
}

// BenchmarkMillionInContainer is BenchmarkMillion with the server in a
// memory cgroup of 2.5 GiB, the RSS bound: a replica in a container
// with that limit, whose Go memory limit follows it (0.9 of it,
// server.memory_limit_ratio). Skipped where no cgroup can be made.
func BenchmarkMillionInContainer(b *testing.B) {
	_, remove, err := harness.MemoryCgroup("tributary-bench-probe", 2560<<20)
	if err != nil {
		b.Skip(err)
	}
	if err := remove(); err != nil {
		b.Fatal(err)
	}
	benchWorkload(b, "million", withFloor(latencyFigures, millionFigures), "--memory-limit-mib", "2560")
}

// withFloor is figures with the floor's and any more.
func withFloor(figures map[string]string, more ...map[string]string) map[string]string {
	out := map[string]string{
		"floor_isolated_change_floor_us": "floor-µs/change",
		"floor_us_per_delivery":          "floor-µs/delivery",
		"cpu_per_delivery_vs_floor":      "cpu/delivery-vs-floor",
		"server_cpu_us_per_change":       "cpu-µs/change",
		"cpu_per_change_vs_floor":        "cpu/change-vs-floor",
		"get_floor_cpu_us_per_delivery":  "get-floor-µs/delivery",
		"steal_pct":                      "steal-%",
		"load1":                          "load1",
	}
	maps.Copy(out, figures)
	for _, m := range more {
		maps.Copy(out, m)
	}
	return out
}

func BenchmarkHotFanout(b *testing.B) { benchWorkload(b, "hotfanout", latencyFigures) }

func BenchmarkRamp(b *testing.B) {
	benchWorkload(b, "ramp", map[string]string{"max_ok_rate": "max-ok-changes/s", "sync_s": "sync-s"})
}

func BenchmarkIdle(b *testing.B) {
	benchWorkload(b, "idle", map[string]string{
		"mem_per_stream_kib_w10000":  "KiB/stream@10k",
		"mem_per_stream_kib_w50000":  "KiB/stream@50k",
		"rss_mib_w50000":             "rss-MiB@50k-streams",
		"sync_s_w50000":              "sync-s@50k",
		"mem_per_endpoint_b":         "B/endpoint",
		"rss_mib_e100000_w10000":     "rss-MiB@100k-endpoints+10k-streams",
		"live_per_endpoint_b":        "live-B/endpoint",
		"live_per_stream_kib_w10000": "live-KiB/stream@10k",
	})
}

func BenchmarkStorm(b *testing.B) {
	benchWorkload(b, "storm", map[string]string{"sync_s": "sync-s", "first_p50_ms": "first-p50-ms", "first_p99_ms": "first-p99-ms"})
}

func BenchmarkProfile(b *testing.B) {
	benchWorkload(b, "profile", map[string]string{
		"sync_s":               "sync-s",
		"mem_per_stream_kib":   "KiB/stream",
		"live_per_stream_kib":  "live-KiB/stream",
		"stack_per_stream_kib": "stack-KiB/stream",
	})
}

// BenchmarkWakeCost reports what a wake costs this machine: the floor under
// the steady workload's CPU per change (docs/performance.md).
func BenchmarkWakeCost(b *testing.B) {
	benchWorkload(b, "wakecost", map[string]string{
		"write_to_sleeping_reader_us": "µs/write-to-sleeping-reader",
		"write_to_busy_reader_us":     "µs/write-to-busy-reader",
		"idle_wake_us":                "µs/idle-wake",
		"isolated_change_floor_us":    "µs/isolated-change-floor",
	})
}

var latencyFigures = map[string]string{
	"p50_ms":                     "p50-ms",
	"p90_ms":                     "p90-ms",
	"p99_ms":                     "p99-ms",
	"max_ms":                     "max-ms",
	"sync_s":                     "sync-s",
	"new_stream_p99_ms":          "new-stream-p99-ms",
	"server_cpu_us_per_delivery": "cpu-µs/delivery",
	"mem_per_stream_kib":         "KiB/stream",
	"rss_mib":                    "rss-MiB",
	"deliveries_per_s":           "deliveries/s",
}

func benchWorkload(b *testing.B, workload string, figures map[string]string, extra ...string) {
	tool := buildTool(b, false)
	args := append(strings.Fields(os.Getenv("TRIBUTARY_BENCH_FLAGS")), extra...)
	var res map[string]any
	for b.Loop() {
		var stdout, stderr string
		var err error
		res, stdout, stderr, err = runTool(b, tool, workload, 25*time.Minute, args...)
		fmt.Print(stdout)
		if err != nil || res["ok"] != true {
			b.Fatalf("tributary-bench %s: %v\n%s\n%s", workload, err, stdout, stderr)
		}
	}
	for key, unit := range figures {
		if v, ok := res[key].(float64); ok {
			b.ReportMetric(v, unit)
		}
	}
}
