package tlsauth

import (
	"context"
	"crypto/tls"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
)

// servedSerial is the serial of the certificate a new connection sees.
func (e *env) servedSerial() *big.Int {
	e.t.Helper()
	cfg := e.clientTLS(nil)
	cfg.InsecureSkipVerify = true // the test looks at what is served; trust is checked elsewhere
	conn, err := tls.Dial("tcp", e.addr, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

func (e *env) waitServed(serial *big.Int) {
	e.t.Helper()
	e.eventually("new connections see certificate "+serial.String(), func() bool { return e.servedSerial().Cmp(serial) == 0 })
}

// TestRotationKeepsStreams rotates the server certificate and the trust
// bundle on disk under an open stream: the stream keeps receiving updates,
// new connections get the new certificate and are verified against the new
// bundle.
func TestRotationKeepsStreams(t *testing.T) {
	e := newEnv(t, nil)
	certFile, keyFile, caFile := filepath.Join(e.dir, "tls.crt"), filepath.Join(e.dir, "tls.key"), filepath.Join(e.dir, "ca.crt")
	proxy := e.ca.Issue(t, tlstest.LeafOptions{ID: proxyID})
	st := e.get(e.conn(credentials.NewTLS(e.clientTLS(&proxy.TLS))), "web.demo:80")
	if _, err := st.next(); err != nil {
		t.Fatal(err)
	}
	first := e.servedSerial()

	// 1. A new server certificate from a new CA, and a bundle holding both
	// CAs (how a CA rotation starts).
	ca2 := tlstest.NewCA(t, "prod CA 2")
	leaf2 := ca2.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}})
	tlstest.WriteAtomic(t, caFile, append(append([]byte{}, e.ca.PEM...), ca2.PEM...))
	tlstest.WriteAtomic(t, keyFile, leaf2.KeyPEM)
	tlstest.WriteAtomic(t, certFile, leaf2.CertPEM)
	e.waitServed(leaf2.Cert.SerialNumber)
	if first.Cmp(leaf2.Cert.SerialNumber) == 0 {
		t.Fatal("serials collide")
	}
	e.apply("10.0.0.1:80")
	if u, err := st.next(); err != nil || u.GetAdd() == nil {
		t.Fatalf("the established stream after rotation: %v %v", u, err)
	}
	// A client of the new CA is now trusted; its client checks the new
	// server certificate against the new CA.
	proxy2 := ca2.Issue(t, tlstest.LeafOptions{ID: proxyID})
	cfg2 := e.clientTLS(&proxy2.TLS)
	cfg2.RootCAs = ca2.Pool()
	if err := e.firstGet(credentials.NewTLS(cfg2)); err != nil {
		t.Fatalf("client of the new CA: %v", err)
	}

	// 2. The old CA leaves the bundle: new connections with its
	// certificates are refused, the stream opened with one keeps going.
	tlstest.WriteAtomic(t, caFile, ca2.PEM)
	oldClient := e.clientTLS(&proxy.TLS)
	oldClient.RootCAs = ca2.Pool()
	e.eventually("the old CA is no longer trusted", func() bool {
		return e.firstGet(credentials.NewTLS(oldClient)) != nil
	})
	e.apply("10.0.0.1:80", "10.0.0.2:80")
	if u, err := st.next(); err != nil || u.GetAdd() == nil {
		t.Fatalf("the established stream after the bundle change: %v %v", u, err)
	}
	if got := e.counter("tributary_tls_reloads_total", map[string]string{"result": "ok"}); got < 2 {
		t.Errorf("reloads counted %v, want at least 2", got)
	}
}

// TestBrokenRotationKeepsLastGood writes a key that does not match the
// certificate: the previous pair stays in use until a good pair arrives.
func TestBrokenRotationKeepsLastGood(t *testing.T) {
	e := newEnv(t, nil)
	keyFile, certFile := filepath.Join(e.dir, "tls.key"), filepath.Join(e.dir, "tls.crt")
	before := e.servedSerial()
	next := e.ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}})
	tlstest.WriteAtomic(t, certFile, next.CertPEM) // the key is still the old one
	e.eventually("the mismatch is counted", func() bool {
		return e.counter("tributary_tls_reloads_total", map[string]string{"result": "error"}) > 0
	})
	if got := e.servedSerial(); got.Cmp(before) != 0 {
		t.Fatalf("serving %v after a broken rotation, want the previous %v", got, before)
	}
	proxy := e.ca.Issue(t, tlstest.LeafOptions{ID: proxyID})
	if err := e.firstGet(credentials.NewTLS(e.clientTLS(&proxy.TLS))); err != nil {
		t.Fatalf("still serving after a broken rotation: %v", err)
	}
	tlstest.WriteAtomic(t, keyFile, next.KeyPEM)
	e.waitServed(next.Cert.SerialNumber)
}

// TestPeriodicReload: without a filesystem event (a watch that missed it),
// the periodic re-read picks the change up.
func TestPeriodicReload(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	cert, key, caf := tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{ID: serverID}), ca.PEM)
	f, err := newFileSource(cert, key, caf, discardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	next := ca.Issue(t, tlstest.LeafOptions{ID: serverID})
	tlstest.WriteFiles(t, dir, next, ca.PEM)
	// The watch is not running: only run's ticker can see the change.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.run(ctx, 20*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(waitFor)
	for c, _ := f.certificate(); c.Leaf.SerialNumber.Cmp(next.Cert.SerialNumber) != 0; c, _ = f.certificate() {
		if time.Now().After(deadline) {
			t.Fatal("the periodic re-read never took the new certificate")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAdminMTLS(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Admin = true
		c.Authorize.Admin.IDs = []string{"spiffe://prod.test/ops/**"}
	})
	mux := http.NewServeMux()
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/debug/registry", "/healthz-secrets"} {
		mux.HandleFunc(p, func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) })
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e.guard.AdminHandler(mux), TLSConfig: e.guard.AdminTLSConfig(), ErrorLog: e.guard.AdminErrorLog()}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	defer func() { srv.Close(); <-done }()

	get := func(cert *tls.Certificate, path string) int {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: e.clientTLS(cert), ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: waitFor, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Get("https://" + ln.Addr().String() + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	ops := e.ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/ops/alice"})
	proxy := e.ca.Issue(t, tlstest.LeafOptions{ID: proxyID})
	expired := e.ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/ops/alice", NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		path string
		want int
	}{
		{"probe without certificate", nil, "/healthz", http.StatusOK},
		{"readiness without certificate", nil, "/readyz", http.StatusOK},
		{"metrics without certificate", nil, "/metrics", http.StatusUnauthorized},
		{"a path that only looks like a probe", nil, "/healthz/../metrics", http.StatusUnauthorized},
		{"a path that only starts like a probe", nil, "/healthz-secrets", http.StatusUnauthorized},
		{"operator", &ops.TLS, "/debug/registry", http.StatusOK},
		{"proxy is not an operator", &proxy.TLS, "/metrics", http.StatusForbidden},
		{"expired operator certificate", &expired.TLS, "/metrics", 0},
	} {
		if got := get(tc.cert, tc.path); got != tc.want {
			t.Errorf("%s: %s answered %d, want %d", tc.name, tc.path, got, tc.want)
		}
	}
	// Plain HTTP to the TLS port: refused.
	if resp, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP served")
		}
	}
	e.eventually("the expired admin certificate counted", func() bool {
		return e.counter("tributary_tls_handshake_failures_total", map[string]string{"listener": "admin", "reason": "expired"}) == 1
	})
	// The admin list does not open the destination API, and vice versa.
	if err := e.firstGet(credentials.NewTLS(e.clientTLS(&ops.TLS))); err != nil {
		t.Errorf("ops is in the own trust domain, the destination default: %v", err)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
