//go:build integration

// Package security runs the real tributary binary with mTLS and
// authorization (server.tls) and under HTTP/2 keepalive abuse: ping floods
// and half-open connections (fault matrix item 8).
package security

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

const waitFor = harness.WaitFor

// serverKeys are extra keys of the server: section. harness.Start writes
// "server:" with listen, admin and shutdown_timeout and then our text, so
// lines indented by two spaces continue that section.
func serverKeys(lines ...string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// fileSource is a file source reading services.yaml in the config's folder.
const fileSource = "sources:\n  - name: local\n    kind: file\n    paths: [services.yaml]\n"

// writeServices writes services.yaml with web.demo:8080 served by addrs.
func writeServices(t *testing.T, dir string, addrs ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("services:\n  - name: web.demo\n    port: 8080\n    endpoints:\n")
	for _, a := range addrs {
		fmt.Fprintf(&b, "      - address: %q\n", a)
	}
	harness.WriteAtomic(t, filepath.Join(dir, "services.yaml"), b.String())
}

// stream is one Get stream over a connection of our own (TLS or not).
type stream struct {
	t       *testing.T
	updates chan *pb.Update
	errc    chan error
}

func openGet(t *testing.T, addr string, creds credentials.TransportCredentials, path string) *stream {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st := &stream{t: t, updates: make(chan *pb.Update, 10), errc: make(chan error, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := pb.NewDestinationClient(cc).Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: path})
		if err != nil {
			st.errc <- err
			return
		}
		for {
			u, err := c.Recv()
			if err != nil {
				st.errc <- err
				return
			}
			st.updates <- u
		}
	}()
	t.Cleanup(func() { cancel(); <-done; cc.Close() })
	return st
}

// next is the next update in harness.Describe's form, or "error: <err>"
// when the stream ended.
func (st *stream) next() (string, error) {
	st.t.Helper()
	select {
	case u := <-st.updates:
		return harness.Describe(u), nil
	case err := <-st.errc:
		st.errc <- err
		return "", err
	case <-time.After(waitFor):
		st.t.Fatal("no update")
	}
	return "", nil
}

// metric reads one sample from /metrics, 0 when absent.
func metric(t *testing.T, s *harness.Server, name, labels string) float64 {
	t.Helper()
	_, body := s.HTTPGet("/metrics")
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+labels) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// eventually waits (bounded) for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servedSerial dials addr and returns the serial of the certificate served.
func servedSerial(t *testing.T, addr string) *big.Int {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // looks at what is served only
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// httpsGet fetches url with the client config and returns the status (0
// when the request failed).
func httpsGet(t *testing.T, cfg *tls.Config, url string) int {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: waitFor}).Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
