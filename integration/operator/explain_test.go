//go:build integration

package operator

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
