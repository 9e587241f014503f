package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/discovery"
)

// cliFiles are the files the command-line tests run against, written into
// the test's working directory so that messages name them as given.
var cliFiles = map[string]string{
	"good.yaml": "server:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n" +
		"sources:\n  - name: local\n    kind: file\n    paths: [services.yaml]\n",
	"bad.yaml": "server:\n  listen: localhost\n  lissen: :1\n" +
		"health:\n  max_concurrent_checks: 0\n" +
		"sources:\n  - name: local\n    kind: file\n    paths: [services.yaml]\n    health_check: {type: icmp}\n",
	"badkind.yaml":     "sources:\n  - name: local\n    kind: file\n    pathz: [services.yaml]\n",
	"services.yaml":    "services:\n  - name: web.demo\n    port: 8080\n    endpoints:\n      - address: 127.0.0.1:18081\n",
	"badservices.yaml": "services:\n  - name: web.demo\n    port: 8080\n    endpoints:\n      - adress: 127.0.0.1:18081\n",
	// A services file with a syntax error at line 6, as the server reports it.
	"svc/broken.yaml": "services:\n  - name: web.demo\n    port: 8080\n    endpoints:\n      - address: 127.0.0.1:1\n        zone: [a\n      - address: 127.0.0.1:2\n",
	"svc/fine.yaml":   "services:\n  - name: api.demo\n    port: 9000\n    endpoints: []\n",
	// A config whose globs match a broken file, a good one, and nothing.
	"globs.yaml": "sources:\n  - name: local\n    kind: file\n    paths:\n      - svc/*.yaml\n      - missing/*.yaml\n",
}

// badErrors is what every command says of bad.yaml: every section's
// problems, in line order.
const badErrors = `bad.yaml:2: server.listen: "localhost" must be host:port (address localhost: missing port in address)
bad.yaml:3: server.lissen: unknown key (valid keys: listen, admin, startup_timeout, shutdown_timeout, log_level, log_format, keepalive, tls, streams, inbound_policy, memory_limit_ratio)
bad.yaml:5: health.max_concurrent_checks: must be from 1 to 100000, got 0
bad.yaml:10: sources[0].health_check.type: unknown check type "icmp" (want tcp, http, grpc or none)
`

func TestRun(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "svc"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range cliFiles {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	// A port where nothing listens, for watch's connection error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	cases := []struct {
		name       string
		args       []string
		code       int
		stdout     string // exact, unless "" (then stdout must be empty)
		stderr     string // exact when exact, else a substring; "" means empty
		exactError bool
	}{
		{name: "no command", args: nil, code: 2, stderr: "usage: tributary <command>"},
		{name: "unknown command", args: []string{"bogus"}, code: 2, stderr: `tributary: unknown command "bogus"`},
		{name: "version", args: []string{"version"}, code: 0, stdout: "tributary dev\n"},
		{name: "--version", args: []string{"--version"}, code: 0, stdout: "tributary dev\n"},
		{name: "help", args: []string{"help"}, code: 0, stdout: usage},

		{name: "check without files", args: []string{"check"}, code: 2, stderr: "usage: tributary check FILE..."},
		{name: "check unknown flag", args: []string{"check", "--strict", "good.yaml"}, code: 2, stderr: "flag provided but not defined: -strict"},
		{name: "check good config", args: []string{"check", "good.yaml"}, code: 0, stdout: "services.yaml: ok\ngood.yaml: ok\n"},
		{name: "check config's services files", args: []string{"check", "globs.yaml"}, code: 1, stdout: "svc/fine.yaml: ok\n",
			stderr: "globs.yaml:6: sources[0].paths[1]: warning: \"missing/*.yaml\" matches no file (yet)\n" +
				"svc/broken.yaml:6: syntax error: did not find expected ',' or ']'\n", exactError: true},
		// The server's line (6), not the config parser's reading of it (5).
		{name: "check broken services file", args: []string{"check", "svc/broken.yaml"}, code: 1,
			stderr: "svc/broken.yaml:6: syntax error: did not find expected ',' or ']'\n", exactError: true},
		{name: "check services file", args: []string{"check", "services.yaml"}, code: 0, stdout: "services.yaml: ok\n"},
		{name: "check bad config", args: []string{"check", "bad.yaml"}, code: 1, stderr: badErrors, exactError: true},
		{name: "check kind keys", args: []string{"check", "badkind.yaml"}, code: 1,
			stderr: "badkind.yaml:4: sources[0].pathz: unknown key (valid keys: ", exactError: false},
		{name: "check bad services file", args: []string{"check", "badservices.yaml"}, code: 1,
			stderr: "badservices.yaml:5: services[0].endpoints[0].adress: unknown key"},
		{name: "check several", args: []string{"check", "good.yaml", "missing.yaml", "services.yaml", "bad.yaml"}, code: 1,
			stdout: "services.yaml: ok\ngood.yaml: ok\nservices.yaml: ok\n",
			stderr: "open missing.yaml: no such file or directory\n" + badErrors, exactError: true},

		{name: "serve without config", args: []string{"serve"}, code: 2, stderr: "tributary serve: --config is required"},
		{name: "serve unknown flag", args: []string{"serve", "--config", "good.yaml", "--port", "1"}, code: 2, stderr: "flag provided but not defined: -port"},
		{name: "serve missing config", args: []string{"serve", "--config", "missing.yaml"}, code: 1,
			stderr: "tributary serve: invalid config:\nopen missing.yaml: no such file or directory\n", exactError: true},
		{name: "serve bad config", args: []string{"serve", "--config", "bad.yaml"}, code: 1,
			stderr: "tributary serve: invalid config:\n" + badErrors, exactError: true},
		{name: "serve bad log level flag", args: []string{"serve", "--config", "good.yaml", "--log-level", "loud"}, code: 2,
			stderr: `tributary serve: log level "loud": slog: level string "loud": unknown name` + "\n", exactError: true},

		{name: "watch without authority", args: []string{"watch"}, code: 2, stderr: "usage: tributary watch [flags] AUTHORITY"},
		{name: "watch two authorities", args: []string{"watch", "a:1", "b:2"}, code: 2, stderr: "usage: tributary watch [flags] AUTHORITY"},
		{name: "watch unknown flag", args: []string{"watch", "--follow", "web:80"}, code: 2, stderr: "flag provided but not defined: -follow"},
		{name: "watch connection refused", args: []string{"watch", "--addr", closed, "--admin", "off", "web.demo:8080"}, code: 1, stderr: "tributary watch: rpc error: code = Unavailable"},
		{name: "watch key without cert", args: []string{"watch", "--key", "k.pem", "web:80"}, code: 2, stderr: "tributary watch: --cert and --key go together"},
		{name: "watch missing CA", args: []string{"watch", "--ca", "missing.pem", "web:80"}, code: 2, stderr: "tributary watch: --ca: open missing.pem"},

		{name: "status with arguments", args: []string{"status", "web:80"}, code: 2, stderr: "usage: tributary status [flags]"},
		{name: "status unreachable", args: []string{"status", "--admin", closed}, code: 1, stderr: "tributary status: Get \"http://" + closed + "/api/v1/sources\""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			if stdout.String() != tc.stdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tc.stdout)
			}
			switch got := stderr.String(); {
			case tc.stderr == "" && got != "":
				t.Errorf("stderr %q, want nothing", got)
			case tc.exactError && got != tc.stderr:
				t.Errorf("stderr:\n%s\nwant:\n%s", got, tc.stderr)
			case !strings.Contains(got, tc.stderr):
				t.Errorf("stderr %q, want it to contain %q", got, tc.stderr)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer that watch writes to while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// webDemo is web.demo:8080 with two endpoints.
func webDemo() discovery.Service {
	return discovery.Service{Authority: discovery.Authority{Host: "web.demo", Port: 8080}, Endpoints: []discovery.Endpoint{
		{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Zone: "zone-a",
			Identity: discovery.Identity{Kind: discovery.IdentitySPIFFE, Name: "spiffe://example.org/ns/demo/sa/web", ServerName: "web.demo.example.org"}},
		{Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Weight: 5000},
	}}
}

// startDestination serves the destination API on 127.0.0.1 from a store
// holding webDemo.
func startDestination(t *testing.T) (string, *cache.Store) {
	t.Helper()
	store := cache.New()
	svc := webDemo()
	if _, err := store.Apply("local", []discovery.Group{{Key: "web", Services: []discovery.Service{svc}}}); err != nil {
		t.Fatal(err)
	}
	srv := destination.NewServer(destination.Options{Store: store})
	gs := grpc.NewServer(destination.ServerOptions()...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(srv.Listener(ln)) }()
	t.Cleanup(func() {
		srv.Drain()
		gs.Stop()
		<-done
		srv.Wait()
	})
	return ln.Addr().String(), store
}

// The table watch prints for webDemo without the admin API (no health).
const (
	watchHeader = "EVENT   ADDRESS                ZONE    HEALTH    WEIGHT  SOURCE  IDENTITY\n"
	watchWeb1   = "ADD     10.0.0.1:8080          zone-a  -         10000   local   spiffe://example.org/ns/demo/sa/web (sni web.demo.example.org)\n"
	watchWeb2   = "ADD     10.0.0.2:8080          -       -         5000    local   -\n"
)

func TestWatchOutput(t *testing.T) {
	addr, store := startDestination(t)
	cases := []struct {
		name   string
		opts   watchOptions
		change func() // made once the output has until
		until  string // watch runs until its output has this (after the change, the second time)
		want   string // the whole output, exact
	}{
		{
			name: "endpoints", opts: watchOptions{authority: "web.demo:8080"}, until: "# 2 endpoints\n",
			want: watchHeader + watchWeb1 + watchWeb2 + "# 2 endpoints\n",
		},
		{
			name: "a change", opts: watchOptions{authority: "web.demo:8080"}, until: " endpoints\n",
			change: func() {
				svc := webDemo()
				svc.Endpoints = svc.Endpoints[:1]
				if _, err := store.Apply("local", []discovery.Group{{Key: "web", Services: []discovery.Service{svc}}}); err != nil {
					t.Error(err)
				}
			},
			want: watchHeader + watchWeb1 + watchWeb2 + "# 2 endpoints\n" +
				"REMOVE  10.0.0.2:8080          -       -         5000    local   -\n" +
				"# 1 endpoints\n",
		},
		{
			name: "unknown service", opts: watchOptions{authority: "nowhere.demo:80"}, until: "\n",
			want: "# no endpoints (the service is unknown)\n",
		},
		{
			name: "json", opts: watchOptions{authority: "web.demo:8080", asJSON: true}, until: "\n",
			want: `{"add":{"addrs":[`,
		},
		{
			name: "profile", opts: watchOptions{authority: "web.demo:8080", profile: true}, until: "}\n",
			want: `"fullyQualifiedName": "web.demo"`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out, warn syncBuffer
			tc.opts.addr = addr
			errc := make(chan error, 1)
			go func() { errc <- watch(ctx, &out, &warn, tc.opts) }()
			wait := func(n int) {
				for strings.Count(out.String(), tc.until) < n && ctx.Err() == nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
			wait(1)
			if tc.change != nil {
				tc.change()
				wait(2)
			}
			cancel() // a watch ends cleanly when its context does
			if err := <-errc; err != nil {
				t.Fatalf("watch: %v", err)
			}
			got := out.String()
			if tc.opts.asJSON || tc.opts.profile {
				// protojson varies its whitespace with the binary's hash on
				// purpose (detrand): compare with runs of spaces as one.
				if !strings.Contains(strings.Join(strings.Fields(got), " "), strings.Join(strings.Fields(tc.want), " ")) {
					t.Errorf("output %q, want it to contain %q", got, tc.want)
				}
			} else if got != tc.want {
				t.Errorf("output:\n%s\nwant:\n%s", got, tc.want)
			}
			if warn.String() != "" {
				t.Errorf("warnings: %q", warn.String())
			}
		})
	}
}
