// Package harness runs the real tributary binary and real peers for the
// integration tests: it starts `tributary serve` on free loopback ports,
// opens Get streams over the upstream Linkerd stubs, replays them as a proxy
// would, and finds (building once, cached outside the repo) the Consul,
// etcd, CoreDNS and kube-apiserver binaries.
package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/destination"
)

// WaitFor bounds every wait: a guard against hangs, never a latency claim.
const WaitFor = 10 * time.Second

const waitFor = WaitFor

// Bin is the tributary binary under test, set by Main.
var Bin string

// Main is the TestMain of every integration package: it builds tributary
// unless TRIBUTARY_BIN names a binary, runs the tests under goleak, and
// exits.
func Main(m *testing.M) {
	tributaryBin := os.Getenv("TRIBUTARY_BIN")
	var tmp string
	if tributaryBin == "" {
		var err error
		tmp, err = os.MkdirTemp("", "tributary-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		tributaryBin = filepath.Join(tmp, "tributary")
		build := exec.Command("go", "build", "-o", tributaryBin, "github.com/tributary-mesh/tributary/cmd/tributary")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building tributary:", err)
			os.Exit(1)
		}
	}
	Bin = tributaryBin
	code := 0
	func() {
		defer func() {
			if tmp != "" {
				os.RemoveAll(tmp)
			}
		}()
		goleak.VerifyTestMain(exitCapture{&code, m})
	}()
	os.Exit(code)
}

// exitCapture lets TestMain clean up after goleak.VerifyTestMain, which
// would otherwise call os.Exit itself.
type exitCapture struct {
	code *int
	m    *testing.M
}

func (e exitCapture) Run() int { *e.code = e.m.Run(); return *e.code }

// Acceptor listens on addr (loopback; port 0 picks a free one) and
// accepts and closes every connection, so that a TCP health check of it
// passes until the test closes it. It closes when the test ends.
func Acceptor(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t *testing.T) string {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// FreePorts returns n distinct loopback addresses (127.0.0.1:port) whose
// ports were free a moment ago.
func FreePorts(tb testing.TB, n int) []string {
	tb.Helper()
	out := make([]string, n)
	for i, p := range FreePortNumbers(tb, n) {
		out[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return out
}

// FreePortNumbers returns n distinct loopback TCP ports that were free a
// moment ago. They are held open together while picked: one at a time, the
// kernel may hand the same port out twice.
func FreePortNumbers(tb testing.TB, n int) []int {
	tb.Helper()
	out := make([]int, n)
	for i := range out {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer ln.Close()
		out[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return out
}

// WriteAtomic writes a file the way careful tools do: a temporary file in
// the same folder, then a rename over the target.
func WriteAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// SyncBuffer collects a process's output, written from another goroutine,
// while the test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Server is one running tributary process.
type Server struct {
	t      *testing.T
	cmd    *exec.Cmd
	API    string
	Admin  string
	Dir    string
	Logs   *SyncBuffer
	exited chan struct{}
	conn   *grpc.ClientConn
}

// QuickTCPCheck is a health_check value (YAML flow style) for tests that see a
// listener close: a TCP check every 100 ms that turns critical after two
// failures and passing after one success, with no jitter and no hold-down.
const QuickTCPCheck = "{type: tcp, interval: 100ms, timeout: 500ms, jitter: 0%, healthy_threshold: 1, unhealthy_threshold: 2, hold_down: 0s}"

// Start writes config (its "server:" section is added here) into dir
// and starts tributary on free loopback ports; it returns once /readyz is 200.
func Start(t *testing.T, dir, sourcesAndRules string) *Server {
	t.Helper()
	p := FreePorts(t, 2)
	return StartAt(t, dir, p[0], p[1], sourcesAndRules)
}

// StartAt is Start on given API and admin addresses: a restarted server
// takes over its predecessor's.
func StartAt(t *testing.T, dir, api, admin, sourcesAndRules string) *Server {
	t.Helper()
	return startAt(t, dir, api, admin, "", sourcesAndRules)
}

// StartWith is Start with more keys of the server section: serverKeys is
// YAML indented by two spaces, e.g. "  streams: {send_timeout: 1s}\n".
func StartWith(t *testing.T, dir, serverKeys, sourcesAndRules string) *Server {
	t.Helper()
	p := FreePorts(t, 2)
	return startAt(t, dir, p[0], p[1], serverKeys, sourcesAndRules)
}

// StartWrapped is StartWith on free ports, with wrap called on the command
// before it starts: to run it in a cgroup, or with more environment.
func StartWrapped(t *testing.T, dir, serverKeys, sourcesAndRules string, wrap func(*exec.Cmd)) *Server {
	t.Helper()
	p := FreePorts(t, 2)
	return startWrapped(t, dir, p[0], p[1], serverKeys, sourcesAndRules, wrap)
}

func startAt(t *testing.T, dir, api, admin, serverKeys, sourcesAndRules string) *Server {
	t.Helper()
	return startWrapped(t, dir, api, admin, serverKeys, sourcesAndRules, nil)
}

func startWrapped(t *testing.T, dir, api, admin, serverKeys, sourcesAndRules string, wrap func(*exec.Cmd)) *Server {
	t.Helper()
	s := &Server{t: t, API: api, Admin: admin, Dir: dir, Logs: &SyncBuffer{}, exited: make(chan struct{})}
	cfg := fmt.Sprintf("server:\n  listen: %s\n  admin: %s\n  shutdown_timeout: 10s\n%s%s", s.API, s.Admin, serverKeys, sourcesAndRules)
	// A dot-file: the tests' "*.yaml" globs must not match the config itself.
	cfgPath := filepath.Join(dir, ".tributary.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(Bin, "serve", "--config", cfgPath, "--log-level", "debug")
	s.cmd.Stdout, s.cmd.Stderr = s.Logs, s.Logs
	if wrap != nil {
		wrap(s.cmd)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		if s.conn != nil {
			s.conn.Close()
		}
		select {
		case <-s.exited:
		default:
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
		if strings.Contains(s.Logs.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in tributary (built with -race)")
		}
		if t.Failed() {
			t.Logf("tributary output:\n%s", s.Logs.String())
		}
	})
	deadline := time.Now().Add(waitFor)
	for {
		code, _ := s.HTTPGet("/readyz")
		if code == http.StatusOK {
			break
		}
		select {
		case <-s.exited:
			t.Fatalf("tributary exited at start:\n%s", s.Logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tributary not ready after %v:\n%s", waitFor, s.Logs.String())
		}
	}
	conn, err := grpc.NewClient(s.API, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	s.conn = conn
	return s
}

func (s *Server) HTTPGet(path string) (int, string) {
	resp, err := http.Get("http://" + s.Admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *Server) Client() pb.DestinationClient { return pb.NewDestinationClient(s.conn) }

// WaitLog waits until the server's output contains substr.
func (s *Server) WaitLog(substr string) {
	s.t.Helper()
	deadline := time.Now().Add(waitFor)
	for !strings.Contains(s.Logs.String(), substr) {
		if time.Now().After(deadline) {
			s.t.Fatalf("log never contained %q", substr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stream is one Get stream, replayed into the set a proxy would hold.
type Stream struct {
	t       *testing.T
	name    string // the path asked for, in failure messages
	updates chan *pb.Update
	errc    chan error
	Set     destination.EndpointSet
}

func (s *Server) Get(path string) *Stream {
	s.t.Helper()
	return s.GetWithToken(path, "")
}

func (s *Server) GetWithToken(path, token string) *Stream {
	s.t.Helper()
	return Open(s.t, s.Client(), path, token)
}

// Open starts a Get stream for path on client; it ends with the test.
func Open(t *testing.T, client pb.DestinationClient, path, token string) *Stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := &Stream{t: t, name: path, updates: make(chan *pb.Update, 100), errc: make(chan error, 1)}
	c, err := client.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: path, ContextToken: token})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			u, err := c.Recv()
			if err != nil {
				st.errc <- err
				return
			}
			st.updates <- u
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return st
}

// Name is the path the stream asked for.
func (st *Stream) Name() string { return st.name }

// Next returns the next update in the compact form "add:a,b", "remove:a",
// "none:true|false", after checking it against the wire contract.
func (st *Stream) Next() string {
	st.t.Helper()
	return st.NextWithin(waitFor)
}

// NextWithin is Next, failing the test after wait instead of WaitFor.
func (st *Stream) NextWithin(wait time.Duration) string {
	st.t.Helper()
	select {
	case u := <-st.updates:
		if err := st.Set.Apply(u); err != nil {
			st.t.Fatalf("%s: contract: %v", st.name, err)
		}
		return Describe(u)
	case err := <-st.errc:
		st.errc <- err
		st.t.Fatalf("%s: stream ended: %v", st.name, err)
	case <-time.After(wait):
		st.t.Fatalf("%s: no update within %v", st.name, wait)
	}
	return ""
}

// End waits for the stream to end and returns its error.
func (st *Stream) End() error {
	st.t.Helper()
	for {
		select {
		case <-st.updates:
		case err := <-st.errc:
			st.errc <- err
			return err
		case <-time.After(waitFor):
			st.t.Fatal("stream did not end")
			return nil
		}
	}
}

func Describe(u *pb.Update) string {
	var parts []string
	switch x := u.GetUpdate().(type) {
	case *pb.Update_Add:
		for _, wa := range x.Add.GetAddrs() {
			ap, _ := destination.AddrPortFromTCP(wa.GetAddr())
			parts = append(parts, ap.String())
		}
		return "add:" + strings.Join(parts, ",")
	case *pb.Update_Remove:
		for _, a := range x.Remove.GetAddrs() {
			ap, _ := destination.AddrPortFromTCP(a)
			parts = append(parts, ap.String())
		}
		return "remove:" + strings.Join(parts, ",")
	case *pb.Update_NoEndpoints:
		return fmt.Sprintf("none:%t", x.NoEndpoints.GetExists())
	}
	return "?"
}

// Sigterm sends SIGTERM and waits for the process to exit; it returns the
// exit code and how long the exit took.
func (s *Server) Sigterm() (int, time.Duration) {
	s.t.Helper()
	start := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		s.t.Fatal(err)
	}
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.t.Fatal("tributary did not exit after SIGTERM")
	}
	return s.cmd.ProcessState.ExitCode(), time.Since(start)
}

// Peer returns the folder that holds a real peer's binaries — "consul",
// "etcd" (etcd, etcdctl), "coredns" or "k8s" (kube-apiserver) — building it
// first if this machine has not yet (tools/peers.sh; minutes, once per
// version, cached outside the repo).
func Peer(t testing.TB, name string) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "..", "..", "tools", "peers.sh")
	cmd := exec.Command(script, "path", name)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("peer %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}
