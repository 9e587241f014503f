//go:build integration

package operator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// TestExplainAndAPI runs `tributary explain` and reads /api/v1 against the
// running binary, with two sources, a priority and a critical endpoint.
func TestExplainAndAPI(t *testing.T) {
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "a.yaml"), `services:
  - name: web.demo
    port: 8080
    endpoints:
      - address: 127.0.0.1:1
        zone: zone-a
        health: passing
      - address: 127.0.0.1:2
        zone: zone-b
        health: passing
      - address: 127.0.0.1:3
        zone: zone-b
        health: critical
`)
	harness.WriteAtomic(t, filepath.Join(dir, "b.yaml"), `services:
  - name: web.demo
    port: 8080
    endpoints:
      - address: 127.0.0.1:1
        labels: {note: "<b>bold</b>"}
`)
	s := harness.Start(t, dir, `sources:
  - name: primary
    kind: file
    priority: 10
    paths: ["a.yaml"]
  - name: secondary
    kind: file
    paths: ["b.yaml"]
`)
	out, err := exec.Command(harness.Bin, "explain", "web.demo:8080", "--zone", "zone-a", "--admin", s.Admin).CombinedOutput()
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, out)
	}
	// Compared with the columns' spaces squeezed.
	squeezed := strings.Join(strings.Fields(string(out)), " ")
	for _, want := range []string{
		"web.demo:8080 for a client in zone zone-a: 2 of 4 endpoints served",
		"panic threshold 50%: 2 of 3 addresses serving; not in panic mode",
		"127.0.0.1:3 zone-b critical no primary critical evicted: health is critical; its source reports it critical",
		`127.0.0.1:1 - unknown no secondary duplicate not served: source "primary" serves this address`,
	} {
		if !strings.Contains(squeezed, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}

	out, err = exec.Command(harness.Bin, "explain", "--json", "nothing.demo:80", "--admin", s.Admin).Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("explain of an unknown authority: %v, want exit 3", err)
	}
	var v struct {
		Exists bool `json:"exists"`
		Served int  `json:"served"`
	}
	if err := json.Unmarshal(out, &v); err != nil || v.Exists || v.Served != 0 {
		t.Fatalf("--json: %v %+v\n%s", err, v, out)
	}

	code, body := s.HTTPGet("/api/v1/services?q=web")
	if code != 200 || !strings.Contains(body, `"total": 1`) || !strings.Contains(body, `"primary",`) || !strings.Contains(body, `"critical": 1`) {
		t.Fatalf("/api/v1/services: %d\n%s", code, body)
	}
	code, body = s.HTTPGet("/api/v1/sources")
	if code != 200 || strings.Count(body, `"state": "synced"`) != 2 {
		t.Fatalf("/api/v1/sources: %d\n%s", code, body)
	}
}

// startCheckedPair starts tributary on a file of web.demo:8080 with two
// endpoints, two real listeners, under a fast active TCP check.
func startCheckedPair(t *testing.T) (s *harness.Server, up, down net.Listener) {
	t.Helper()
	up, down = harness.Acceptor(t, "127.0.0.1:0"), harness.Acceptor(t, "127.0.0.1:0")
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "svc.yaml"), `services:
  - name: web.demo
    port: 8080
    endpoints:
      - address: `+up.Addr().String()+`
      - address: `+down.Addr().String()+`
`)
	s = harness.Start(t, dir, "sources:\n  - {name: local, kind: file, paths: [svc.yaml], health_check: "+harness.QuickTCPCheck+"}\n")
	return s, up, down
}

// TestExplainCheckFailure: an endpoint whose active TCP check fails after
// its listener closes is explained with the check's own error — in
// /api/v1's check object and why, and in `tributary explain` — while the
// other endpoint's check, passing, has none.
func TestExplainCheckFailure(t *testing.T) {
	s, up, down := startCheckedPair(t)
	type check struct {
		Type                string    `json:"type"`
		Target              string    `json:"target"`
		Verdict             string    `json:"verdict"`
		LastError           string    `json:"last_error"`
		LastErrorTime       time.Time `json:"last_error_time"`
		ConsecutiveFailures int       `json:"consecutive_failures"`
	}
	type endpoint struct {
		Address string `json:"address"`
		Health  string `json:"health"`
		Reason  string `json:"reason"`
		Why     string `json:"why"`
		Check   *check `json:"check"`
	}
	read := func() map[string]endpoint {
		code, body := s.HTTPGet("/api/v1/services/web.demo:8080")
		var v struct {
			Endpoints []endpoint `json:"endpoints"`
		}
		if err := json.Unmarshal([]byte(body), &v); code != 200 || err != nil {
			t.Fatalf("/api/v1/services/web.demo:8080: %d %v\n%s", code, err, body)
		}
		out := map[string]endpoint{}
		for _, e := range v.Endpoints {
			out[e.Address] = e
		}
		return out
	}
	wait := func(what string, ok func(map[string]endpoint) bool) map[string]endpoint {
		t.Helper()
		deadline := time.Now().Add(harness.WaitFor)
		for {
			eps := read()
			if ok(eps) {
				return eps
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: never; last %+v", what, eps)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("both checked and passing", func(eps map[string]endpoint) bool {
		return eps[up.Addr().String()].Health == "passing" && eps[down.Addr().String()].Health == "passing"
	})

	closedAt := time.Now()
	down.Close()
	eps := wait("the closed one critical", func(eps map[string]endpoint) bool {
		return eps[down.Addr().String()].Reason == "critical"
	})
	e := eps[down.Addr().String()]
	if c := e.Check; c == nil || c.Type != "tcp" || c.Target != down.Addr().String() || c.Verdict != "critical" ||
		!strings.Contains(c.LastError, "connection refused") || c.ConsecutiveFailures < 2 || c.LastErrorTime.Before(closedAt.Add(-time.Second)) {
		t.Errorf("the closed listener's check: %+v", c)
	}
	if !strings.Contains(e.Why, "its active tcp health check of "+down.Addr().String()+" fails: ") || !strings.Contains(e.Why, "connection refused") {
		t.Errorf("why: %q", e.Why)
	}
	if c := eps[up.Addr().String()].Check; c == nil || c.Verdict != "passing" || c.LastError != "" {
		t.Errorf("the open listener's check: %+v", c)
	}

	out, err := exec.Command(harness.Bin, "explain", "web.demo:8080", "--admin", s.Admin).CombinedOutput()
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, out)
	}
	squeezed := strings.Join(strings.Fields(string(out)), " ")
	for _, want := range []string{
		down.Addr().String() + " - critical no local critical evicted: health is critical; its active tcp health check of " + down.Addr().String() + " fails: dial tcp " + down.Addr().String(),
		"active health checks: " + down.Addr().String() + " (local, tcp check of " + down.Addr().String() + ", now critical): last failure at ",
		"connection refused",
	} {
		if !strings.Contains(squeezed, want) {
			t.Errorf("explain lacks %q:\n%s", want, out)
		}
	}
}

// TestWatchSaysWhyRemoved: `tributary watch` against the running binary
// reads health from /api/v1: when a checked listener closes, the endpoint's
// REMOVE row carries its health and the explain view's reason, the
// check's error included.
func TestWatchSaysWhyRemoved(t *testing.T) {
	s, _, down := startCheckedPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
	defer cancel()
	var stdout harness.SyncBuffer
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, harness.Bin, "watch", "--addr", s.API, "--admin", s.Admin, "--health-interval", "100ms", "web.demo:8080")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(stdout.String(), "# 2 endpoints") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	down.Close()
	for !strings.Contains(stdout.String(), "REMOVE") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch: %v (stderr %s)", err, stderr.String())
	}
	var removed string
	for _, line := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(line, "REMOVE") {
			removed = strings.Join(strings.Fields(line), " ")
		}
	}
	want := "REMOVE " + down.Addr().String() + " - critical 10000 local - why: evicted: health is critical; its active tcp health check of " + down.Addr().String() + " fails: dial tcp " + down.Addr().String()
	if !strings.HasPrefix(removed, want) || !strings.Contains(removed, "connection refused") {
		t.Errorf("REMOVE row %q, want it to start with %q; output:\n%s", removed, want, stdout.String())
	}
}
