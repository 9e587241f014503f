package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/destination/admin"
	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
	"github.com/tributary-mesh/tributary/discovery"
)

// startAdmin serves the admin API of store, with one source named local.
func startAdmin(t *testing.T, store *cache.Store, status ...discovery.SourceStatus) string {
	t.Helper()
	if status == nil {
		status = []discovery.SourceStatus{{Name: "local", Kind: "file", Synced: true}}
	}
	h := admin.New(admin.Options{Store: store, Status: func() []discovery.SourceStatus { return status }})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// runWatch runs watch until its output has until n times (after change, if
// any, made once the first update is printed), then stops it and returns
// the output.
func runWatch(t *testing.T, o watchOptions, until string, n int, change func()) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, warn syncBuffer
	errc := make(chan error, 1)
	go func() { errc <- watch(ctx, &out, &warn, o) }()
	wait := func(n int) {
		for strings.Count(out.String(), until) < n && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if change != nil {
		wait(0)
		for !strings.Contains(out.String(), "# ") && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		change()
	}
	wait(n)
	if ctx.Err() != nil {
		t.Fatalf("watch output never had %q %d times:\n%s", until, n, out.String())
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("watch: %v", err)
	}
	return out.String(), warn.String()
}

// TestWatchHealth: with the admin API, each row shows the endpoint's health,
// and a HEALTH row follows when it changes without the endpoint leaving the
// stream (issue 18: watch kept printing the health it saw at ADD time).
func TestWatchHealth(t *testing.T) {
	addr, store := startDestination(t)
	adminAddr := startAdmin(t, store)
	change := func() {
		svc := webDemo()
		svc.Endpoints[1].Health = discovery.HealthWarning
		if _, err := store.Apply("local", []discovery.Group{{Key: "web", Services: []discovery.Service{svc}}}); err != nil {
			t.Error(err)
		}
	}
	got, warn := runWatch(t, watchOptions{addr: addr, admin: adminAddr, authority: "web.demo:8080", healthEvery: 20 * time.Millisecond},
		"HEALTH  10.0.0.2", 1, change)
	want := watchHeader +
		"ADD     10.0.0.1:8080          zone-a  unknown   10000   local   spiffe://example.org/ns/demo/sa/web (sni web.demo.example.org)\n" +
		"ADD     10.0.0.2:8080          -       unknown   5000    local   -\n" +
		"# 2 endpoints\n" +
		"HEALTH  10.0.0.2:8080          -       warning   5000    local   -\n"
	if got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
	if warn != "" {
		t.Errorf("warnings: %q", warn)
	}
}

// TestWatchAdminDown: an admin address that does not answer costs one
// warning, and the stream is printed all the same.
func TestWatchAdminDown(t *testing.T) {
	addr, _ := startDestination(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	got, warn := runWatch(t, watchOptions{addr: addr, admin: closed, authority: "web.demo:8080"}, "# 2 endpoints\n", 1, nil)
	if got != watchHeader+watchWeb1+watchWeb2+"# 2 endpoints\n" {
		t.Errorf("output:\n%s", got)
	}
	if !strings.HasPrefix(warn, "warning: no health from the admin API (") || strings.Count(warn, "\n") != 1 {
		t.Errorf("warnings: %q, want one about the admin API", warn)
	}
}

// TestWatchTLS: the TLS flags reach an mTLS server, verifying it by DNS
// name or by SPIFFE ID; a wrong name or no client certificate fails.
func TestWatchTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	const serverID, serverDNS = "spiffe://prod.test/ns/tributary/sa/tributary", "tributary.tributary.example"
	_, _, caFile := tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}}), ca.PEM)
	server := ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}})
	clientDir := t.TempDir()
	clientCert, clientKey, _ := tlstest.WriteFiles(t, clientDir, ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/ns/ops/sa/cli"}), ca.PEM)

	store := cache.New()
	if _, err := store.Apply("local", []discovery.Group{{Key: "web", Services: []discovery.Service{webDemo()}}}); err != nil {
		t.Fatal(err)
	}
	srv := destination.NewServer(destination.Options{Store: store})
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{server.TLS}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert})
	gs := grpc.NewServer(append(destination.ServerOptions(), grpc.Creds(creds))...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(srv.Listener(ln)) }()
	t.Cleanup(func() { srv.Drain(); gs.Stop(); <-done; srv.Wait() })

	for _, name := range []string{serverDNS, serverID} {
		t.Run(name, func(t *testing.T) {
			f := tlsFlags{ca: caFile, cert: clientCert, key: clientKey, serverName: name}
			c, err := f.credentials()
			if err != nil {
				t.Fatal(err)
			}
			got, _ := runWatch(t, watchOptions{addr: ln.Addr().String(), authority: "web.demo:8080", creds: c}, "# 2 endpoints\n", 1, nil)
			if got != watchHeader+watchWeb1+watchWeb2+"# 2 endpoints\n" {
				t.Errorf("output:\n%s", got)
			}
		})
	}
	for _, tc := range []struct {
		name string
		f    tlsFlags
		want string
	}{
		{"wrong DNS name", tlsFlags{ca: caFile, cert: clientCert, key: clientKey, serverName: "other.example"}, "certificate is valid for tributary.tributary.example"},
		{"wrong SPIFFE ID", tlsFlags{ca: caFile, cert: clientCert, key: clientKey, serverName: "spiffe://prod.test/ns/x/sa/y"}, "does not carry spiffe://prod.test/ns/x/sa/y"},
		{"no client certificate", tlsFlags{ca: caFile, serverName: serverDNS}, "Unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.f.credentials()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out, warn syncBuffer
			err = watch(ctx, &out, &warn, watchOptions{addr: ln.Addr().String(), authority: "web.demo:8080", creds: c})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("watch: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestStatus: the sources and the largest services, and the exit codes.
func TestStatus(t *testing.T) {
	store := cache.New()
	svc := webDemo()
	svc.Endpoints[1].Health = discovery.HealthPassing
	other := discovery.Service{Authority: discovery.Authority{Host: "api.demo", Port: 9000}, Endpoints: svc.Endpoints[:1]}
	if _, err := store.Apply("local", []discovery.Group{{Key: "web", Services: []discovery.Service{svc, other}}}); err != nil {
		t.Fatal(err)
	}
	up := startAdmin(t, store, discovery.SourceStatus{Name: "local", Kind: "file", Synced: true})
	stale := startAdmin(t, store,
		discovery.SourceStatus{Name: "local", Kind: "file", Synced: true, Stale: true, LastError: "services/a.yaml:3: syntax error"},
		discovery.SourceStatus{Name: "consul", Kind: "consul"})

	var stdout, stderr strings.Builder
	if code := run([]string{"status", "--admin", up, "--top", "1"}, &stdout, &stderr); code != 0 {
		t.Errorf("exit %d, want 0 (stderr %q)", code, stderr.String())
	}
	want := "SOURCE  KIND  STATE  SERVICES  ENDPOINTS  LAST SUCCESS  LAST ERROR\n" +
		"local   file  up     2         3          -             -\n" +
		"\n2 services; the 1 largest:\n" +
		"AUTHORITY      ENDPOINTS  BY HEALTH            BY SOURCE\n" +
		"web.demo:8080  2          passing=1 unknown=1  local=2\n"
	if stdout.String() != want {
		t.Errorf("status:\n%s\nwant:\n%s", stdout.String(), want)
	}

	stdout.Reset()
	if code := run([]string{"status", "--admin", "http://" + stale, "--top", "0"}, &stdout, &stderr); code != exitDegraded {
		t.Errorf("exit %d, want %d with a stale source", code, exitDegraded)
	}
	want = "SOURCE  KIND    STATE       SERVICES  ENDPOINTS  LAST SUCCESS  LAST ERROR\n" +
		"consul  consul  not synced  0         0          -             -\n" +
		"local   file    stale       2         3          -             services/a.yaml:3: syntax error\n"
	if stdout.String() != want {
		t.Errorf("status:\n%s\nwant:\n%s", stdout.String(), want)
	}
}

// TestWatchRemoveSaysWhy: watch reads health from /api/v1 (the explain
// view the page and explain read): an endpoint evicted for its health is
// removed with its health and the explain view's reason; in --json, a line
// gives the reason of each endpoint not served.
func TestWatchRemoveSaysWhy(t *testing.T) {
	evict := func(store *cache.Store) func() {
		return func() {
			svc := webDemo()
			svc.Endpoints[1].Health = discovery.HealthCritical
			if _, err := store.Apply("local", []discovery.Group{{Key: "web", Services: []discovery.Service{svc}}}); err != nil {
				t.Error(err)
			}
		}
	}
	addr, store := startDestination(t)
	got, warn := runWatch(t, watchOptions{addr: addr, admin: startAdmin(t, store), authority: "web.demo:8080"}, "# 1 endpoints\n", 1, evict(store))
	want := "REMOVE  10.0.0.2:8080          -       critical  5000    local   -  why: evicted: health is critical; its source reports it critical\n# 1 endpoints\n"
	if !strings.HasSuffix(got, want) || warn != "" {
		t.Errorf("output:\n%s\nwant it to end with:\n%s\nwarnings: %q", got, want, warn)
	}

	// --json: the line of an ADD carries every endpoint's health, and the
	// reason of those not served.
	addr, store = startDestination(t)
	evict(store)()
	got, _ = runWatch(t, watchOptions{addr: addr, admin: startAdmin(t, store), authority: "web.demo:8080", asJSON: true}, `"add"`, 1, nil)
	lines := strings.Split(strings.TrimSpace(got), "\n")
	var last struct {
		Health map[string]string `json:"health"`
		Why    map[string]string `json:"why"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &last); err != nil {
		t.Fatal(err, got)
	}
	if last.Health["10.0.0.2:8080 local"] != "critical" || last.Health["10.0.0.1:8080 local"] != "unknown" ||
		!strings.HasPrefix(last.Why["10.0.0.2:8080 local"], "evicted: health is critical") || len(last.Why) != 1 {
		t.Errorf("--json add line: %+v\n%s", last, got)
	}
}

// TestWatchReasonsForTheTokensZone: the reasons watch prints are those of
// a client in the token's zone (topology hints apply to it), so the admin
// API is asked with ?zone=.
func TestWatchReasonsForTheTokensZone(t *testing.T) {
	for token, want := range map[string]string{
		`{"ns":"demo","zone":"zone-a"}`: "zone-a",
		`{"ns":"demo","nodeName":"n1"}`: "",
		`demo`:                          "",
		``:                              "",
	} {
		if got := destination.ContextTokenZone(token); got != want {
			t.Errorf("ContextTokenZone(%q) = %q, want %q", token, got, want)
		}
	}
	asked := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case asked <- r.URL.RequestURI():
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"endpoints":[]}`))
	}))
	defer srv.Close()
	r := &healthReader{admin: strings.TrimPrefix(srv.URL, "http://"), authority: "web.demo:8080", zone: "zone a", warn: io.Discard}
	r.read(context.Background())
	if got := <-asked; got != "/api/v1/services/web.demo:8080?zone=zone+a" {
		t.Errorf("asked %s", got)
	}
}
