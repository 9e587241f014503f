package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/cache"
	adminpkg "github.com/tributary-mesh/tributary/destination/admin"
	"github.com/tributary-mesh/tributary/discovery"
)

// TestExplain: the table, the JSON, and the exit codes.
func TestExplain(t *testing.T) {
	store := cache.New()
	svc := webDemo()
	svc.Endpoints[0].Health = discovery.HealthPassing
	svc.Endpoints[1].Health = discovery.HealthPassing
	svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: svc.Endpoints[0].Addr, Health: discovery.HealthCritical},
		discovery.Endpoint{Addr: svc.Endpoints[1].Addr, Health: discovery.HealthPassing, Labels: map[string]string{"x": "\x1b[31mred"}})
	// Three groups: the critical copy of 10.0.0.1 in another key, and a
	// third address, critical, under the file source.
	if _, err := store.Apply("local", []discovery.Group{{Key: "web", Services: []discovery.Service{{Authority: svc.Authority, Endpoints: svc.Endpoints[:2]}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Apply("other", []discovery.Group{{Key: "o\x1bk", Services: []discovery.Service{{Authority: svc.Authority, Endpoints: svc.Endpoints[2:]}}}}); err != nil {
		t.Fatal(err)
	}
	up := startAdmin(t, store)

	var stdout, stderr strings.Builder
	if code := run([]string{"explain", "web.demo:8080", "--admin", up}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, want 0 (stderr %q)", code, stderr.String())
	}
	for _, want := range []string{
		"web.demo:8080 for a client without a zone: 2 of 4 endpoints served\n",
		"panic threshold 50%: 2 of 2 addresses serving; not in panic mode\n",
		"10.0.0.1:8080  zone-a  passing   yes     local   served     served",
		"10.0.0.1:8080  -       critical  no      other   critical   evicted: health is critical",
		`10.0.0.2:8080  -       passing   no      other   duplicate  not served: source "local" serves this address`,
		" o?k\n",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("explain lacks %q:\n%s", want, stdout.String())
		}
	}
	if strings.Contains(stdout.String(), "\x1b") {
		t.Error("a control character from a source reached the terminal")
	}

	stdout.Reset()
	if code := run([]string{"explain", "--json", "--zone", "zone-a", "--admin", "http://" + up, "web.demo:8080"}, &stdout, &stderr); code != 0 {
		t.Fatalf("--json: exit %d (stderr %q)", code, stderr.String())
	}
	var v adminpkg.ServiceAPI
	if err := json.Unmarshal([]byte(stdout.String()), &v); err != nil {
		t.Fatal(err, stdout.String())
	}
	if v.Authority != "web.demo:8080" || v.Zone != "zone-a" || v.Served != 2 || len(v.Endpoints) != 4 {
		t.Fatalf("%+v", v)
	}

	stdout.Reset()
	if code := run([]string{"explain", "nothing.demo:80", "--admin", up}, &stdout, &stderr); code != exitNothingServed {
		t.Errorf("unknown authority: exit %d, want %d", code, exitNothingServed)
	}
	if !strings.Contains(stdout.String(), "no source declares this authority") {
		t.Errorf("unknown authority:\n%s", stdout.String())
	}
	for _, args := range [][]string{{"explain"}, {"explain", "a:1", "b:2"}, {"explain", "bad host:80"}, {"explain", "web:99999"}} {
		stderr.Reset()
		if code := run(append(args, "--admin", up), &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code := run([]string{"explain", "web.demo:8080", "--admin", "127.0.0.1:1"}, &stdout, &stderr); code != 1 {
		t.Errorf("unreachable admin: exit %d, want 1", code)
	}
}

// TestExplainCheckFailure: an endpoint whose active check failed gets a
// line with the check, its target, the error, the failures in a row and
// when; control characters in the error are replaced.
func TestExplainCheckFailure(t *testing.T) {
	at := time.Date(2026, 12, 6, 18, 0, 0, 0, time.UTC)
	v := adminpkg.ServiceAPI{Authority: "web.demo:8080", Exists: true, Endpoints: []adminpkg.EndpointAPI{
		{Address: "10.0.0.1:8080", Health: "passing", HealthFrom: "check:tcp", Source: "local", Served: true, Reason: "served", Why: "served",
			Check: &adminpkg.CheckAPI{Type: "tcp", Target: "10.0.0.1:8080", Verdict: "passing"}},
		{Address: "10.0.0.2:8080", Health: "critical", HealthFrom: "check:tcp", Source: "local", Reason: "critical", Why: "evicted: health is critical; its active tcp health check of 10.0.0.2:8080 fails",
			Check: &adminpkg.CheckAPI{Type: "tcp", Target: "10.0.0.2:8080", Verdict: "critical", LastError: "dial tcp 10.0.0.2:8080: connect: connection refused\x1b[2J", LastErrorTime: at, ConsecutiveFailures: 3}},
	}}
	var out strings.Builder
	printExplain(&out, v)
	want := "active health checks:\n  10.0.0.2:8080 (local, tcp check of 10.0.0.2:8080, now critical): last failure at 2026-12-06T18:00:00Z, 3 in a row: dial tcp 10.0.0.2:8080: connect: connection refused?[2J\n"
	if !strings.Contains(out.String(), want) {
		t.Errorf("explain lacks %q:\n%s", want, out.String())
	}
	if strings.Count(out.String(), "last failure") != 1 {
		t.Errorf("a passing check without a failure is listed:\n%s", out.String())
	}
}
