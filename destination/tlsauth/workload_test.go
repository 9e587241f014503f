package tlsauth

import (
	"context"
	"crypto/x509"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
)

// fakeAgent is a SPIFFE Workload API server holding one X509SVIDResponse,
// pushed again to every open stream whenever it is replaced.
type fakeAgent struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	mu      sync.Mutex
	cur     *workload.X509SVIDResponse
	changed chan struct{}
}

func (a *fakeAgent) set(r *workload.X509SVIDResponse) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cur = r
	if a.changed != nil {
		close(a.changed)
	}
	a.changed = make(chan struct{})
}

func (a *fakeAgent) FetchX509SVID(_ *workload.X509SVIDRequest, s grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	for {
		a.mu.Lock()
		cur, changed := a.cur, a.changed
		a.mu.Unlock()
		if err := s.Send(cur); err != nil {
			return err
		}
		select {
		case <-s.Context().Done():
			return nil
		case <-changed:
		}
	}
}

func svidResponse(t *testing.T, id string, leaf *tlstest.Leaf, ca *tlstest.CA, federated map[string]*tlstest.CA) *workload.X509SVIDResponse {
	t.Helper()
	key, err := x509.MarshalPKCS8PrivateKey(leaf.Key)
	if err != nil {
		t.Fatal(err)
	}
	r := &workload.X509SVIDResponse{
		Svids:            []*workload.X509SVID{{SpiffeId: id, X509Svid: leaf.Cert.Raw, X509SvidKey: key, Bundle: ca.Cert.Raw}},
		FederatedBundles: map[string][]byte{},
	}
	for td, fca := range federated {
		r.FederatedBundles[td] = fca.Cert.Raw
	}
	return r
}

// TestWorkloadAPI takes the server's SVID and the bundles, federated ones
// included, from a Workload API, and follows the SVID the agent pushes.
func TestWorkloadAPI(t *testing.T) {
	prodCA, partnerCA := tlstest.NewCA(t, "prod"), tlstest.NewCA(t, "partner")
	agent := &fakeAgent{}
	leaf := prodCA.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}})
	agent.set(svidResponse(t, serverID, leaf, prodCA, map[string]*tlstest.CA{"spiffe://partner.test": partnerCA}))
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(gs, agent)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-served }) // after the guard's cleanup: cleanups run last-in first-out

	e := &env{t: t, dir: t.TempDir(), ca: prodCA}
	e.start(&Config{
		WorkloadAPI: "unix://" + sock,
		Authorize:   Authorize{Destination: APIAccess{TrustDomains: []string{"prod.test", "partner.test"}}},
	})
	if got := e.servedSerial(); got.Cmp(leaf.Cert.SerialNumber) != 0 {
		t.Fatalf("serving %v, want the SVID %v", got, leaf.Cert.SerialNumber)
	}
	proxy := prodCA.Issue(t, tlstest.LeafOptions{ID: proxyID})
	st := e.get(e.conn(credentials.NewTLS(e.clientTLS(&proxy.TLS))), "web.demo:80")
	if _, err := st.next(); err != nil {
		t.Fatalf("own trust domain: %v", err)
	}
	partner := partnerCA.Issue(t, tlstest.LeafOptions{ID: "spiffe://partner.test/ns/web/sa/proxy"})
	if err := e.firstGet(credentials.NewTLS(e.clientTLS(&partner.TLS))); err != nil {
		t.Fatalf("federated trust domain: %v", err)
	}
	// A trust domain the agent has no bundle for fails the handshake,
	// whatever CA signed it.
	stranger := prodCA.Issue(t, tlstest.LeafOptions{ID: "spiffe://stranger.test/ns/web/sa/proxy"})
	wantCode(t, "no bundle", e.firstGet(credentials.NewTLS(e.clientTLS(&stranger.TLS))), codes.Unavailable)
	e.eventually("unknown trust domain counted", func() bool {
		return e.counter("tributary_tls_handshake_failures_total", map[string]string{"reason": "unknown_trust_domain"}) == 1
	})

	// The agent rotates the SVID: new connections get it, the stream stays.
	next := prodCA.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}})
	agent.set(svidResponse(t, serverID, next, prodCA, nil))
	e.waitServed(next.Cert.SerialNumber)
	e.apply("10.0.0.7:80")
	if u, err := st.next(); err != nil || u.GetAdd() == nil {
		t.Fatalf("stream after the SVID rotation: %v %v", u, err)
	}
	// The federated bundle was withdrawn with that update.
	e.eventually("the withdrawn federated bundle no longer admits partner.test", func() bool {
		return e.firstGet(credentials.NewTLS(e.clientTLS(&partner.TLS))) != nil
	})
}

func TestWorkloadAPIUnreachable(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the start-up wait is bounded by ctx: it is over at once
	_, err := New(ctx, Options{Config: &Config{WorkloadAPI: "unix://" + filepath.Join(t.TempDir(), "none.sock")}})
	if err == nil {
		t.Fatal("no agent, no error")
	}
}
