// Package tlsauth secures Tributary's serving edges with SPIFFE identities:
// the destination API (and optionally the admin endpoints) speak TLS only,
// ask every client for an X.509-SVID, and authorize each call by the
// client's SPIFFE ID against per-API access lists.
//
// The server's certificate and the trust bundles come from the SPIFFE
// Workload API (a SPIRE agent) or from PEM files that are re-read when they
// change. Either way each handshake takes the current ones: rotation never
// touches established connections, and new connections see the new
// certificate at once.
//
// Two steps, two kinds of failure:
//   - the handshake verifies the client certificate cryptographically (an
//     SVID chaining to a trusted bundle, within its validity): a certificate
//     that fails is refused there and counted by reason;
//   - each call is then authorized (interceptors for gRPC, AdminHandler for
//     HTTP): no client certificate is Unauthenticated (401), a SPIFFE ID not
//     on the API's access list is PermissionDenied (403), each with a
//     message that names the peer and the API.
package tlsauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// DefaultWorkloadAPITimeout bounds the wait for the first SVID at start.
const DefaultWorkloadAPITimeout = 30 * time.Second

// HandshakeTimeout bounds a TLS handshake on the API port.
const HandshakeTimeout = 10 * time.Second

// Options configures a Guard.
type Options struct {
	// Config is the validated server.tls section; required.
	Config *Config
	// BaseDir resolves relative file paths (the config file's folder).
	BaseDir string
	Logger  *slog.Logger
	// Registerer, when set, gets the tributary_tls_* metrics.
	Registerer prometheus.Registerer
	// WorkloadAPITimeout bounds the wait for the first SVID; 0 means
	// DefaultWorkloadAPITimeout.
	WorkloadAPITimeout time.Duration
}

// Guard holds the server's credentials and the access lists. A nil *Guard
// is "TLS off": its methods return options and handlers that change nothing.
type Guard struct {
	log     *slog.Logger
	src     credSource
	policy  policy
	metrics *metrics
	admin   bool

	stop     context.CancelFunc
	wg       sync.WaitGroup
	closeSrc func() error
}

// New loads the credentials (waiting, bounded, for the Workload API's
// first SVID) and starts following their rotation. Close stops it.
func New(ctx context.Context, opts Options) (*Guard, error) {
	c := opts.Config
	if c == nil {
		return nil, errors.New("tlsauth: no TLS config")
	}
	g := &Guard{log: opts.Logger, metrics: newMetrics(opts.Registerer), admin: c.Admin}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if g.policy, err = newPolicy(c); err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	g.stop = stop
	if c.WorkloadAPI != "" {
		timeout := opts.WorkloadAPITimeout
		if timeout <= 0 {
			timeout = DefaultWorkloadAPITimeout
		}
		wctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		src, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(
			workloadapi.WithAddr(c.WorkloadAPI), workloadapi.WithLogger(slogLogger{g.log.With("component", "workload-api")})))
		if err != nil {
			stop()
			return nil, fmt.Errorf("workload_api %s: no X.509-SVID within %s: %w", c.WorkloadAPI, timeout, err)
		}
		ws := &workloadSource{src: src}
		g.src, g.closeSrc = ws, src.Close
		if s, err := src.GetX509SVID(); err == nil {
			g.metrics.setExpiry(s.Certificates[0].NotAfter)
		}
		g.wg.Go(func() { ws.watch(runCtx, g.log, g.metrics) })
	} else {
		abs := func(p string) string {
			if filepath.IsAbs(p) || opts.BaseDir == "" {
				return p
			}
			return filepath.Join(opts.BaseDir, p)
		}
		fs, err := newFileSource(abs(c.CertFile), abs(c.KeyFile), abs(c.CAFile), g.log, g.metrics)
		if err != nil {
			stop()
			return nil, err
		}
		g.src = fs
		interval := time.Duration(c.ReloadInterval)
		if interval <= 0 {
			interval = DefaultReloadInterval
		}
		g.wg.Go(func() { fs.run(runCtx, interval) })
	}
	if g.src.ownID().IsZero() && g.policy.needsOwnTrustDomain() {
		g.Close()
		return nil, errors.New("the server certificate has no SPIFFE ID (URI SAN), so there is no own trust domain to admit by default: " +
			"list the trust domains under server.tls.trust_domains, or give every API an access list")
	}
	cert, err := g.src.certificate()
	if err != nil {
		g.Close()
		return nil, err
	}
	g.log.Info("destination API requires mTLS", append(describe(&creds{cert: cert, id: g.src.ownID()}), "admin_mtls", g.admin)...)
	if len(cert.Leaf.DNSNames) == 0 {
		g.log.Warn("the server certificate has no DNS name: linkerd2-proxy checks the destination server against " +
			"LINKERD2_PROXY_DESTINATION_SVC_NAME, a DNS SAN, and will refuse this certificate")
	}
	return g, nil
}

// Close stops following rotation and releases the Workload API connection.
// Established connections are not touched.
func (g *Guard) Close() error {
	if g == nil {
		return nil
	}
	g.stop()
	g.wg.Wait()
	if g.closeSrc != nil {
		return g.closeSrc()
	}
	return nil
}

// ServerOptions are the gRPC server options of the destination API: TLS
// credentials and the authorizing interceptors. Nil for a nil Guard.
func (g *Guard) ServerOptions() []grpc.ServerOption {
	if g == nil {
		return nil
	}
	return []grpc.ServerOption{
		grpc.Creds(&serverCreds{g: g, cfg: g.tlsConfig("api", []string{"h2"})}),
		grpc.ConnectionTimeout(HandshakeTimeout),
		grpc.ChainUnaryInterceptor(g.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(g.StreamInterceptor()),
	}
}

// AdminTLSConfig is the admin HTTP server's TLS config when tls.admin is
// on; nil otherwise (serve plain HTTP).
func (g *Guard) AdminTLSConfig() *tls.Config {
	if g == nil || !g.admin {
		return nil
	}
	return g.tlsConfig("admin", []string{"h2", "http/1.1"})
}

// AdminErrorLog is the admin http.Server's ErrorLog when it speaks TLS:
// handshake failures at debug level (they are counted in metrics).
func (g *Guard) AdminErrorLog() *log.Logger {
	if g == nil || !g.admin {
		return nil
	}
	return slog.NewLogLogger(g.log.Handler(), slog.LevelDebug)
}

// AlwaysAllowedAdminPaths need no client certificate, so that probes
// (kubelet, load balancers) keep working; as kube-apiserver and the
// Kubernetes components allow /healthz and /readyz by default.
var AlwaysAllowedAdminPaths = []string{"/healthz", "/readyz"}

// AdminHandler wraps the admin handler with authorization for the admin
// API when tls.admin is on; it returns h unchanged otherwise.
func (g *Guard) AdminHandler(h http.Handler) http.Handler {
	if g == nil || !g.admin {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range AlwaysAllowedAdminPaths {
			if r.URL.Path == p {
				h.ServeHTTP(w, r)
				return
			}
		}
		if _, err := g.Authorize(APIAdmin, r.TLS); err != nil {
			code := http.StatusForbidden
			if status.Code(err) == codes.Unauthenticated {
				code = http.StatusUnauthorized
			}
			http.Error(w, status.Convert(err).Message(), code)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// tlsConfig asks for a client certificate without requiring one: a call
// without one is answered Unauthenticated by the authorization step, with
// a message, and the public health service works without one. A
// certificate that is presented must verify. Session tickets are off, so
// every connection is verified against the bundles of the moment.
func (g *Guard) tlsConfig(listener string, nextProtos []string) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS12,
		NextProtos:             nextProtos,
		ClientAuth:             tls.RequestClientCert,
		SessionTicketsDisabled: true,
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return g.src.certificate() },
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			if leaf, err := x509.ParseCertificate(raw[0]); err == nil && len(leaf.URIs) == 0 {
				// Not an X.509-SVID (a Linkerd-issued identity carries a DNS
				// name only): it could never be authorized, and the call is
				// answered Unauthenticated with a message saying why rather
				// than with a bare TLS alert.
				return nil
			}
			if _, _, err := x509svid.ParseAndVerify(raw, g.src); err != nil {
				err = fmt.Errorf("client certificate refused: %w", err)
				if listener == "admin" {
					// The API listener's failures are logged by serverCreds,
					// with the ones that happen before verification.
					g.handshakeFailed(listener, nil, err)
				}
				return err
			}
			return nil
		},
	}
}

// handshakeFailed counts a refused handshake and logs it: at debug level
// when it says nothing about credentials (plaintext, an aborted connection),
// else as a warning.
func (g *Guard) handshakeFailed(listener string, remote net.Addr, err error) {
	reason := failureReason(err)
	g.metrics.handshakeFailed(listener, reason)
	args := []any{"listener", listener, "reason", reason, "err", err}
	if remote != nil {
		args = append(args, "remote", remote.String())
	}
	switch reason {
	case "not_tls", "aborted":
		g.log.Debug("TLS handshake failed", args...)
	default:
		g.log.Warn("TLS handshake refused", args...)
	}
}

func failureReason(err error) string {
	var invalid x509.CertificateInvalidError
	var unknown x509.UnknownAuthorityError
	var header tls.RecordHeaderError
	var netErr net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "expired"
	case errors.As(err, &unknown):
		return "untrusted"
	case strings.Contains(msg, "could not get X509 bundle"):
		return "unknown_trust_domain"
	case strings.Contains(msg, "could not get leaf SPIFFE ID"):
		return "no_spiffe_id"
	case errors.As(err, &header):
		return "not_tls"
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.As(err, &netErr) && netErr.Timeout():
		return "aborted"
	}
	return "other"
}

// accessError is an authorization refusal; its gRPC status carries the code.
func accessError(c codes.Code, format string, args ...any) error {
	return status.Errorf(c, format, args...)
}

// Authorize decides whether the peer of a TLS connection may call api. It
// returns the peer's SPIFFE ID, or a gRPC status error: Unauthenticated
// when there is no usable client certificate, PermissionDenied when the
// peer is not on the API's access list.
func (g *Guard) Authorize(api string, st *tls.ConnectionState) (spiffeid.ID, error) {
	if st == nil {
		g.metrics.deniedCall(api, "unauthenticated")
		return spiffeid.ID{}, accessError(codes.Unauthenticated, "the %s API requires mTLS; this connection is not TLS", api)
	}
	if len(st.PeerCertificates) == 0 {
		g.metrics.deniedCall(api, "unauthenticated")
		return spiffeid.ID{}, accessError(codes.Unauthenticated,
			"the %s API requires a client certificate (an X.509-SVID with a spiffe:// URI SAN); none was presented", api)
	}
	id, err := x509svid.IDFromCert(st.PeerCertificates[0])
	if err != nil {
		g.metrics.deniedCall(api, "unauthenticated")
		return id, accessError(codes.Unauthenticated, "the %s API requires an X.509-SVID: %v", api, err)
	}
	if !g.policy.allowed(api, id, g.src.ownID().TrustDomain()) {
		g.metrics.deniedCall(api, "permission_denied")
		g.log.Warn("call refused: peer not on the access list", "api", api, "peer", id.String())
		return id, accessError(codes.PermissionDenied, "%s is not allowed to call the %s API", id, api)
	}
	return id, nil
}

// authorizeCall applies Authorize to a gRPC call.
func (g *Guard) authorizeCall(ctx context.Context, method string) error {
	api, ok := MethodAPI(method)
	if !ok {
		g.metrics.deniedCall("none", "permission_denied")
		return accessError(codes.PermissionDenied, "%s belongs to no API with an access list; refused", method)
	}
	if api == "" {
		return nil
	}
	var st *tls.ConnectionState
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			st = &info.State
		}
	}
	_, err := g.Authorize(api, st)
	return err
}

// UnaryInterceptor authorizes unary calls.
func (g *Guard) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := g.authorizeCall(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor authorizes streaming calls (Get, GetProfile).
func (g *Guard) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := g.authorizeCall(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// serverCreds is gRPC's TLS server credentials without ALPN enforcement:
// linkerd2-proxy opens control-plane connections without ALPN, which
// grpc-go's own credentials refuse since 1.67. "h2" is still offered and
// chosen when the client asks for it.
type serverCreds struct {
	g   *Guard
	cfg *tls.Config
}

func (c *serverCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn := tls.Server(raw, c.cfg)
	if err := conn.Handshake(); err != nil {
		c.g.handshakeFailed("api", raw.RemoteAddr(), err)
		return nil, nil, err
	}
	info := credentials.TLSInfo{
		State:          conn.ConnectionState(),
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}
	if certs := info.State.PeerCertificates; len(certs) > 0 {
		if id, err := x509svid.IDFromCert(certs[0]); err == nil {
			info.SPIFFEID = id.URL()
		}
	}
	return conn, info, nil
}

func (c *serverCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tlsauth: server credentials cannot dial")
}

func (c *serverCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c *serverCreds) Clone() credentials.TransportCredentials {
	return &serverCreds{g: c.g, cfg: c.cfg.Clone()}
}

func (c *serverCreds) OverrideServerName(string) error { return nil }
