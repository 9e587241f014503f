package tlsauth

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
	"github.com/tributary-mesh/tributary/discovery"
)

// waitFor bounds every wait: a hang guard, not a latency claim.
const waitFor = 10 * time.Second

// The server's identity as linkerd2-proxy would check it: the DNS name is
// what LINKERD2_PROXY_DESTINATION_SVC_NAME holds.
const (
	serverID  = "spiffe://prod.test/ns/tributary/sa/tributary"
	serverDNS = "tributary.tributary.serviceaccount.identity.linkerd.cluster.local"
	proxyID   = "spiffe://prod.test/ns/web/sa/proxy"
)

// env is a destination server behind a Guard built from files.
type env struct {
	t     *testing.T
	dir   string
	ca    *tlstest.CA
	guard *Guard
	addr  string
	store *cache.Store
	reg   *prometheus.Registry
	logs  *bytes.Buffer
}

func newEnv(t *testing.T, tweak func(*Config)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), ca: tlstest.NewCA(t, "prod CA")}
	cert, key, ca := tlstest.WriteFiles(t, e.dir, e.ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}}), e.ca.PEM)
	cfg := &Config{CertFile: cert, KeyFile: key, CAFile: ca, ReloadInterval: discovery.Duration(time.Hour)}
	if tweak != nil {
		tweak(cfg)
	}
	e.start(cfg)
	return e
}

// start runs the destination server behind a Guard made from cfg.
func (e *env) start(cfg *Config) {
	t := e.t
	t.Helper()
	e.store, e.reg, e.logs = cache.New(), prometheus.NewRegistry(), &bytes.Buffer{}
	g, err := New(context.Background(), Options{Config: cfg, Registerer: e.reg, Logger: slog.New(slog.NewTextHandler(syncWriter{e.logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	e.guard = g
	srv := destination.NewServer(destination.Options{Store: e.store})
	gs := grpc.NewServer(append(destination.ServerOptions(), g.ServerOptions()...)...)
	srv.Register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(ln) }()
	t.Cleanup(func() {
		srv.Drain()
		gs.Stop()
		<-done
		g.Close()
	})
}

// syncWriter serializes writes to the log buffer (the tests read it only
// after the server stopped, or through logged()).
type syncWriter struct{ b *bytes.Buffer }

var logMu = make(chan struct{}, 1)

func (w syncWriter) Write(p []byte) (int, error) {
	logMu <- struct{}{}
	defer func() { <-logMu }()
	return w.b.Write(p)
}

func (e *env) logged() string {
	logMu <- struct{}{}
	defer func() { <-logMu }()
	return e.logs.String()
}

// clientTLS is how a proxy connects: it checks the server's DNS name against
// the trust anchors and presents its own certificate (nil: none).
func (e *env) clientTLS(cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: e.ca.Pool(), ServerName: serverDNS, MinVersion: tls.VersionTLS12}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return c
}

func (e *env) conn(creds credentials.TransportCredentials) *grpc.ClientConn {
	e.t.Helper()
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return cc
}

// stream is a Get stream's messages and end.
type stream struct {
	t       *testing.T
	updates chan *pb.Update
	errc    chan error
}

func (e *env) get(cc *grpc.ClientConn, path string) *stream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{t: e.t, updates: make(chan *pb.Update, 10), errc: make(chan error, 1)}
	c, err := pb.NewDestinationClient(cc).Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: path})
	if err != nil {
		cancel()
		s.errc <- err // the connection failed before the stream began
		return s
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			u, err := c.Recv()
			if err != nil {
				s.errc <- err
				return
			}
			s.updates <- u
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	return s
}

// next returns the next update, or the error that ended the stream.
func (s *stream) next() (*pb.Update, error) {
	s.t.Helper()
	select {
	case u := <-s.updates:
		return u, nil
	case err := <-s.errc:
		s.errc <- err
		return nil, err
	case <-time.After(waitFor):
		s.t.Fatal("no message")
	}
	return nil, nil
}

// firstGet opens a Get on a new connection and returns its first
// message's error (nil when it arrived).
func (e *env) firstGet(creds credentials.TransportCredentials) error {
	e.t.Helper()
	_, err := e.get(e.conn(creds), "web.demo:80").next()
	return err
}

func (e *env) apply(addrs ...string) {
	e.t.Helper()
	svc := discovery.Service{Authority: discovery.Authority{Host: "web.demo", Port: 80}}
	for _, a := range addrs {
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: netip.MustParseAddrPort(a)})
	}
	if _, err := e.store.Apply("test", []discovery.Group{{Key: "web", Services: []discovery.Service{svc}}}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) counter(name string, labels map[string]string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metric
				}
			}
			if m.GetCounter() != nil {
				sum += m.GetCounter().GetValue()
			} else {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// eventually waits (bounded) until cond holds: for what the server records
// after the client already saw the outcome.
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("never: %s\n%s", what, e.logged())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msgParts ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want %v", what, err, code)
	}
	for _, p := range msgParts {
		if !strings.Contains(status.Convert(err).Message(), p) {
			t.Errorf("%s: message %q lacks %q", what, status.Convert(err).Message(), p)
		}
	}
}

func TestMTLSAuthentication(t *testing.T) {
	e := newEnv(t, nil)
	tlsCreds := func(cert *tls.Certificate) credentials.TransportCredentials {
		return credentials.NewTLS(e.clientTLS(cert))
	}
	proxy := e.ca.Issue(t, tlstest.LeafOptions{ID: proxyID, DNS: []string{"proxy.web.serviceaccount.identity.linkerd.cluster.local"}})

	t.Run("allowed", func(t *testing.T) {
		if err := e.firstGet(tlsCreds(&proxy.TLS)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("plaintext refused", func(t *testing.T) {
		err := e.firstGet(insecure.NewCredentials())
		wantCode(t, "plaintext", err, codes.Unavailable)
		e.eventually("plaintext attempt counted as not_tls", func() bool {
			return e.counter("tributary_tls_handshake_failures_total", map[string]string{"listener": "api", "reason": "not_tls"}) == 1
		})
	})
	t.Run("no client certificate", func(t *testing.T) {
		wantCode(t, "no cert", e.firstGet(tlsCreds(nil)), codes.Unauthenticated, "destination API", "client certificate")
	})
	t.Run("wrong trust domain", func(t *testing.T) {
		other := e.ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://other.test/ns/web/sa/proxy"})
		wantCode(t, "other trust domain", e.firstGet(tlsCreds(&other.TLS)), codes.PermissionDenied, "spiffe://other.test/ns/web/sa/proxy", "destination API")
	})
	t.Run("expired certificate", func(t *testing.T) {
		before := e.counter("tributary_tls_handshake_failures_total", map[string]string{"reason": "expired"})
		old := e.ca.Issue(t, tlstest.LeafOptions{ID: proxyID, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Minute)})
		wantCode(t, "expired", e.firstGet(tlsCreds(&old.TLS)), codes.Unavailable)
		e.eventually("expired certificate counted as expired", func() bool {
			return e.counter("tributary_tls_handshake_failures_total", map[string]string{"reason": "expired"}) == before+1
		})
	})
	t.Run("untrusted CA", func(t *testing.T) {
		rogue := tlstest.NewCA(t, "rogue").Issue(t, tlstest.LeafOptions{ID: proxyID})
		wantCode(t, "untrusted", e.firstGet(tlsCreds(&rogue.TLS)), codes.Unavailable)
		e.eventually("untrusted certificate counted", func() bool {
			return e.counter("tributary_tls_handshake_failures_total", map[string]string{"reason": "untrusted"}) == 1
		})
	})
	t.Run("certificate without SPIFFE ID", func(t *testing.T) {
		// What Linkerd's own identity issuer hands out: a DNS-like name only.
		dnsOnly := e.ca.Issue(t, tlstest.LeafOptions{DNS: []string{"proxy.web.serviceaccount.identity.linkerd.cluster.local"}})
		wantCode(t, "DNS-only", e.firstGet(tlsCreds(&dnsOnly.TLS)), codes.Unauthenticated, "X.509-SVID")
	})
	t.Run("health is public", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		r, err := healthpb.NewHealthClient(e.conn(tlsCreds(nil))).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health without a client certificate: %v %v", r, err)
		}
	})
	if e.counter("tributary_tls_requests_denied_total", map[string]string{"api": "destination", "code": "permission_denied"}) != 1 ||
		e.counter("tributary_tls_requests_denied_total", map[string]string{"api": "destination", "code": "unauthenticated"}) != 2 {
		t.Errorf("denials miscounted:\n%s", e.logged())
	}
}

func TestIDNotAllowedIsPermissionDenied(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Authorize.Destination.IDs = []string{"spiffe://prod.test/ns/*/sa/proxy"}
	})
	creds := func(id string) credentials.TransportCredentials {
		return credentials.NewTLS(e.clientTLS(&e.ca.Issue(t, tlstest.LeafOptions{ID: id}).TLS))
	}
	if err := e.firstGet(creds("spiffe://prod.test/ns/billing/sa/proxy")); err != nil {
		t.Fatalf("a matching ID: %v", err)
	}
	// Same trust domain, not on the list: the list replaces the default.
	wantCode(t, "not on the list", e.firstGet(creds("spiffe://prod.test/ns/billing/sa/batch")), codes.PermissionDenied,
		"spiffe://prod.test/ns/billing/sa/batch is not allowed to call the destination API")
	// GetProfile is the same API.
	cc := e.conn(creds("spiffe://prod.test/ns/billing/sa/batch"))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ps, err := pb.NewDestinationClient(cc).GetProfile(ctx, &pb.GetDestination{Path: "web.demo:80"})
	if err == nil {
		_, err = ps.Recv()
	}
	wantCode(t, "GetProfile", err, codes.PermissionDenied)
}

// TestProxyWithoutALPN connects as linkerd2-proxy does to its control
// plane: TLS without ALPN, which grpc-go's own server credentials refuse.
func TestProxyWithoutALPN(t *testing.T) {
	e := newEnv(t, nil)
	proxy := e.ca.Issue(t, tlstest.LeafOptions{ID: proxyID})
	cfg := e.clientTLS(&proxy.TLS)
	cfg.NextProtos = nil
	conn, err := tls.Dial("tcp", e.addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if p := conn.ConnectionState().NegotiatedProtocol; p != "" {
		t.Fatalf("negotiated %q without offering anything", p)
	}
	if got := conn.ConnectionState().PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != serverDNS {
		t.Fatalf("server DNS names %v", got)
	}
	msg, trailer := rawUnary(t, conn, "/io.linkerd.proxy.destination.Destination/GetProfile", &pb.GetDestination{Path: "web.demo:80"})
	if msg == nil {
		t.Fatalf("no profile; trailers %v", trailer)
	}
	var p pb.DestinationProfile
	if err := proto.Unmarshal(msg, &p); err != nil || p.GetRetryBudget() == nil {
		t.Fatalf("profile %v: %v", &p, err)
	}
}

// rawUnary sends one gRPC request over an HTTP/2 framer on conn and returns
// the first response message, or the trailers when the call ended without one.
func rawUnary(t *testing.T, conn net.Conn, method string, req proto.Message) ([]byte, map[string]string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(waitFor))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, h := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", method}, {":authority", serverDNS},
		{"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	body, _ := proto.Marshal(req)
	frame := make([]byte, 5+len(body))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(body)))
	copy(frame[5:], body)
	if err := fr.WriteData(1, true, frame); err != nil {
		t.Fatal(err)
	}
	trailers := map[string]string{}
	var data []byte
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames: %v (trailers %v)", err, trailers)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			for _, h := range f.Fields {
				trailers[h.Name] = h.Value
			}
			if f.StreamEnded() {
				return nil, trailers
			}
		case *http2.DataFrame:
			data = append(data, f.Data()...)
			if len(data) >= 5 && len(data) >= 5+int(binary.BigEndian.Uint32(data[1:5])) {
				return data[5 : 5+binary.BigEndian.Uint32(data[1:5])], trailers
			}
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", f.ErrCode)
		}
	}
}

func TestServerIdentityStartupChecks(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	// No SPIFFE ID on the server certificate: no own trust domain to
	// admit by default, so the config must list one.
	cert, key, caf := tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{DNS: []string{serverDNS}}), ca.PEM)
	cfg := &Config{CertFile: cert, KeyFile: key, CAFile: caf}
	if _, err := New(context.Background(), Options{Config: cfg}); err == nil || !strings.Contains(err.Error(), "trust_domains") {
		t.Fatalf("no SPIFFE ID, no trust_domains: %v", err)
	}
	cfg.TrustDomains = []string{"prod.test"}
	g, err := New(context.Background(), Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	g.Close()

	// An expired server certificate is refused at start, with the date.
	cert, key, caf = tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{ID: serverID, NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}), ca.PEM)
	if _, err := New(context.Background(), Options{Config: &Config{CertFile: cert, KeyFile: key, CAFile: caf}}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired server certificate: %v", err)
	}
	// A key that does not match, an empty CA file, a missing file.
	other := ca.Issue(t, tlstest.LeafOptions{ID: serverID})
	tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{ID: serverID}), ca.PEM)
	tlstest.WriteAtomic(t, key, other.KeyPEM)
	for name, c := range map[string]*Config{
		"mismatched key": {CertFile: cert, KeyFile: key, CAFile: caf},
		"missing file":   {CertFile: cert, KeyFile: key, CAFile: caf + ".missing"},
	} {
		if _, err := New(context.Background(), Options{Config: c}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := os.WriteFile(caf, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	tlstest.WriteFiles(t, dir, other, nil)
	if _, err := New(context.Background(), Options{Config: &Config{CertFile: cert, KeyFile: key, CAFile: caf}}); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Errorf("empty CA file: %v", err)
	}
}
