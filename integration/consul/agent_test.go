//go:build integration

package consul

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// agentOptions describes one real Consul agent.
type agentOptions struct {
	DC   string // default dc1
	Node string // default <dc>-node
	// Persistent runs a single server with a data directory instead of dev
	// mode, so its state survives a restart.
	Persistent bool
	// HTTPS adds an HTTPS port; HCL must configure the certificates.
	HTTPS bool
	// HCL snippets passed with -hcl.
	HCL []string
	// Token the test's own client uses (the ACL management token).
	Token string
}

// agent is a real Consul agent on free loopback ports, stopped when the
// test ends. Its output goes to Logs, printed if the test fails.
type agent struct {
	tb      testing.TB
	bin     string
	opts    agentOptions
	dataDir string
	ports   map[string]int
	cmd     *exec.Cmd
	exited  chan struct{}
	Logs    *harness.SyncBuffer
	Client  *api.Client
	tr      *http.Transport
}

// freePorts returns n distinct loopback ports that were free a moment ago
// (TCP and UDP: Serf uses both).
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ports []int
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		closers = append(closers, ln.Close)
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue // taken for UDP: try another
		}
		closers = append(closers, pc.Close)
		ports = append(ports, port)
	}
	return ports
}

func startAgent(tb testing.TB, opts agentOptions) *agent {
	tb.Helper()
	if opts.DC == "" {
		opts.DC = "dc1"
	}
	if opts.Node == "" {
		opts.Node = opts.DC + "-node"
	}
	a := &agent{tb: tb, bin: filepath.Join(harness.Peer(tb, "consul"), "consul"), opts: opts, Logs: &harness.SyncBuffer{}}
	p := freePorts(tb, 7)
	a.ports = map[string]int{"http": p[0], "dns": p[1], "grpc": p[2], "serf-lan": p[3], "serf-wan": p[4], "server": p[5], "https": p[6]}
	if opts.Persistent {
		a.dataDir = tb.TempDir()
	}
	a.tr = &http.Transport{MaxIdleConnsPerHost: 16}
	client, err := api.NewClient(&api.Config{Address: a.HTTPAddr(), Scheme: "http", Token: opts.Token, Transport: a.tr})
	if err != nil {
		tb.Fatal(err)
	}
	a.Client = client
	a.Start()
	tb.Cleanup(func() {
		a.Stop()
		a.tr.CloseIdleConnections()
		if tb.Failed() {
			tb.Logf("consul %s output:\n%s", opts.DC, a.Logs.String())
		}
	})
	return a
}

// HTTPAddr is host:port of the agent's HTTP API.
func (a *agent) HTTPAddr() string { return "127.0.0.1:" + strconv.Itoa(a.ports["http"]) }

// HTTPSAddr is host:port of the agent's HTTPS API.
func (a *agent) HTTPSAddr() string { return "127.0.0.1:" + strconv.Itoa(a.ports["https"]) }

// SerfWANAddr is where other datacenters join this one.
func (a *agent) SerfWANAddr() string { return "127.0.0.1:" + strconv.Itoa(a.ports["serf-wan"]) }

func (a *agent) args() []string {
	args := []string{"agent",
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise-wan", "127.0.0.1",
		"-node", a.opts.Node, "-datacenter", a.opts.DC,
		"-http-port", strconv.Itoa(a.ports["http"]),
		"-dns-port", strconv.Itoa(a.ports["dns"]),
		"-grpc-port", strconv.Itoa(a.ports["grpc"]),
		"-grpc-tls-port", "-1",
		"-serf-lan-port", strconv.Itoa(a.ports["serf-lan"]),
		"-serf-wan-port", strconv.Itoa(a.ports["serf-wan"]),
		"-server-port", strconv.Itoa(a.ports["server"]),
		"-log-level", "warn",
	}
	if a.opts.HTTPS {
		args = append(args, "-https-port", strconv.Itoa(a.ports["https"]))
	}
	if a.opts.Persistent {
		args = append(args, "-server", "-bootstrap-expect", "1", "-data-dir", a.dataDir,
			"-hcl", "performance { raft_multiplier = 1 }", "-hcl", "connect { enabled = true }")
	} else {
		args = append(args, "-dev")
	}
	for _, h := range a.opts.HCL {
		args = append(args, "-hcl", h)
	}
	return args
}

// Start runs the agent and waits until it has a leader and a Connect CA.
func (a *agent) Start() {
	a.tb.Helper()
	a.cmd = exec.Command(a.bin, a.args()...)
	a.cmd.Stdout, a.cmd.Stderr = a.Logs, a.Logs
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		a.tb.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(a.cmd, a.exited)
	deadline := time.Now().Add(30 * time.Second)
	for {
		leader, err := a.Client.Status().Leader()
		if err == nil && leader != "" {
			roots, _, err := a.Client.Connect().CARoots(nil)
			if err == nil && roots.TrustDomain != "" {
				// The agent's own node must be in the catalog too.
				if nodes, _, err := a.Client.Catalog().Nodes(nil); err == nil && len(nodes) > 0 {
					return
				}
			}
		}
		select {
		case <-a.exited:
			a.tb.Fatalf("consul %s exited at start:\n%s", a.opts.DC, a.Logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.tb.Fatalf("consul %s not ready after 30s:\n%s", a.opts.DC, a.Logs.String())
		}
	}
}

// Stop sends SIGTERM and waits for the agent to exit.
func (a *agent) Stop() {
	if a.cmd == nil {
		return
	}
	select {
	case <-a.exited:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
	a.tr.CloseIdleConnections()
}

// registerService registers a service with the agent (anti-entropy puts it
// in the catalog), optionally with a TTL check that starts passing.
func (a *agent) registerService(t *testing.T, reg *api.AgentServiceRegistration) {
	t.Helper()
	if err := a.Client.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
}

func ttlCheck(status string) *api.AgentServiceCheck {
	return &api.AgentServiceCheck{TTL: "1h", Status: status}
}

// setTTL sets the status of a service's TTL check (its ID is
// service:<service id>).
func (a *agent) setTTL(t *testing.T, serviceID, status string) {
	t.Helper()
	if err := a.Client.Agent().UpdateTTL("service:"+serviceID, "", status); err != nil {
		t.Fatal(err)
	}
}

// catalogRegister registers an instance on an external node through the
// catalog API (no agent owns it, so anti-entropy leaves it alone).
func (a *agent) catalogRegister(t testing.TB, node, addr string, svc *api.AgentService) {
	t.Helper()
	_, err := a.Client.Catalog().Register(&api.CatalogRegistration{Node: node, Address: addr, Service: svc, SkipNodeUpdate: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
}

func (a *agent) catalogDeregister(t testing.TB, node, serviceID string) {
	t.Helper()
	_, err := a.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node, ServiceID: serviceID}, nil)
	if err != nil {
		t.Fatal(err)
	}
}

// sourceStatus reads one source's status from the admin API.
type sourceStatus struct {
	Name      string `json:"name"`
	Synced    bool   `json:"synced"`
	Stale     bool   `json:"stale"`
	LastError string `json:"last_error"`
	Errors    uint64 `json:"errors"`
}

func status(t *testing.T, s *harness.Server, name string) sourceStatus {
	t.Helper()
	_, body := s.HTTPGet("/debug/sources")
	var all []sourceStatus
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		t.Fatalf("/debug/sources: %v %s", err, body)
	}
	for _, st := range all {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("no source %q in %s", name, body)
	return sourceStatus{}
}

// waitFor polls cond until it holds (bounded by harness.WaitFor).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(harness.WaitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// certs is a throwaway CA with a server certificate for 127.0.0.1 and
// server.dc1.consul, and a client certificate, written to dir.
type certs struct{ CA, ServerCert, ServerKey, ClientCert, ClientKey string }

func makeCerts(t *testing.T, dir string) certs {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tributary test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	c := certs{
		CA: filepath.Join(dir, "ca.pem"), ServerCert: filepath.Join(dir, "server.pem"), ServerKey: filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	writePEM(t, c.CA, "CERTIFICATE", caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certPath, keyPath string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{cn, "localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, certPath, "CERTIFICATE", der)
		kb, _ := x509.MarshalECPrivateKey(key)
		writePEM(t, keyPath, "EC PRIVATE KEY", kb)
	}
	leaf(2, "server.dc1.consul", x509.ExtKeyUsageServerAuth, c.ServerCert, c.ServerKey)
	leaf(3, "tributary", x509.ExtKeyUsageClientAuth, c.ClientCert, c.ClientKey)
	return c
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// consulSource renders a consul source entry for the tributary config;
// extra lines are indented as the source's own keys.
func consulSource(name, address string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  - name: %s\n    kind: consul\n    address: %s\n    backoff: {initial: 100ms, max: 1s}\n", name, address)
	for _, e := range extra {
		for _, line := range strings.Split(strings.TrimRight(e, "\n"), "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	return b.String()
}
