//go:build integration

// Package integration runs the real tributary binary against real backends
// and checks what a gRPC client on the upstream Linkerd stubs receives. The
// file source needs no peer; the other sources' tests live in subpackages,
// one real peer per package.
package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// services renders a services file: each entry "host:port=addr,addr" (":port" may
// be omitted; no addresses means exists-with-no-endpoints).
func services(entries ...string) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for _, e := range entries {
		name, addrs, _ := strings.Cut(e, "=")
		host, port, hasPort := strings.Cut(name, ":")
		fmt.Fprintf(&b, "  - name: %s\n", host)
		if hasPort {
			fmt.Fprintf(&b, "    port: %s\n", port)
		}
		if addrs == "" {
			b.WriteString("    endpoints: []\n")
			continue
		}
		b.WriteString("    endpoints:\n")
		for _, a := range strings.Split(addrs, ",") {
			fmt.Fprintf(&b, "      - address: %q\n", a)
		}
	}
	return b.String()
}

func fileSource(name, glob string, priority int) string {
	return fmt.Sprintf("  - name: %s\n    kind: file\n    priority: %d\n    paths: [%q]\n", name, priority, glob)
}

func TestFileFirstMessagesAndLiveChanges(t *testing.T) {
	dir := t.TempDir()
	svcDir := filepath.Join(dir, "services")
	os.Mkdir(svcDir, 0o755)
	demo := filepath.Join(svcDir, "demo.yaml")
	harness.WriteAtomic(t, demo, services("web.demo:8080=10.1.0.1:8080,10.1.0.2:8080", "empty.demo:80"))
	// withdraw_confirm: the emptied service below is held that long.
	s := harness.Start(t, dir, "sources:\n"+fileSource("local", "services/*.yaml", 0)+"    withdraw_confirm: 1s\n")

	web := s.Get("web.demo:8080")
	if got := web.Next(); got != "add:10.1.0.1:8080,10.1.0.2:8080" {
		t.Fatalf("web.demo first message: %s", got)
	}
	if got := s.Get("empty.demo").Next(); got != "none:true" {
		t.Fatalf("empty.demo (port 80) first message: %s", got)
	}
	unknown := s.Get("new.demo:9000")
	if got := unknown.Next(); got != "none:false" {
		t.Fatalf("unknown first message: %s", got)
	}

	// An endpoint added and one removed in one atomic write.
	harness.WriteAtomic(t, demo, services("web.demo:8080=10.1.0.2:8080,10.1.0.3:8080", "empty.demo:80"))
	if got := web.Next(); got != "add:10.1.0.3:8080" {
		t.Fatalf("after edit: %s", got)
	}
	if got := web.Next(); got != "remove:10.1.0.1:8080" {
		t.Fatalf("after edit: %s", got)
	}

	// A new file brings the unknown service; the open stream gets its add.
	extra := filepath.Join(svcDir, "extra.yaml")
	harness.WriteAtomic(t, extra, services("new.demo:9000=10.2.0.1:9000"))
	if got := unknown.Next(); got != "add:10.2.0.1:9000" {
		t.Fatalf("new service: %s", got)
	}
	// Deleting the file withdraws it: unknown again.
	if err := os.Remove(extra); err != nil {
		t.Fatal(err)
	}
	if got := unknown.Next(); got != "none:false" {
		t.Fatalf("after delete: %s", got)
	}
	// All endpoints gone but the service still declared: a sharp shrink,
	// held for withdraw_confirm, then applied.
	harness.WriteAtomic(t, demo, services("web.demo:8080", "empty.demo:80"))
	if got := web.Next(); got != "none:true" {
		t.Fatalf("emptied: %s", got)
	}
	s.WaitLog("services file shrinks sharply; holding its last state until the change is confirmed")
	s.WaitLog("services file withdrew endpoints")
}

func TestFileBrokenFileKeepsLastGoodState(t *testing.T) {
	dir := t.TempDir()
	demo := filepath.Join(dir, "demo.yaml")
	other := filepath.Join(dir, "other.yaml")
	harness.WriteAtomic(t, demo, services("web.demo:8080=10.1.0.1:8080"))
	harness.WriteAtomic(t, other, services("api.demo:9000=10.3.0.1:9000"))
	s := harness.Start(t, dir, "sources:\n"+fileSource("local", "*.yaml", 0))
	web := s.Get("web.demo:8080")
	if got := web.Next(); got != "add:10.1.0.1:8080" {
		t.Fatal(got)
	}
	api := s.Get("api.demo:9000")
	if got := api.Next(); got != "add:10.3.0.1:9000" {
		t.Fatal(got)
	}

	// A syntax error on line 4, then a truncated write: nothing may change.
	harness.WriteAtomic(t, demo, "services:\n  - name: web.demo\n    port: 8080\n    endpoints: [\n")
	s.WaitLog(demo + ":")
	harness.WriteAtomic(t, demo, "services:\n  - name: web.demo\n    port: 8080\n    endpoints:\n      - address: \"10.1.")
	// A valid change elsewhere still applies, and is the next thing anyone sees.
	harness.WriteAtomic(t, other, services("api.demo:9000=10.3.0.2:9000"))
	if got := api.Next(); got != "add:10.3.0.2:9000" {
		t.Fatalf("sibling file: %s", got)
	}
	// The source hands the sibling over, then reports the broken file: the
	// stale mark follows the update by a moment, so poll (bounded) for it.
	var statuses []struct {
		Name      string `json:"name"`
		Stale     bool   `json:"stale"`
		LastError string `json:"last_error"`
	}
	for deadline := time.Now().Add(harness.WaitFor); ; time.Sleep(10 * time.Millisecond) {
		_, body := s.HTTPGet("/debug/sources")
		if err := json.Unmarshal([]byte(body), &statuses); err != nil || len(statuses) != 1 {
			t.Fatalf("/debug/sources: %v %s", err, body)
		}
		if statuses[0].Stale && strings.Contains(statuses[0].LastError, demo+":") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("while broken, the source should be stale with a file:line error: %+v", statuses[0])
		}
	}
	_, reg := s.HTTPGet("/debug/registry?authority=web.demo:8080")
	if !strings.Contains(reg, "10.1.0.1:8080") {
		t.Errorf("registry lost the last good state: %s", reg)
	}

	// Fixed: the fix applies, and it is the first thing the web stream sees.
	harness.WriteAtomic(t, demo, services("web.demo:8080=10.1.0.9:8080"))
	if got := web.Next(); got != "add:10.1.0.9:8080" {
		t.Fatalf("after fix: %s", got)
	}
	if got := web.Next(); got != "remove:10.1.0.1:8080" {
		t.Fatalf("after fix: %s", got)
	}
}

func TestFederationAcrossTwoFileSources(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"east", "west"} {
		os.Mkdir(filepath.Join(dir, d), 0o755)
	}
	east := filepath.Join(dir, "east", "svc.yaml")
	west := filepath.Join(dir, "west", "svc.yaml")
	// union: web.demo from both; a conflict on 10.0.0.5 (weights differ).
	harness.WriteAtomic(t, east, services("web.demo:80=10.0.0.1:80,10.0.0.5:80", "pay.demo:80=10.1.0.1:80,10.1.0.2:80", "web.service.dc1.consul:80=10.5.0.1:80"))
	harness.WriteAtomic(t, west, strings.Replace(services("web.demo:80=10.0.0.2:80,10.0.0.5:80", "pay.demo:80=10.2.0.1:80"), `"10.0.0.5:80"`, "\"10.0.0.5:80\"\n        weight: 7", 1))
	rules := `federation:
  - authority: web.demo:80
    aliases: [web.service.dc1.consul:80]
  - authority: pay.demo:80
    failover:
      - sources: [east]
        min_healthy: 2
      - sources: [west]
`
	s := harness.Start(t, dir, "sources:\n"+fileSource("east", "east/*.yaml", 10)+fileSource("west", "west/*.yaml", 0)+rules)

	web := s.Get("web.demo:80")
	if got := web.Next(); got != "add:10.0.0.1:80,10.0.0.2:80,10.0.0.5:80,10.5.0.1:80" {
		t.Fatalf("union with alias: %s", got)
	}
	// Priority: east (10) beats west (0) on 10.0.0.5, so its weight is the default.
	conflict := web.Set.Addrs[mustAddr("10.0.0.5:80")]
	if conflict.GetWeight() != 10000 || conflict.GetMetricLabels()["source"] != "east" {
		t.Fatalf("conflict resolved to %v", conflict)
	}

	pay := s.Get("pay.demo:80")
	if got := pay.Next(); got != "add:10.1.0.1:80,10.1.0.2:80" {
		t.Fatalf("failover tier 1: %s", got)
	}
	// Tier 1 drops below min_healthy 2: tier 2 serves.
	harness.WriteAtomic(t, east, services("web.demo:80=10.0.0.1:80,10.0.0.5:80", "pay.demo:80=10.1.0.1:80", "web.service.dc1.consul:80=10.5.0.1:80"))
	if got := pay.Next(); got != "add:10.2.0.1:80" {
		t.Fatalf("failover to tier 2: %s", got)
	}
	if got := pay.Next(); got != "remove:10.1.0.1:80,10.1.0.2:80" {
		t.Fatalf("failover to tier 2: %s", got)
	}
	// Priority again: east loses 10.0.0.5, west's copy (weight 7) takes over.
	harness.WriteAtomic(t, east, services("web.demo:80=10.0.0.1:80", "pay.demo:80=10.1.0.1:80", "web.service.dc1.consul:80=10.5.0.1:80"))
	if got := web.Next(); got != "add:10.0.0.5:80" {
		t.Fatalf("conflict winner gone: %s", got)
	}
	if w := web.Set.Addrs[mustAddr("10.0.0.5:80")]; w.GetWeight() != 7 || w.GetMetricLabels()["source"] != "west" {
		t.Fatalf("west's endpoint should serve now: %v", w)
	}
}

func TestInvalidArgumentForBadPaths(t *testing.T) {
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "s.yaml"), services("web.demo:80=10.0.0.1:80"))
	s := harness.Start(t, dir, "sources:\n"+fileSource("local", "*.yaml", 0))
	for _, path := range []string{"", "web.demo:0", "web.demo:99999", "web.demo:x", "bad\x01host:80", strings.Repeat("h", 300), "10.0.0.1:80", "[fd00::7%eth0]:80", "[::1%[]:80", strings.Repeat("p", 64<<10)} {
		ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
		c, err := s.Client().Get(ctx, &pb.GetDestination{Path: path})
		if err == nil {
			_, err = c.Recv()
		}
		cancel()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("path %.30q: %v, want InvalidArgument", path, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
	defer cancel()
	c, err := s.Client().Get(ctx, &pb.GetDestination{Path: "web.demo:80", ContextToken: strings.Repeat("t", 10000)})
	if err == nil {
		_, err = c.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("huge context token: %v, want InvalidArgument", err)
	}
	// The server is unharmed.
	if got := s.Get("web.demo:80").Next(); got != "add:10.0.0.1:80" {
		t.Fatal(got)
	}
}

func TestGetProfileFromBinary(t *testing.T) {
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "s.yaml"), `services:
  - name: db.demo
    port: 5432
    opaque: true
    endpoints:
      - address: 10.0.0.7:5432
        protocol: opaque
      - address: "[fd00::7]:5432"
`)
	s := harness.Start(t, dir, "sources:\n"+fileSource("local", "*.yaml", 0))
	// An IP:port is looked up as sources store endpoints: a mapped IPv4
	// address as IPv4, an IPv6 address without its zone.
	endpoint := func(addr string) func(*pb.DestinationProfile) bool {
		return func(p *pb.DestinationProfile) bool {
			ap, ok := destination.AddrPortFromTCP(p.GetEndpoint().GetAddr())
			return ok && ap.String() == addr
		}
	}
	for path, check := range map[string]func(*pb.DestinationProfile) bool{
		"db.demo:5432": func(p *pb.DestinationProfile) bool {
			return p.GetFullyQualifiedName() == "db.demo" && p.GetOpaqueProtocol()
		},
		"nope.demo:80":           func(p *pb.DestinationProfile) bool { return p.GetFullyQualifiedName() == "" && p.GetEndpoint() == nil },
		"10.0.0.7:5432":          func(p *pb.DestinationProfile) bool { return p.GetEndpoint() != nil && p.GetOpaqueProtocol() },
		"[::ffff:10.0.0.7]:5432": endpoint("10.0.0.7:5432"),
		"[fd00::7%eth0]:5432":    endpoint("[fd00::7]:5432"),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
		c, err := s.Client().GetProfile(ctx, &pb.GetDestination{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		p, err := c.Recv()
		cancel()
		if err != nil || !check(p) || p.GetRetryBudget() == nil {
			t.Errorf("%s: %v %v", path, p, err)
		}
	}
}

func TestWatchCommandPrintsTheStream(t *testing.T) {
	dir := t.TempDir()
	demo := filepath.Join(dir, "s.yaml")
	harness.WriteAtomic(t, demo, services("web.demo:8080=10.0.0.1:8080"))
	s := harness.Start(t, dir, "sources:\n"+fileSource("local", "*.yaml", 0))

	out := &harness.SyncBuffer{}
	watch := exec.Command(harness.Bin, "watch", "--addr", s.API, "--admin", s.Admin, "web.demo:8080")
	watch.Stdout, watch.Stderr = out, out
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Process.Kill(); _ = watch.Wait() }()
	waitOutput(t, out, "ADD     10.0.0.1:8080")
	harness.WriteAtomic(t, demo, services("web.demo:8080=10.0.0.2:8080"))
	waitOutput(t, out, "REMOVE  10.0.0.1:8080")
	// The table's row: address, zone, health (from the admin API), weight, source.
	if !regexp.MustCompile(`(?m)^ADD +10\.0\.0\.2:8080 +- +unknown +10000 +local `).MatchString(out.String()) {
		t.Fatalf("watch output:\n%s", out.String())
	}

	// watch runs until stopped; give the JSON form a moment, then read it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	b, _ := exec.CommandContext(ctx, harness.Bin, "watch", "--addr", s.API, "--json", "nope.demo:80").Output()
	if !strings.Contains(string(b), `{"noEndpoints":{}}`) {
		t.Fatalf("watch --json for an unknown service: %q", b)
	}
	// With --admin, each endpoint's health from the registry.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel2()
	b, _ = exec.CommandContext(ctx2, harness.Bin, "watch", "--addr", s.API, "--admin", s.Admin, "--json", "web.demo:8080").Output()
	if !strings.Contains(string(b), `"health":{"10.0.0.2:8080 local":"unknown"}`) {
		t.Fatalf("watch --json --admin: %q", b)
	}
}

func waitOutput(t *testing.T, out *harness.SyncBuffer, substr string) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for !strings.Contains(out.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("output never contained %q:\n%s", substr, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	harness.WriteAtomic(t, good, services("web.demo:80=10.0.0.1:80"))
	bad := filepath.Join(dir, "bad.yaml")
	harness.WriteAtomic(t, bad, "services:\n  - name: web.demo\n    port: 80\n    endpoints:\n      - address: 10.0.0.300:80\n")
	cfg := filepath.Join(dir, "cfg.yaml")
	harness.WriteAtomic(t, cfg, "server:\n  listen: 127.0.0.1:1\nsources:\n  - name: x\n    kind: file\n    pathz: [a]\n")

	if out, err := exec.Command(harness.Bin, "check", good).CombinedOutput(); err != nil {
		t.Fatalf("good file: %v\n%s", err, out)
	}
	out, err := exec.Command(harness.Bin, "check", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), bad+":5") {
		t.Fatalf("bad services file: %v\n%s", err, out)
	}
	out, err = exec.Command(harness.Bin, "check", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), cfg+":6") || !strings.Contains(string(out), "pathz") {
		t.Fatalf("bad config: %v\n%s", err, out)
	}
	if out, err := exec.Command(harness.Bin, "check", "../examples/tributary.yaml", "../examples/services/demo.yaml").CombinedOutput(); err != nil {
		t.Fatalf("examples: %v\n%s", err, out)
	}
}

func TestSIGTERMDrainsStreamsAndExits(t *testing.T) {
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "s.yaml"), services("web.demo:80=10.0.0.1:80"))
	s := harness.Start(t, dir, "sources:\n"+fileSource("local", "*.yaml", 0))
	var streams []*harness.Stream
	for i := 0; i < 20; i++ {
		st := s.Get("web.demo:80")
		st.Next()
		streams = append(streams, st)
	}
	code, took := s.Sigterm()
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, s.Logs.String())
	}
	if took > 10*time.Second {
		t.Errorf("exit took %v, the bound is 10 s", took)
	}
	for _, st := range streams {
		if err := st.End(); status.Code(err) != codes.Unavailable {
			t.Errorf("stream ended with %v, want Unavailable (so the proxy reconnects)", err)
		}
	}
}

func mustAddr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
