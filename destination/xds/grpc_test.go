package xds

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"

	"github.com/tributary-mesh/tributary/destination/tlsauth/tlstest"
	"github.com/tributary-mesh/tributary/discovery"
)

// backend is a gRPC server with the health service on 127.0.0.1.
func backend(t *testing.T, opts ...grpc.ServerOption) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(g, health.NewServer())
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return ln.Addr().String()
}

// proxyless dials xds:///web.demo:8080 with grpc-go's xDS resolver and
// balancer, bootstrapped to h's server.
func (h *harness) proxyless(extra string, creds credentials.TransportCredentials) healthpb.HealthClient {
	h.t.Helper()
	boot := fmt.Sprintf(`{"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "client-1", "locality": {"zone": "zone-a"}}%s}`, h.addr, extra)
	r, err := xds.NewXDSResolverWithConfigForTesting([]byte(boot))
	if err != nil {
		h.t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///web.demo:8080", grpc.WithResolvers(r), grpc.WithTransportCredentials(creds))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// spread makes n calls and counts them by backend address.
func spread(t *testing.T, c healthpb.HealthClient, n int) (map[string]int, error) {
	t.Helper()
	seen := map[string]int{}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		var p peer.Peer
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			return seen, err
		}
		seen[p.Addr.String()]++
	}
	return seen, nil
}

func endpoints(addrs ...string) []discovery.Endpoint {
	var eps []discovery.Endpoint
	for _, a := range addrs {
		eps = append(eps, discovery.Endpoint{Addr: mustAddr(a), Zone: "zone-a"})
	}
	return eps
}

// TestProxylessGRPC: grpc-go's own xDS client (resolver, cluster manager,
// priority, round robin) spreads calls over every endpoint Tributary
// serves, and stops using one removed from the registry.
func TestProxylessGRPC(t *testing.T) {
	h := newHarness(t, Options{})
	b1, b2 := backend(t), backend(t)
	h.apply("file", group("web", "web.demo", 8080, endpoints(b1, b2)...))
	c := h.proxyless("", insecure.NewCredentials())
	seen, err := spread(t, c, 40)
	if err != nil || seen[b1] == 0 || seen[b2] == 0 {
		t.Fatalf("calls by backend %v, err %v: want both", seen, err)
	}
	h.apply("file", group("web", "web.demo", 8080, endpoints(b1)...))
	deadline := time.Now().Add(waitFor)
	for {
		seen, err := spread(t, c, 20)
		if err != nil {
			t.Fatal(err)
		}
		if seen[b2] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the removed backend still gets calls: %v", seen)
		}
	}
	for _, k := range kindNames {
		var m dto.Metric
		if err := h.srv.metrics.nacks.WithLabelValues(k).Write(&m); err != nil || m.GetCounter().GetValue() != 0 {
			t.Fatalf("NACKs of %s: %v (%v)", k, m.GetCounter().GetValue(), err)
		}
	}
}

// TestProxylessGRPCmTLS: with upstream_tls in certificate_provider mode,
// gRPC's xDS credentials present the client's certificate from its
// bootstrap's provider and accept a backend whose SPIFFE ID is of a
// configured trust domain — and no other.
func TestProxylessGRPCmTLS(t *testing.T) {
	ca := tlstest.NewCA(t, "xds test CA")
	dir := t.TempDir()
	cert, key, bundle := tlstest.WriteFiles(t, dir, ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/client"}), ca.PEM)
	server := ca.Issue(t, tlstest.LeafOptions{ID: "spiffe://prod.test/web"})
	b := backend(t, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{server.TLS}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
	})))
	providers := fmt.Sprintf(`, "certificate_providers": {"spire": {"plugin_name": "file_watcher", "config": {
		"certificate_file": %q, "private_key_file": %q, "ca_certificate_file": %q, "refresh_interval": "600s"}}}`, cert, key, bundle)
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		trustDomain string
		ok          bool
	}{{"prod.test", true}, {"other.test", false}} {
		set := &Settings{UpstreamTLS: &UpstreamTLSConfig{Mode: TLSModeCertificateProvider, TrustDomains: []string{tc.trustDomain}, Certificate: "spire", Validation: "spire"}}
		h := newHarness(t, Options{Settings: set})
		h.apply("file", group("web", "web.demo", 8080, endpoints(b)...))
		c := h.proxyless(providers, creds)
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		switch {
		case tc.ok && err != nil:
			t.Fatalf("trust domain %s: %v", tc.trustDomain, err)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), "SAN")):
			t.Fatalf("trust domain %s: err %v, want a SAN mismatch", tc.trustDomain, err)
		}
	}
}

// TestProxylessGRPCZonePreference: a gRPC client in zone-a uses only the
// zone-a endpoint while it is there (priority 0), and the other zone's
// once it is gone (priority 1 takes over).
func TestProxylessGRPCZonePreference(t *testing.T) {
	h := newHarness(t, Options{})
	local, remote := backend(t), backend(t)
	eps := []discovery.Endpoint{{Addr: mustAddr(local), Zone: "zone-a"}, {Addr: mustAddr(remote), Zone: "zone-b"}}
	h.apply("file", group("web", "web.demo", 8080, eps...))
	c := h.proxyless("", insecure.NewCredentials())
	seen, err := spread(t, c, 20)
	if err != nil || seen[local] != 20 {
		t.Fatalf("calls by backend %v, err %v: want all in zone-a", seen, err)
	}
	h.apply("file", group("web", "web.demo", 8080, eps[1]))
	deadline := time.Now().Add(waitFor)
	for {
		seen, err := spread(t, c, 10)
		if err != nil {
			t.Fatal(err)
		}
		if seen[remote] == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failover to zone-b: %v", seen)
		}
	}
}

// TestProxylessGRPCFailsOverToBackupTier: with federation failover tiers,
// the tier Tributary serves comes first and the next tier follows at a
// lower priority, so a gRPC client that cannot reach any endpoint of the
// served tier (here: registered passing, but nothing listens) fails over
// to the next tier by itself instead of failing its calls.
func TestProxylessGRPCFailsOverToBackupTier(t *testing.T) {
	h := newHarness(t, Options{Federation: eastThenWest(t)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	west := backend(t)
	h.apply("east", group("web", "web.demo", 8080, discovery.Endpoint{Addr: mustAddr(dead), Health: discovery.HealthPassing}))
	h.apply("west", group("web", "web.demo", 8080, discovery.Endpoint{Addr: mustAddr(west), Health: discovery.HealthPassing}))
	c := h.proxyless("", insecure.NewCredentials())
	deadline := time.Now().Add(waitFor)
	for {
		seen, err := spread(t, c, 10)
		if err == nil && seen[west] == 10 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls by backend %v, err %v: want every call on the west tier's backend", seen, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
