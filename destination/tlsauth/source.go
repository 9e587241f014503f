package tlsauth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// credSource gives the server's current certificate and the trust bundles
// that client certificates are verified against. Both may change at any
// time (rotation); each handshake asks anew.
type credSource interface {
	x509bundle.Source
	// certificate is the server's current certificate, Leaf set.
	certificate() (*tls.Certificate, error)
	// ownID is the SPIFFE ID of the server's certificate; zero if it has none.
	ownID() spiffeid.ID
}

// creds is one consistent set of credentials.
type creds struct {
	cert  *tls.Certificate
	id    spiffeid.ID
	roots []*x509.Certificate // file source only
	sum   [sha256.Size]byte   // of the files' contents (file source only)
}

// describe is what the logs say about a certificate.
func describe(c *creds) []any {
	leaf := c.cert.Leaf
	return []any{"spiffe_id", c.id.String(), "dns_names", leaf.DNSNames, "serial", leaf.SerialNumber.String(),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339)}
}

// fileSource reads the server certificate, its key and the client CAs from
// PEM files, and re-reads them when they change (fsnotify on their
// folders, which also sees Kubernetes' symlink swaps, plus a periodic
// re-read). A set that fails to load — a half-written rotation, a key that
// does not match its certificate — is logged and counted; the last good set
// stays in use.
type fileSource struct {
	certFile, keyFile, caFile string
	log                       *slog.Logger
	metrics                   *metrics
	cur                       atomic.Pointer[creds]
}

func newFileSource(certFile, keyFile, caFile string, log *slog.Logger, m *metrics) (*fileSource, error) {
	f := &fileSource{certFile: certFile, keyFile: keyFile, caFile: caFile, log: log, metrics: m}
	c, err := f.load()
	if err != nil {
		return nil, err
	}
	f.cur.Store(c)
	m.setExpiry(c.cert.Leaf.NotAfter)
	return f, nil
}

func (f *fileSource) certificate() (*tls.Certificate, error) { return f.cur.Load().cert, nil }
func (f *fileSource) ownID() spiffeid.ID                     { return f.cur.Load().id }

// GetX509BundleForTrustDomain implements x509bundle.Source: the CA file is
// the bundle of every trust domain. Which trust domains and IDs are let in
// is the access lists' decision, made after the handshake.
func (f *fileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, f.cur.Load().roots), nil
}

func (f *fileSource) load() (*creds, error) {
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return nil, fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return nil, fmt.Errorf("key_file: %w", err)
	}
	caPEM, err := os.ReadFile(f.caFile)
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	c := &creds{sum: sha256.Sum256(bytes.Join([][]byte{certPEM, keyPEM, caPEM}, []byte{0}))}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("cert_file %s and key_file %s: %w", f.certFile, f.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("cert_file %s: %w", f.certFile, err)
		}
	}
	c.cert = &cert
	if c.id, err = leafID(cert.Leaf); err != nil {
		return nil, fmt.Errorf("cert_file %s: %w", f.certFile, err)
	}
	if err := checkValidity(cert.Leaf, time.Now()); err != nil {
		return nil, fmt.Errorf("cert_file %s: %w", f.certFile, err)
	}
	for rest := caPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("ca_file %s: a %s block where only CERTIFICATE blocks belong", f.caFile, b.Type)
		}
		ca, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ca_file %s: %w", f.caFile, err)
		}
		c.roots = append(c.roots, ca)
	}
	if len(c.roots) == 0 {
		return nil, fmt.Errorf("ca_file %s: no PEM certificates in it", f.caFile)
	}
	return c, nil
}

// leafID is the SPIFFE ID of a certificate; zero when it has no URI SAN.
func leafID(leaf *x509.Certificate) (spiffeid.ID, error) {
	if len(leaf.URIs) == 0 {
		return spiffeid.ID{}, nil
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return id, fmt.Errorf("the certificate's URI SAN is not a SPIFFE ID: %w", err)
	}
	return id, nil
}

func checkValidity(leaf *x509.Certificate, now time.Time) error {
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Errorf("the certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("the certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// reload re-reads the files and swaps them in when they changed.
func (f *fileSource) reload() {
	c, err := f.load()
	if err != nil {
		f.metrics.reloaded(false)
		f.log.Warn("TLS files could not be reloaded; the previous certificate stays in use", "err", err)
		return
	}
	if c.sum == f.cur.Load().sum {
		return
	}
	f.cur.Store(c)
	f.metrics.reloaded(true)
	f.metrics.setExpiry(c.cert.Leaf.NotAfter)
	f.log.Info("TLS certificate and trust bundle reloaded; new handshakes use them", describe(c)...)
}

// reloadDebounce lets a rotation that writes several files settle before
// they are read.
const reloadDebounce = 100 * time.Millisecond

// run watches the files until ctx ends.
func (f *fileSource) run(ctx context.Context, interval time.Duration) {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w, err := fsnotify.NewWatcher(); err != nil {
		f.log.Warn("cannot watch the TLS files; they are re-read periodically only", "err", err, "interval", interval)
	} else {
		defer w.Close()
		seen := map[string]bool{}
		for _, p := range []string{f.certFile, f.keyFile, f.caFile} {
			dir := filepath.Dir(p)
			if seen[dir] {
				continue
			}
			seen[dir] = true
			if err := w.Add(dir); err != nil {
				f.log.Warn("cannot watch a TLS folder; its files are re-read periodically only", "dir", dir, "err", err)
			}
		}
		events, errs = w.Events, w.Errors
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			// Any change in the folders: Kubernetes swaps a ..data symlink,
			// cert-manager and editors rename; re-reading is cheap and a
			// set whose contents did not change is left alone.
			debounce.Reset(reloadDebounce)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			f.log.Warn("watching the TLS files", "err", err)
		case <-debounce.C:
			f.reload()
		case <-tick.C:
			f.reload()
		}
	}
}

// workloadSource is the SPIFFE Workload API (a SPIRE agent): the agent
// pushes a new SVID before the old one expires, and bundle changes.
type workloadSource struct {
	src *workloadapi.X509Source
	// cached is the tls.Certificate built from the SVID last seen.
	cached atomic.Pointer[svidCert]
}

type svidCert struct {
	svid *x509svid.SVID
	cert *tls.Certificate
}

func (w *workloadSource) certificate() (*tls.Certificate, error) {
	s, err := w.src.GetX509SVID()
	if err != nil {
		return nil, err
	}
	if c := w.cached.Load(); c != nil && c.svid == s {
		return c.cert, nil
	}
	cert := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, c := range s.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	w.cached.Store(&svidCert{svid: s, cert: cert})
	return cert, nil
}

func (w *workloadSource) ownID() spiffeid.ID {
	s, err := w.src.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}
	}
	return s.ID
}

func (w *workloadSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return w.src.GetX509BundleForTrustDomain(td)
}

// watch logs and counts every update the agent pushes until ctx ends.
func (w *workloadSource) watch(ctx context.Context, log *slog.Logger, m *metrics) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.src.Updated():
			s, err := w.src.GetX509SVID()
			if err != nil {
				continue
			}
			m.reloaded(true)
			m.setExpiry(s.Certificates[0].NotAfter)
			log.Info("Workload API update: new handshakes use the new SVID and bundles",
				"spiffe_id", s.ID.String(), "not_after", s.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
		}
	}
}

// slogLogger adapts slog to go-spiffe's logger interface.
type slogLogger struct{ l *slog.Logger }

func (s slogLogger) Debugf(format string, args ...any) { s.l.Debug(fmt.Sprintf(format, args...)) }
func (s slogLogger) Infof(format string, args ...any)  { s.l.Info(fmt.Sprintf(format, args...)) }
func (s slogLogger) Warnf(format string, args ...any)  { s.l.Warn(fmt.Sprintf(format, args...)) }
func (s slogLogger) Errorf(format string, args ...any) { s.l.Error(fmt.Sprintf(format, args...)) }
