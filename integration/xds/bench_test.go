//go:build integration

package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// TestBenchXDSQuick runs `tributary-bench steady --api xds` at a small
// size: ADS streams on EDS with ACKs, on the real tributary and on
// go-control-plane's LinearCache server (tools/gcp-xds-v0.14.0, built by
// the tool). It checks correctness only, never timings: every stream
// synced on both, changes were delivered on both (so the bench labels
// reach the client in the endpoint metadata), and every stream ends on the
// bench source's final state.
func TestBenchXDSQuick(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tool := filepath.Join(dir, "tributary-bench")
	if out, err := exec.Command("go", "build", "-o", tool, "github.com/tributary-mesh/tributary/cmd/tributary-bench").CombinedOutput(); err != nil {
		t.Fatalf("building tributary-bench: %v\n%s", err, out)
	}
	gcp := filepath.Join(dir, "gcp-xds")
	build := exec.Command("go", "build", "-o", gcp, ".")
	build.Dir = filepath.Join(repoRoot(t), "tools", "gcp-xds-v0.14.0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the go-control-plane comparison server: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "result.json")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, "steady", "--api", "xds", "--quick", "--bin", harness.Bin, "--gcp-bin", gcp,
		"--streams", "100", "--new-streams", "5", "--duration", "2s", "--json", out)
	cmd.Env = append(os.Environ(), "TMPDIR="+dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	b, rerr := os.ReadFile(out)
	if rerr != nil {
		t.Fatalf("no result (%v): %v\nstdout:\n%s\nstderr:\n%s", err, rerr, stdout.String(), stderr.String())
	}
	var res map[string]any
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if err != nil || res["ok"] != true {
		t.Fatalf("tributary-bench steady --api xds: %v\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	for _, p := range []string{"", "gcp_"} {
		num := func(k string) float64 {
			v, ok := res[p+k].(float64)
			if !ok {
				t.Fatalf("result has no number %s%s: %s", p, k, stdout.String())
			}
			return v
		}
		if num("streams_synced") != num("streams") || num("streams") == 0 {
			t.Errorf("%s: %v of %v streams synced", p, num("streams_synced"), num("streams"))
		}
		for _, k := range []string{"lost_final_states", "contract_errors", "stream_errors"} {
			if v := num(k); v != 0 {
				t.Errorf("%s%s = %v", p, k, v)
			}
		}
		if num("deliveries") == 0 {
			t.Errorf("%s: no change delivered during the churn", p)
		}
	}
	if strings.Contains(stderr.String(), "WARNING: DATA RACE") {
		t.Errorf("data race:\n%s", stderr.String())
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "tributary-bench-*", "server.log"))
	for _, l := range logs {
		if b, _ := os.ReadFile(l); bytes.Contains(b, []byte("WARNING: DATA RACE")) {
			t.Errorf("the race detector found a data race in tributary:\n%s", b)
		}
	}
	t.Logf("%s", strings.TrimSpace(stdout.String()))
}

// repoRoot is the repository this test file is in.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
