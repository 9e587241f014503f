//go:build integration

// Package operator tests what an operator installs and reads beside the
// server: the Prometheus rules (promtool), the Grafana dashboard and
// docs/metrics.md against the real binary's /metrics, the systemd unit
// (systemd-analyze), the Kubernetes manifests, and the CLI's check, watch
// and status against a running server.
package operator

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// repo is the repository's root.
func repo(t *testing.T) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..", "..")
}

const services = "services:\n  - name: web.demo\n    port: 8080\n    endpoints:\n      - address: 127.0.0.1:1\n        zone: zone-a\n"

// startFull runs the binary with every optional part on — server.tls, the
// DNS interface, active health checks — so that every metric it can export
// is in /metrics.
func startFull(t *testing.T) (*harness.Server, func()) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tls"), 0o755); err != nil {
		t.Fatal(err)
	}
	ca := tlstest.NewCA(t, "operator CA")
	tlstest.WriteFiles(t, filepath.Join(dir, "tls"), ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://ops.test/tributary"}), ca.PEM)
	harness.WriteAtomic(t, filepath.Join(dir, "demo.yaml"), services)
	s := harness.StartWith(t, dir,
		"  tls: {cert_file: tls/tls.crt, key_file: tls/tls.key, ca_file: tls/ca.crt}\n",
		"sources:\n  - name: local\n    kind: file\n    paths: [\"*.yaml\"]\n    health_check: {type: tcp, interval: 1s}\n"+
			"dns:\n  listen: "+harness.FreePort(t)+"\n  zones: [{zone: demo.}]\n"+
			"xds:\n  listen: "+harness.FreePort(t)+"\n")
	// The labelled TLS counters appear with their first event: a plaintext
	// handshake, a call without a client certificate, a rotation.
	events := func() {
		if c, err := net.Dial("tcp", s.API); err == nil {
			_, _ = c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
		conn, err := grpc.NewClient(s.API, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
			st, err := pb.NewDestinationClient(conn).Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: "web.demo:8080"})
			if err == nil {
				_, _ = st.Recv()
			}
			cancel()
			conn.Close()
		}
		tlstest.WriteFiles(t, filepath.Join(dir, "tls"), ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://ops.test/tributary"}), ca.PEM)
	}
	return s, events
}

// exported are the metric names in a /metrics page: families and their
// samples (histograms' _bucket, _sum, _count).
func exported(t *testing.T, s *harness.Server) map[string]bool {
	t.Helper()
	code, body := s.HTTPGet("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	names := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names[strings.Fields(rest)[0]] = true
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names
}

// metricRE finds the metric names in a PromQL expression: ours, and the Go
// and process collectors'. Recording rules (with a colon) are not metrics.
var (
	metricRE    = regexp.MustCompile(`\b(?:tributary|go|process)_[a-zA-Z0-9_]+\b`)
	recordingRE = regexp.MustCompile(`[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]+`)
)

// TestDashboardAndRulesNameExportedMetrics: every query of the Grafana
// dashboard and every rule of deploy/prometheus names only metrics that the
// server exports, so no panel or alert is silently empty; docs/metrics.md
// lists exactly the tributary_ metrics /metrics has.
func TestDashboardAndRulesNameExportedMetrics(t *testing.T) {
	s, events := startFull(t)
	events()
	// The health checker's and TLS's labelled series appear with their
	// first event: checks of the closed port, its verdict turning
	// critical, the events above.
	deadline := time.Now().Add(2 * harness.WaitFor)
	var names map[string]bool
	for {
		names = exported(t, s)
		if names["tributary_health_transitions_total"] && names["tributary_tls_reloads_total"] &&
			names["tributary_tls_requests_denied_total"] && names["tributary_tls_handshake_failures_total"] || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	data, err := os.ReadFile(filepath.Join(repo(t), "deploy", "grafana", "tributary.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			checkNames(t, "dashboard panel "+p.Title, tg.Expr, names)
		}
	}
	if queries < 10 {
		t.Errorf("the dashboard has %d queries; expected the whole overview", queries)
	}

	var rules struct {
		Groups []struct {
			Rules []struct {
				Record, Alert, Expr string
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	data, err = os.ReadFile(filepath.Join(repo(t), "deploy", "prometheus", "tributary-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("rules: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			checkNames(t, "rule "+r.Record+r.Alert, r.Expr, names)
		}
	}

	// docs/metrics.md: a row per metric, its name first in backquotes.
	data, err = os.ReadFile(filepath.Join(repo(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(tributary_[a-z0-9_]+)`").FindAllStringSubmatch(string(data), -1) {
		documented[m[1]] = true
	}
	for name := range names {
		if strings.HasPrefix(name, "tributary_") && !isSample(name, names) && !documented[name] {
			t.Errorf("/metrics exports %s, which docs/metrics.md does not list", name)
		}
	}
	for name := range documented {
		if !names[name] {
			t.Errorf("docs/metrics.md lists %s, which /metrics does not export", name)
		}
	}
}

// isSample: a histogram's _bucket, _sum or _count series of a family.
func isSample(name string, names map[string]bool) bool {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && names[base] {
			return true
		}
	}
	return false
}

func checkNames(t *testing.T, what, expr string, names map[string]bool) {
	t.Helper()
	found := metricRE.FindAllString(recordingRE.ReplaceAllString(expr, " "), -1)
	if len(found) == 0 {
		if !recordingRE.MatchString(expr) {
			t.Errorf("%s: no metric in %q", what, expr)
		}
	}
	for _, n := range found {
		if !names[n] {
			t.Errorf("%s: %s is not in /metrics (query %q)", what, n, expr)
		}
	}
}

// TestPrometheusRules checks the rules and runs their unit tests with
// promtool, built from the Prometheus module (tools/peers.sh, cached), and
// has it parse every query of the dashboard.
func TestPrometheusRules(t *testing.T) {
	promtool := filepath.Join(harness.Peer(t, "promtool"), "promtool")
	dir := filepath.Join(repo(t), "deploy", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "tributary-rules.yaml"},
		{"test", "rules", "tributary-rules.test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// The dashboard's queries are PromQL too: promtool parses them as
	// recording rules, with Grafana's variables replaced as Grafana would.
	data, err := os.ReadFile(filepath.Join(repo(t), "deploy", "grafana", "tributary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	grafana := strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$instance", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, p := range dash.Panels {
		for j, tg := range p.Targets {
			q, _ := json.Marshal(grafana.Replace(tg.Expr)) // a JSON string is a YAML string
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d:query%d\n        expr: %s\n", i, j, q)
		}
	}
	file := filepath.Join(t.TempDir(), "dashboard-queries.yaml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput(); err != nil {
		t.Errorf("a dashboard query is not valid PromQL: %v\n%s", err, out)
	}
}

// TestSystemdUnit verifies deploy/systemd/tributary.service with
// systemd-analyze (Debian's systemd package; make test-integration installs
// it when missing): the unit is valid, with its binary at the path of the
// binary under test, and its sandboxing rates an exposure of 2.0 or less.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze is missing: apt-get install systemd (make test-integration does)")
	}
	data, err := os.ReadFile(filepath.Join(repo(t), "deploy", "systemd", "tributary.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range []string{"DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service"} {
		if !bytes.Contains(data, []byte("\n"+opt)) {
			t.Errorf("the unit lacks %s", strings.TrimSpace(opt))
		}
	}
	unit := filepath.Join(t.TempDir(), "tributary.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(data, []byte("/usr/local/bin/tributary"), []byte(harness.Bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", unit).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(analyze, "security", "--offline=true", "--threshold=20", unit).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (%v)\n%s", err, out)
	}
}

// TestCheckMatchesServer: for a broken services file, `tributary check` on
// the config prints the line the server logs.
func TestCheckMatchesServer(t *testing.T) {
	dir := t.TempDir()
	broken := services + "      - address: 127.0.0.1:2\n        labels: {rack: [r1}\n"
	harness.WriteAtomic(t, filepath.Join(dir, "good.yaml"), services)
	harness.WriteAtomic(t, filepath.Join(dir, "broken.yaml"), broken)
	s := harness.Start(t, dir, "sources:\n  - name: local\n    kind: file\n    paths: [\"*.yaml\", \"none/*.yaml\"]\n")
	s.WaitLog("syntax error")
	logged := regexp.MustCompile(`err="(/[^"]*broken\.yaml:\d+: [^"]*)"`).FindStringSubmatch(s.Logs.String())
	if logged == nil {
		t.Fatalf("no error logged for broken.yaml:\n%s", s.Logs.String())
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(harness.Bin, "check", filepath.Join(dir, ".tributary.yaml"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("check exit %d (%v), want 1", code, err)
	}
	want := strings.ReplaceAll(logged[1], `\"`, `"`)
	if !strings.Contains(stderr.String(), want+"\n") {
		t.Errorf("check says:\n%s\nthe server logged:\n%s", stderr.String(), want)
	}
	if !strings.Contains(stderr.String(), `paths[1]: warning: "`+filepath.Join(dir, "none", "*.yaml")+`" matches no file (yet)`) {
		t.Errorf("no warning for the glob that matches nothing:\n%s", stderr.String())
	}
	if stdout.String() != filepath.Join(dir, "good.yaml")+": ok\n" {
		t.Errorf("stdout %q", stdout.String())
	}
}

// TestWatchAndStatus runs the CLI against the running binary: status
// lists the source and the service and exits 0; watch prints the table with
// health from the admin API, and exits 0 on an interrupt.
func TestWatchAndStatus(t *testing.T) {
	dir := t.TempDir()
	harness.WriteAtomic(t, filepath.Join(dir, "demo.yaml"), services)
	s := harness.Start(t, dir, "sources:\n  - name: local\n    kind: file\n    paths: [\"*.yaml\"]\n")

	out, err := exec.Command(harness.Bin, "status", "--admin", s.Admin).CombinedOutput()
	if err != nil {
		t.Errorf("status: %v\n%s", err, out)
	}
	for _, want := range []string{"local   file  up     1         1", "web.demo:8080  1          unknown=1  local=1"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
	defer cancel()
	var stdout harness.SyncBuffer
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, harness.Bin, "watch", "--addr", s.API, "--admin", s.Admin, "web.demo:8080")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(stdout.String(), "# 1 endpoints") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch: %v (stderr %s)", err, stderr.String())
	}
	want := "EVENT   ADDRESS                ZONE    HEALTH    WEIGHT  SOURCE  IDENTITY\n" +
		"ADD     127.0.0.1:1            zone-a  unknown   10000   local   -\n# 1 endpoints\n"
	if stdout.String() != want {
		t.Errorf("watch printed:\n%s\nwant:\n%s", stdout.String(), want)
	}
}

// TestKubernetesManifests decodes deploy/kubernetes with the Kubernetes API
// types (strictly: an unknown field fails) and checks what issue 18 asks of
// them; the kustomization names every manifest of the folder.
func TestKubernetesManifests(t *testing.T) {
	dir := filepath.Join(repo(t), "deploy", "kubernetes")
	objs := decodeManifests(t, dir)
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.kind]++
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in deploy/kubernetes", k)
		}
	}
	checkDeployment(t, objs)

	var kust struct {
		Resources []string `yaml:"resources"`
		Images    []struct {
			Name string `yaml:"name"`
		} `yaml:"images"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &kust); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	var want []string
	for _, f := range files {
		if filepath.Base(f) != "kustomization.yaml" {
			want = append(want, filepath.Base(f))
		}
	}
	got := append([]string(nil), kust.Resources...)
	sort.Strings(got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("kustomization resources %v, want every manifest %v", got, want)
	}
	if len(kust.Images) != 1 || kust.Images[0].Name != "tributary" {
		t.Errorf("kustomization images %+v, want one named tributary (the Deployment's image)", kust.Images)
	}
}
