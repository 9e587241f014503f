//go:build integration

package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// Objects: each test works in its own namespace of a shared cluster.

type fixture struct {
	t   *testing.T
	cs  *k8s.Clientset
	ns  string
	ctx context.Context
}

var nsUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// newFixture creates a namespace named after the test in cluster c.
func newFixture(t *testing.T, c *cluster) *fixture {
	t.Helper()
	name := nsUnsafe.ReplaceAllString(strings.ToLower(t.Name()[strings.LastIndexByte(t.Name(), '/')+1:]), "-")
	name = strings.Trim("t-"+name, "-")
	if len(name) > 50 {
		name = name[:50]
	}
	return fixtureIn(t, c, name)
}

func fixtureIn(t *testing.T, c *cluster, ns string) *fixture {
	t.Helper()
	f := &fixture{t: t, cs: c.admin(t), ns: ns, ctx: context.Background()}
	_, err := f.cs.CoreV1().Namespaces().Create(f.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("namespace %s: %v", ns, err)
	}
	return f
}

// host is the service's authority host in the default cluster domain.
func (f *fixture) host(svc string) string { return svc + "." + f.ns + ".svc.cluster.local" }

func svcPort(name string, port int32, target intstr.IntOrString) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, TargetPort: target, Protocol: corev1.ProtocolTCP}
}

func (f *fixture) service(name string, ports ...corev1.ServicePort) *corev1.Service {
	f.t.Helper()
	return f.createService(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec:       corev1.ServiceSpec{Ports: ports},
	})
}

func (f *fixture) createService(svc *corev1.Service) *corev1.Service {
	f.t.Helper()
	svc.Namespace = f.ns
	out, err := f.cs.CoreV1().Services(f.ns).Create(f.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatalf("service %s: %v", svc.Name, err)
	}
	return out
}

func (f *fixture) deleteService(name string) {
	f.t.Helper()
	if err := f.cs.CoreV1().Services(f.ns).Delete(f.ctx, name, metav1.DeleteOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func slicePort(name string, port int32) discoveryv1.EndpointPort {
	tcp := corev1.ProtocolTCP
	return discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &tcp}
}

// endpoint options.
type epOpt func(*discoveryv1.Endpoint)

func ep(addr string, opts ...epOpt) discoveryv1.Endpoint {
	ready := true
	e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func notReady() epOpt {
	return func(e *discoveryv1.Endpoint) { e.Conditions.Ready = ptr(false) }
}

// terminating marks the endpoint terminating; serving says whether it still serves.
func terminating(serving bool) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.Conditions = discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(serving), Terminating: ptr(true)}
	}
}

func zone(z string) epOpt { return func(e *discoveryv1.Endpoint) { e.Zone = &z } }

func hints(zones ...string) epOpt {
	return func(e *discoveryv1.Endpoint) {
		h := &discoveryv1.EndpointHints{}
		for _, z := range zones {
			h.ForZones = append(h.ForZones, discoveryv1.ForZone{Name: z})
		}
		e.Hints = h
	}
}

func hostname(h string) epOpt { return func(e *discoveryv1.Endpoint) { e.Hostname = &h } }

func podRef(ns, name string, uid types.UID) epOpt {
	return func(e *discoveryv1.Endpoint) {
		e.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: name, UID: uid}
	}
}

func ptr[T any](v T) *T { return &v }

func (f *fixture) slice(svc, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	f.t.Helper()
	return f.sliceOf(discoveryv1.AddressTypeIPv4, svc, name, ports, eps...)
}

func (f *fixture) sliceOf(family discoveryv1.AddressType, svc, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	f.t.Helper()
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc,
			discoveryv1.LabelManagedBy:   "tributary-tests",
		}},
		AddressType: family,
		Ports:       ports,
		Endpoints:   eps,
	}
	out, err := f.cs.DiscoveryV1().EndpointSlices(f.ns).Create(f.ctx, sl, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatalf("endpointslice %s: %v", name, err)
	}
	return out
}

// setEndpoints replaces a slice's endpoints.
func (f *fixture) setEndpoints(sl *discoveryv1.EndpointSlice, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	f.t.Helper()
	sl = sl.DeepCopy()
	sl.Endpoints = eps
	out, err := f.cs.DiscoveryV1().EndpointSlices(f.ns).Update(f.ctx, sl, metav1.UpdateOptions{})
	if err != nil {
		f.t.Fatalf("update endpointslice %s: %v", sl.Name, err)
	}
	return out
}

func (f *fixture) deleteSlice(name string) {
	f.t.Helper()
	if err := f.cs.DiscoveryV1().EndpointSlices(f.ns).Delete(f.ctx, name, metav1.DeleteOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) pod(p *corev1.Pod) *corev1.Pod {
	f.t.Helper()
	p.Namespace = f.ns
	if len(p.Spec.Containers) == 0 {
		p.Spec.Containers = []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}}
	}
	out, err := f.cs.CoreV1().Pods(f.ns).Create(f.ctx, p, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatalf("pod %s: %v", p.Name, err)
	}
	return out
}

// Tributary.

// source renders a kubernetes source entry; extra lines are indented keys.
func source(name, kubeconfig string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    kind: kubernetes\n    kubeconfig: %q\n", name, kubeconfig)
	for _, e := range extra {
		fmt.Fprintf(&b, "    %s\n", e)
	}
	return b.String()
}

// start runs tributary with the given sources and waits until it is ready.
func start(t *testing.T, sources ...string) *harness.Server {
	t.Helper()
	return harness.Start(t, t.TempDir(), "sources:\n"+strings.Join(sources, ""))
}

// stream is a harness stream with the expectations these tests use. Its
// waits are configurable: a reconnect after an API server outage follows
// client-go's backoff, which can exceed the harness's default wait.
type stream struct {
	*harness.Stream
	t *testing.T
}

func get(t *testing.T, s *harness.Server, path string) *stream {
	t.Helper()
	return getWithToken(t, s, path, "")
}

func getWithToken(t *testing.T, s *harness.Server, path, token string) *stream {
	t.Helper()
	return openStream(t, s.Client(), path, token)
}

func openStream(t *testing.T, client pb.DestinationClient, path, token string) *stream {
	t.Helper()
	return &stream{Stream: harness.Open(t, client, path, token), t: t}
}

// expect checks the next updates, in order.
func (st *stream) expect(want ...string) {
	st.t.Helper()
	st.expectWithin(harness.WaitFor, want...)
}

func (st *stream) expectWithin(wait time.Duration, want ...string) {
	st.t.Helper()
	for _, w := range want {
		if got := st.NextWithin(wait); got != w {
			st.t.Fatalf("%s: got %q, want %q", st.Name(), got, w)
		}
	}
}

// expectFinal checks that the stream reaches final, passing through
// nothing but the allowed intermediate updates (each at most once).
func (st *stream) expectFinal(wait time.Duration, final string, allowed ...string) {
	st.t.Helper()
	var seen []string
	for {
		got := st.NextWithin(wait)
		if got == final {
			return
		}
		i := slices.Index(allowed, got)
		if i < 0 {
			st.t.Fatalf("%s: got %q after %q, want %q (or first one of %q)", st.Name(), got, seen, final, allowed)
		}
		allowed = slices.Delete(slices.Clone(allowed), i, i+1)
		seen = append(seen, got)
	}
}

// addr is what the client holds for an address.
func (st *stream) addr(ap string) *pb.WeightedAddr {
	st.t.Helper()
	for a, wa := range st.Set.Addrs {
		if a.String() == ap {
			return wa
		}
	}
	st.t.Fatalf("%s: %s not held (holding %v)", st.Name(), ap, st.Set.Sorted())
	return nil
}

// Admin endpoints.

type sourceStatus struct {
	Name      string `json:"name"`
	Synced    bool   `json:"synced"`
	Stale     bool   `json:"stale"`
	LastError string `json:"last_error"`
}

func sourceStatuses(t *testing.T, admin string) map[string]sourceStatus {
	t.Helper()
	_, body := httpGet(admin, "/debug/sources")
	var list []sourceStatus
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatalf("/debug/sources: %v: %s", err, body)
	}
	out := map[string]sourceStatus{}
	for _, s := range list {
		out[s.Name] = s
	}
	return out
}

// waitStatus polls /debug/sources until cond holds for the source.
func waitStatus(t *testing.T, admin, source string, wait time.Duration, what string, cond func(sourceStatus) bool) sourceStatus {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		st := sourceStatuses(t, admin)[source]
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("source %s never became %s: %+v", source, what, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpGet(admin, path string) (int, string) {
	resp, err := http.Get("http://" + admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue reads one sample of the Prometheus text at /metrics whose
// line starts with prefix (a metric name with its labels).
func metricValue(t testing.TB, admin, prefix string) (string, bool) {
	t.Helper()
	_, body := httpGet(admin, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix+" ") {
			return strings.TrimSpace(strings.TrimPrefix(line, prefix)), true
		}
	}
	return "", false
}

// proc is a tributary process started without waiting for readiness.
type tributaryProc struct {
	cmd    *exec.Cmd
	api    string
	admin  string
	logs   *harness.SyncBuffer
	exited chan struct{}
	conn   *grpc.ClientConn
}

// startUnready starts tributary and returns at once.
func startUnready(t testing.TB, dir, sources string, args ...string) *tributaryProc {
	t.Helper()
	addrs := harness.FreePorts(t, 2)
	p := &tributaryProc{
		api:    addrs[0],
		admin:  addrs[1],
		logs:   &harness.SyncBuffer{},
		exited: make(chan struct{}),
	}
	cfg := fmt.Sprintf("server:\n  listen: %s\n  admin: %s\n  shutdown_timeout: 10s\nsources:\n%s", p.api, p.admin, sources)
	path := filepath.Join(dir, ".tributary.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(harness.Bin, append([]string{"serve", "--config", path}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	conn, err := grpc.NewClient(p.api, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	p.conn = conn
	t.Cleanup(func() {
		conn.Close()
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("tributary output:\n%s", p.logs.String())
		}
	})
	return p
}
