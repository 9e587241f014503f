package registration

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
	"github.com/tributary-mesh/tributary/discovery"
	pb "github.com/tributary-mesh/tributary/proto/tributary/registration/v1"
	"github.com/tributary-mesh/tributary/sources/register"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs the API over a memory register source with cfg on a
// loopback port, with creds (nil: plain text), and returns a client.
func serve(t *testing.T, cfg register.Config, server credentials.TransportCredentials, client credentials.TransportCredentials) (pb.RegistrationClient, string) {
	t.Helper()
	src, err := register.NewSource(cfg, discovery.BuildContext{Name: "vms"})
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if server != nil {
		opts = append(opts, grpc.Creds(server))
	}
	g := grpc.NewServer(opts...)
	New(src, nil).Attach(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(ln) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return dial(t, ln.Addr().String(), client), ln.Addr().String()
}

// dial is a client of addr with creds (nil: plain text).
func dial(t *testing.T, addr string, creds credentials.TransportCredentials) pb.RegistrationClient {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewRegistrationClient(conn)
}

func loopback() register.Config {
	return register.Config{InsecureNetworks: []string{"127.0.0.0/8", "::1"}}
}

func req(auth, addr string, port uint32, ttl time.Duration) *pb.RegisterRequest {
	return &pb.RegisterRequest{Endpoint: &pb.Endpoint{Authority: auth, Address: addr, Port: port}, Ttl: durationpb.New(ttl)}
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("got %v, want %v saying %q", err, code, msg)
	}
}

func TestOffWithoutMTLS(t *testing.T) {
	c, _ := serve(t, register.Config{}, nil, nil)
	_, err := c.Register(context.Background(), req("web.vm:8080", "10.0.0.1", 8080, 10*time.Second))
	wantCode(t, err, codes.PermissionDenied, "off without mTLS")
	_, err = c.List(context.Background(), &pb.ListRequest{})
	wantCode(t, err, codes.PermissionDenied, "insecure_networks")
}

func TestLifecycle(t *testing.T) {
	c, _ := serve(t, loopback(), nil, nil)
	ctx := context.Background()
	r := req("web.vm:8080", "10.0.0.1", 8080, 10*time.Second)
	r.Endpoint.Labels = map[string]string{"rack": "r1"}
	r.Endpoint.Identity, r.Endpoint.ServerName, r.Endpoint.Protocol = "spiffe://ex.org/vm/web", "web.vm", pb.Protocol_PROTOCOL_H2
	resp, err := c.Register(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetLeaseId() == "" || resp.GetTtl().AsDuration() != 10*time.Second {
		t.Fatalf("register: %v", resp)
	}
	ls, err := c.List(ctx, &pb.ListRequest{Authority: "web.vm:8080"})
	if err != nil || len(ls.GetLeases()) != 1 {
		t.Fatalf("list: %v %v", ls, err)
	}
	got := ls.GetLeases()[0]
	if got.GetEndpoint().GetLabels()["rack"] != "r1" || got.GetEndpoint().GetProtocol() != pb.Protocol_PROTOCOL_H2 ||
		got.GetEndpoint().GetIdentity() != "spiffe://ex.org/vm/web" || got.GetRegisteredBy() != "127.0.0.1" {
		t.Fatalf("listed %v", got)
	}
	if ls, _ := c.List(ctx, &pb.ListRequest{Authority: "api.vm:8080"}); len(ls.GetLeases()) != 0 {
		t.Fatalf("list of another authority: %v", ls)
	}

	ka, err := c.KeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{resp.GetLeaseId(), "nope"} {
		if err := ka.Send(&pb.KeepAliveRequest{LeaseId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if a, err := ka.Recv(); err != nil || a.GetUnknown() || a.GetTtl().AsDuration() != 10*time.Second {
		t.Fatalf("keepalive: %v %v", a, err)
	}
	if a, err := ka.Recv(); err != nil || !a.GetUnknown() || a.GetLeaseId() != "nope" {
		t.Fatalf("keepalive of an unknown lease: %v %v", a, err)
	}
	if err := ka.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := ka.Recv(); err == nil {
		t.Fatal("the keepalive stream did not end")
	}

	if _, err := c.Deregister(ctx, &pb.DeregisterRequest{LeaseId: resp.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Deregister(ctx, &pb.DeregisterRequest{LeaseId: resp.GetLeaseId()})
	wantCode(t, err, codes.NotFound, "unknown or expired lease")
}

func TestInvalid(t *testing.T) {
	c, _ := serve(t, loopback(), nil, nil)
	labels := map[string]string{}
	for i := range register.MaxLabels + 1 {
		labels["k"+strings.Repeat("x", i)] = "v"
	}
	for _, tc := range []struct {
		name string
		edit func(*pb.RegisterRequest)
		msg  string
	}{
		{"no endpoint", func(r *pb.RegisterRequest) { r.Endpoint = nil }, "endpoint is required"},
		{"no authority", func(r *pb.RegisterRequest) { r.Endpoint.Authority = "" }, "endpoint.authority is required"},
		{"bad authority", func(r *pb.RegisterRequest) { r.Endpoint.Authority = "web vm:80" }, "endpoint.authority"},
		{"authority without port", func(r *pb.RegisterRequest) { r.Endpoint.Authority = "web.vm" }, "a port is required"},
		{"bad address", func(r *pb.RegisterRequest) { r.Endpoint.Address = "web-1" }, "not an IP address"},
		{"port 0", func(r *pb.RegisterRequest) { r.Endpoint.Port = 0 }, "endpoint.port 0"},
		{"port too big", func(r *pb.RegisterRequest) { r.Endpoint.Port = 70000 }, "endpoint.port 70000"},
		{"no ttl", func(r *pb.RegisterRequest) { r.Ttl = nil }, "ttl is required"},
		{"ttl too long", func(r *pb.RegisterRequest) { r.Ttl = durationpb.New(time.Hour) }, "out of range"},
		{"ttl too short", func(r *pb.RegisterRequest) { r.Ttl = durationpb.New(time.Millisecond) }, "out of range"},
		{"too many labels", func(r *pb.RegisterRequest) { r.Endpoint.Labels = labels }, "at most 32"},
		{"long label", func(r *pb.RegisterRequest) { r.Endpoint.Labels = map[string]string{"a": strings.Repeat("v", 300)} }, "value longer"},
		{"spiffe without server name", func(r *pb.RegisterRequest) { r.Endpoint.Identity = "spiffe://ex.org/x" }, "server_name"},
		{"bad protocol", func(r *pb.RegisterRequest) { r.Endpoint.Protocol = 9 }, "endpoint.protocol"},
	} {
		r := req("web.vm:8080", "10.0.0.1", 8080, 10*time.Second)
		tc.edit(r)
		_, err := c.Register(context.Background(), r)
		st, _ := status.FromError(err)
		if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.msg) {
			t.Errorf("%s: %v, want InvalidArgument saying %q", tc.name, err, tc.msg)
		}
	}
}

func TestMTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "test")
	srv := ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://ex.org/tributary", DNS: []string{"localhost"}})
	web := ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://ex.org/vm/web"})
	serverCreds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srv.TLS}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert})
	clientCreds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{web.TLS}, RootCAs: ca.Pool(), ServerName: "localhost"})
	cfg := register.Config{Allow: []register.AllowConfig{{IDs: []string{"spiffe://ex.org/vm/*"}, Authorities: []string{"*.vm.internal:*"}}}}
	c, addr := serve(t, cfg, serverCreds, clientCreds)
	ctx := context.Background()

	own := req("web.vm.internal:8080", "10.0.0.1", 8080, 10*time.Second)
	own.Endpoint.Identity, own.Endpoint.ServerName = "spiffe://ex.org/vm/web", "web.vm.internal"
	lease, err := c.Register(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := c.List(ctx, &pb.ListRequest{})
	if err != nil || len(ls.GetLeases()) != 1 || ls.GetLeases()[0].GetRegisteredBy() != "spiffe://ex.org/vm/web" {
		t.Fatalf("list: %v %v", ls, err)
	}

	other := req("web.vm.internal:8080", "10.0.0.2", 8080, 10*time.Second)
	other.Endpoint.Identity, other.Endpoint.ServerName = "spiffe://ex.org/vm/db", "db.vm.internal"
	_, err = c.Register(ctx, other)
	wantCode(t, err, codes.PermissionDenied, "only its own")

	elsewhere := req("web.prod.internal:8080", "10.0.0.1", 8080, 10*time.Second)
	_, err = c.Register(ctx, elsewhere)
	wantCode(t, err, codes.PermissionDenied, "may not register under web.prod.internal:8080")

	// Another workload can neither renew nor end web's lease.
	db := ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://ex.org/vm/db"})
	dbc := dial(t, addr, credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{db.TLS}, RootCAs: ca.Pool(), ServerName: "localhost"}))
	_, err = dbc.Register(ctx, req("web.vm.internal:8080", "10.0.0.1", 8080, 10*time.Second))
	wantCode(t, err, codes.PermissionDenied, "registered by another caller (spiffe://ex.org/vm/web)")
	_, err = dbc.Deregister(ctx, &pb.DeregisterRequest{LeaseId: lease.GetLeaseId()})
	wantCode(t, err, codes.PermissionDenied, "was registered by spiffe://ex.org/vm/web")
	ka, err := dbc.KeepAlive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ka.Send(&pb.KeepAliveRequest{LeaseId: lease.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	_, err = ka.Recv()
	wantCode(t, err, codes.PermissionDenied, "not spiffe://ex.org/vm/db")
	// The owner can.
	if _, err := c.Deregister(ctx, &pb.DeregisterRequest{LeaseId: lease.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
}
