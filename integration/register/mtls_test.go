//go:build integration

package register

import (
	"context"
	"crypto/tls"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
	"github.com/tributary-mesh/tributary/integration/harness"
	rpb "github.com/tributary-mesh/tributary/proto/tributary/registration/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

func durationpbOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

const (
	serverID  = "spiffe://prod.test/ns/tributary/sa/tributary"
	serverDNS = "tributary.prod.test"
	webID     = "spiffe://prod.test/vm/web"
)

// TestRegisterMTLS runs the binary with server.tls: the registration
// access list, then the source's rules — a caller registers only its own
// identity, under the authorities its rule allows — and tributary
// register and registrations with a client certificate.
func TestRegisterMTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "prod CA")
	tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{ID: serverID, DNS: []string{serverDNS}}), ca.PEM)
	s := harness.StartWith(t, dir, `  tls:
    cert_file: tls.crt
    key_file: tls.key
    ca_file: ca.crt
    authorize:
      registration: {ids: ["spiffe://prod.test/vm/*"]}
`, `sources:
  - name: vms
    kind: register
    allow:
      - ids: ["spiffe://prod.test/vm/*"]
        authorities: ["*.vm.test:*"]
`)
	creds := func(id string) credentials.TransportCredentials {
		return credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: serverDNS,
			Certificates: []tls.Certificate{ca.Issue(t, tlstest.LeafOptions{ID: id}).TLS}})
	}
	dial := func(c credentials.TransportCredentials) *grpc.ClientConn {
		conn, err := grpc.NewClient(s.API, grpc.WithTransportCredentials(c))
		must(t, err)
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	webConn := dial(creds(webID))
	web := rpb.NewRegistrationClient(webConn)
	ctx := context.Background()

	st := harness.Open(t, pb.NewDestinationClient(webConn), "web.vm.test:8080", "")
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
	own := &rpb.RegisterRequest{Endpoint: &rpb.Endpoint{Authority: "web.vm.test:8080", Address: "127.0.0.1", Port: 18100,
		Identity: webID, ServerName: "web.vm.test"}, Ttl: durationpbOf(10 * time.Second)}
	if _, err := web.Register(ctx, own); err != nil {
		t.Fatal(err)
	}
	if got := st.Next(); got != "add:127.0.0.1:18100" {
		t.Fatal(got)
	}

	for _, tc := range []struct {
		name   string
		client rpb.RegistrationClient
		req    *rpb.RegisterRequest
		code   codes.Code
		msg    string
	}{
		{"another identity", web, &rpb.RegisterRequest{Endpoint: &rpb.Endpoint{Authority: "web.vm.test:8080", Address: "127.0.0.2", Port: 1,
			Identity: "spiffe://prod.test/vm/db", ServerName: "db.vm.test"}, Ttl: durationpbOf(10 * time.Second)},
			codes.PermissionDenied, "only its own"},
		{"an authority not allowed", web, &rpb.RegisterRequest{Endpoint: &rpb.Endpoint{Authority: "api.prod.test:80", Address: "127.0.0.2", Port: 1},
			Ttl: durationpbOf(10 * time.Second)}, codes.PermissionDenied, "may not register under api.prod.test:80"},
		{"not on the access list", rpb.NewRegistrationClient(dial(creds("spiffe://prod.test/batch/x"))), own,
			codes.PermissionDenied, "is not allowed to call the registration API"},
		{"plaintext", rpb.NewRegistrationClient(dial(insecure.NewCredentials())), own, codes.Unavailable, ""},
	} {
		_, err := tc.client.Register(ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v; want %v %q", tc.name, err, tc.code, tc.msg)
		}
	}

	// The command with a client certificate.
	cdir := t.TempDir()
	cert, key, caFile := tlstest.WriteFiles(t, cdir, ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/vm/api"}), ca.PEM)
	tlsFlags := []string{"--addr", s.API, "--cert", cert, "--key", key, "--ca", caFile, "--tls-server-name", serverDNS}
	out := &harness.SyncBuffer{}
	cmd := exec.Command(harness.Bin, append([]string{"register", "--authority", "api.vm.test:9000", "--address", "127.0.0.1:18101",
		"--identity", "spiffe://prod.test/vm/api", "--server-name", "api.vm.test", "--ttl", "5s"}, tlsFlags...)...)
	cmd.Stdout, cmd.Stderr = out, out
	must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("register output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(harness.WaitFor)
	for !strings.Contains(out.String(), "registered api.vm.test:9000") {
		if time.Now().After(deadline) {
			t.Fatalf("not registered:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	list, err := exec.Command(harness.Bin, append([]string{"registrations"}, tlsFlags...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("registrations: %v\n%s", err, list)
	}
	for _, want := range []string{"api.vm.test:9000", "127.0.0.1:18101", "web.vm.test:8080", "# 2 registrations"} {
		if !strings.Contains(string(list), want) {
			t.Fatalf("registrations lacks %q:\n%s", want, list)
		}
	}
	must(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		exited <- err
		must(t, err)
	case <-time.After(harness.WaitFor):
		t.Fatal("register did not exit on SIGTERM")
	}
	if !strings.Contains(out.String(), "deregistered") {
		t.Fatalf("output:\n%s", out.String())
	}
}
