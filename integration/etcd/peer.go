//go:build integration

// Package etcd tests the etcd source against the real etcd binary (the
// cached build of tools/peers.sh) and the real tributary binary. Its
// helper — a real etcd member — serves the other integration packages
// that need etcd too; the proxy that cuts a client off etcd is the etcd
// source's own (sources/etcd/etcdtest).
package etcd

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// Member is a real single-member etcd cluster on loopback ports, which a
// test can stop and start again on the same data.
type Member struct {
	t      testing.TB
	bin    string
	dir    string
	Client string // 127.0.0.1:port
	peer   string
	Logs   *harness.SyncBuffer
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartMember runs etcd and waits until it answers. It stops with the test.
func StartMember(t testing.TB) *Member {
	t.Helper()
	ports := harness.FreePorts(t, 2)
	m := &Member{t: t, bin: filepath.Join(harness.Peer(t, "etcd"), "etcd"), dir: t.TempDir(),
		Client: ports[0], peer: ports[1], Logs: &harness.SyncBuffer{}}
	m.Start()
	t.Cleanup(func() {
		m.Stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("etcd output:\n%s", m.Logs.String())
		}
	})
	return m
}

// Start starts the member (again) and waits until it serves a read.
func (m *Member) Start() {
	m.t.Helper()
	m.cmd = exec.Command(m.bin,
		"--name", "it", "--data-dir", filepath.Join(m.dir, "data"),
		"--listen-client-urls", "http://"+m.Client, "--advertise-client-urls", "http://"+m.Client,
		"--listen-peer-urls", "http://"+m.peer, "--initial-advertise-peer-urls", "http://"+m.peer,
		"--initial-cluster", "it=http://"+m.peer, "--unsafe-no-fsync", "--log-level", "warn")
	m.cmd.Stdout, m.cmd.Stderr = m.Logs, m.Logs
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	exited := make(chan struct{})
	m.exited = exited
	go func() { _ = m.cmd.Wait(); close(exited) }()
	cli := m.NewClient()
	defer cli.Close()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "ready")
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			m.t.Fatalf("etcd exited at start:\n%s", m.Logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("etcd not answering: %v\n%s", err, m.Logs.String())
		}
	}
}

// Stop ends the member with sig and waits for the process to exit.
func (m *Member) Stop(sig syscall.Signal) {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(sig)
	select {
	case <-m.exited:
	case <-time.After(harness.WaitFor):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	m.cmd = nil
}

// NewClient is a client of the member; the caller closes it.
func (m *Member) NewClient() *clientv3.Client {
	m.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.Client}, Logger: zap.NewNop(), DialTimeout: harness.WaitFor})
	if err != nil {
		m.t.Fatal(err)
	}
	return cli
}

// sourceStatus is what WaitStale reads of /debug/sources.
type sourceStatus struct {
	Name      string `json:"name"`
	Stale     bool   `json:"stale"`
	LastError string `json:"last_error"`
}

// WaitStale waits until the server's one source is stale (want) or not,
// as /debug/sources reports it.
func WaitStale(t *testing.T, s *harness.Server, want bool) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for {
		_, body := s.HTTPGet("/debug/sources")
		var st []sourceStatus
		if err := json.Unmarshal([]byte(body), &st); err != nil || len(st) != 1 {
			t.Fatalf("/debug/sources: %v %s", err, body)
		}
		if st[0].Stale == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("source never stale=%v: %+v", want, st[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
