//go:build integration

package security

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
	"github.com/tributary-mesh/tributary/integration/harness"
)

// The server's identity as a linkerd2-proxy checks it: the DNS SAN is what
// LINKERD2_PROXY_DESTINATION_SVC_NAME names.
const (
	serverID  = "spiffe://prod.test/ns/tributary/sa/tributary"
	serverDNS = "tributary.tributary.serviceaccount.identity.linkerd.cluster.local"
)

// TestMTLS runs the binary with server.tls from files: plaintext and
// certificate-less clients are refused, access lists are enforced with
// PermissionDenied, an expired certificate fails the handshake, and a
// certificate rotation on disk reaches new connections while an open
// stream keeps receiving updates.
func TestMTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "prod CA")
	// Relative paths: they resolve against the config file's folder.
	tlstest.WriteFiles(t, mkdir(t, filepath.Join(dir, "tls")), ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}}), ca.PEM)
	writeServices(t, dir, "10.1.0.1:8080")
	s := harness.Start(t, dir, serverKeys(
		"tls:",
		"  cert_file: tls/tls.crt",
		"  key_file: tls/tls.key",
		"  ca_file: tls/ca.crt",
		"  authorize:",
		"    destination:",
		`      ids: ["spiffe://prod.test/ns/*/sa/proxy"]`,
	)+fileSource)

	client := func(id string, mod ...func(*tlstest.LeafOptions)) credentials.TransportCredentials {
		cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: serverDNS}
		if id != "" {
			o := tlstest.LeafOptions{ID: id}
			for _, m := range mod {
				m(&o)
			}
			cfg.Certificates = []tls.Certificate{ca.Issue(t, o).TLS}
		}
		return credentials.NewTLS(cfg)
	}
	first := func(creds credentials.TransportCredentials) (string, error) {
		return openGet(t, s.API, creds, "web.demo:8080").next()
	}

	proxy := openGet(t, s.API, client("spiffe://prod.test/ns/web/sa/proxy"), "web.demo:8080")
	if got, err := proxy.next(); err != nil || got != "add:10.1.0.1:8080" {
		t.Fatalf("allowed proxy: %q %v", got, err)
	}
	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		code  codes.Code
		msg   string
	}{
		{"plaintext", insecure.NewCredentials(), codes.Unavailable, ""},
		{"no client certificate", client(""), codes.Unauthenticated, "requires a client certificate"},
		{"another trust domain", client("spiffe://other.test/ns/web/sa/proxy"), codes.PermissionDenied, "spiffe://other.test/ns/web/sa/proxy is not allowed to call the destination API"},
		{"an ID not on the list", client("spiffe://prod.test/ns/web/sa/batch"), codes.PermissionDenied, "spiffe://prod.test/ns/web/sa/batch is not allowed"},
		{"expired certificate", client("spiffe://prod.test/ns/web/sa/proxy", func(o *tlstest.LeafOptions) {
			o.NotBefore, o.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Minute)
		}), codes.Unavailable, ""},
	} {
		got, err := first(tc.creds)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: got %q, %v; want %v %q", tc.name, got, err, tc.code, tc.msg)
		}
	}
	eventually(t, "handshake failures counted by reason", func() bool {
		return metric(t, s, "tributary_tls_handshake_failures_total", `{listener="api",reason="expired"}`) == 1 &&
			metric(t, s, "tributary_tls_handshake_failures_total", `{listener="api",reason="not_tls"}`) >= 1
	})
	if got := metric(t, s, "tributary_tls_requests_denied_total", `{api="destination",code="permission_denied"}`); got != 2 {
		t.Errorf("permission_denied counted %v, want 2", got)
	}

	// Rotation on disk: a new key and certificate. New connections get it;
	// the open stream is not touched and keeps receiving updates.
	before := servedSerial(t, s.API)
	next := ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}})
	tlstest.WriteFiles(t, filepath.Join(dir, "tls"), next, ca.PEM)
	eventually(t, "new connections get the rotated certificate", func() bool {
		return servedSerial(t, s.API).Cmp(next.Cert.SerialNumber) == 0
	})
	if before.Cmp(next.Cert.SerialNumber) == 0 {
		t.Fatal("serials collide")
	}
	s.WaitLog("TLS certificate and trust bundle reloaded")
	writeServices(t, dir, "10.1.0.1:8080", "10.1.0.2:8080")
	if got, err := proxy.next(); err != nil || got != "add:10.1.0.2:8080" {
		t.Fatalf("the stream opened before the rotation: %q %v", got, err)
	}
	if got, err := first(client("spiffe://prod.test/ns/billing/sa/proxy")); err != nil || got != "add:10.1.0.1:8080,10.1.0.2:8080" {
		t.Fatalf("a new connection after the rotation: %q %v", got, err)
	}
}

// TestAdminMTLS starts the binary with server.tls.admin: the admin port
// speaks TLS only; /readyz needs no client certificate (probes), /metrics
// needs an ID on the admin access list.
func TestAdminMTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "prod CA")
	tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}}), ca.PEM)
	writeServices(t, dir, "10.1.0.1:8080")
	p := harness.FreePorts(t, 2)
	api, adminAddr := p[0], p[1]
	cfg := fmt.Sprintf(`server:
  listen: %s
  admin: %s
  tls:
    cert_file: tls.crt
    key_file: tls.key
    ca_file: ca.crt
    admin: true
    authorize:
      admin: {ids: ["spiffe://prod.test/ops/**"]}
%s`, api, adminAddr, fileSource)
	cfgPath := filepath.Join(dir, "tributary.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &harness.SyncBuffer{}
	cmd := exec.Command(harness.Bin, "serve", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if strings.Contains(logs.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in tributary")
		}
		if t.Failed() {
			t.Logf("tributary output:\n%s", logs.String())
		}
	})

	anon := &tls.Config{RootCAs: ca.Pool(), ServerName: serverDNS}
	base := "https://" + adminAddr
	eventually(t, "/readyz over TLS without a client certificate", func() bool {
		select {
		case <-exited:
			t.Fatalf("tributary exited:\n%s", logs.String())
		default:
		}
		return httpsGet(t, anon, base+"/readyz") == 200
	})
	ops := &tls.Config{RootCAs: ca.Pool(), ServerName: serverDNS,
		Certificates: []tls.Certificate{ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/ops/alice"}).TLS}}
	proxy := &tls.Config{RootCAs: ca.Pool(), ServerName: serverDNS,
		Certificates: []tls.Certificate{ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/ns/web/sa/proxy"}).TLS}}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		want int
	}{
		{"no client certificate", anon, 401},
		{"a proxy", proxy, 403},
		{"an operator", ops, 200},
	} {
		if got := httpsGet(t, tc.cfg, base+"/metrics"); got != tc.want {
			t.Errorf("%s: /metrics answered %d, want %d", tc.name, got, tc.want)
		}
	}
	if resp, err := http.Get("http://" + adminAddr + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP on the admin port served /readyz")
		}
	}
	// The destination API still takes the proxy (the own trust domain).
	st := openGet(t, api, credentials.NewTLS(proxy), "web.demo:8080")
	if got, err := st.next(); err != nil || got != "add:10.1.0.1:8080" {
		t.Fatalf("destination API: %q %v", got, err)
	}
}
