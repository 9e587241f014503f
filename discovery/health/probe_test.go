package health

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func probeOnce(t *testing.T, hc *Check, addr netip.AddrPort) error {
	t.Helper()
	c := New(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.realProbe(ctx, hc, addr)
}

func addrOf(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func TestProbeTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := addrOf(t, ln.Addr())
	hc := check(nil)
	if err := probeOnce(t, hc, addr); err != nil {
		t.Fatalf("listening: %v", err)
	}
	ln.Close()
	if err := probeOnce(t, hc, addr); err == nil {
		t.Fatal("closed port passed")
	}
}

func TestProbeHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") != userAgent {
			w.WriteHeader(400)
			return
		}
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte(strings.Repeat("x", 1<<20))) // a long body is cut short
		case "/host":
			if r.Host != "web.internal" {
				w.WriteHeader(421)
			}
		case "/moved":
			http.Redirect(w, r, "/fail", http.StatusFound)
		case "/teapot":
			w.WriteHeader(418)
		default:
			w.WriteHeader(500)
		}
	}))
	defer srv.Close()
	addr := addrOf(t, srv.Listener.Addr())
	hcHTTP := func(path, host, expect string) *Check {
		return check(func(hc *Check) {
			hc.Type, hc.Path, hc.Host = CheckHTTP, path, host
			if expect != "" {
				hc.ExpectedStatus = []StatusRange{{Min: 418, Max: 418}}
			}
		})
	}
	for _, tc := range []struct {
		hc   *Check
		pass bool
	}{
		{hcHTTP("/ok", "", ""), true},
		{hcHTTP("/fail", "", ""), false},
		{hcHTTP("/host", "web.internal", ""), true},
		{hcHTTP("/host", "", ""), false},
		{hcHTTP("/moved", "", ""), true}, // 302 is in 200-399; not followed
		{hcHTTP("/teapot", "", ""), false},
		{hcHTTP("/teapot", "", "418"), true},
		{hcHTTP("/ok", "", "418"), false},
	} {
		err := probeOnce(t, tc.hc, addr)
		if (err == nil) != tc.pass {
			t.Errorf("%s host %q expect %v: %v", tc.hc.Path, tc.hc.Host, tc.hc.ExpectedStatus, err)
		}
	}
	srv.Close()
	if err := probeOnce(t, hcHTTP("/ok", "", ""), addr); err == nil {
		t.Error("a stopped server passed")
	}
}

func TestProbeGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := addrOf(t, ln.Addr())
	srv := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("demo.Echo", healthpb.HealthCheckResponse_SERVING)
	go srv.Serve(ln)
	defer srv.Stop()
	g := func(service string) *Check {
		return check(func(hc *Check) { hc.Type, hc.Service = CheckGRPC, service })
	}
	if err := probeOnce(t, g(""), addr); err != nil {
		t.Fatalf("overall: %v", err)
	}
	if err := probeOnce(t, g("demo.Echo"), addr); err != nil {
		t.Fatalf("service: %v", err)
	}
	if err := probeOnce(t, g("nope"), addr); err == nil {
		t.Fatal("an unknown service passed")
	}
	hs.SetServingStatus("demo.Echo", healthpb.HealthCheckResponse_NOT_SERVING)
	if err := probeOnce(t, g("demo.Echo"), addr); err == nil || !strings.Contains(err.Error(), "NOT_SERVING") {
		t.Fatalf("NOT_SERVING: %v", err)
	}
	srv.Stop()
	if err := probeOnce(t, g(""), addr); err == nil {
		t.Fatal("a stopped server passed")
	}
}
