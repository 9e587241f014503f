package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// userAgent identifies the checks to the endpoints' servers.
const userAgent = "tributary-health-check"

// maxBody bounds what an HTTP check reads of a response body.
const maxBody = 64 << 10

// newHTTPClient returns the client of HTTP checks: a fresh connection per
// check (so a check also proves the endpoint accepts connections, and no
// idle connection is kept per endpoint), no proxy from the environment, no
// redirects followed (a 3xx is judged by expected_status).
func newHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            (&net.Dialer{}).DialContext,
			DisableKeepAlives:      true,
			DisableCompression:     true,
			MaxResponseHeaderBytes: maxBody,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// realProbe runs hc against addr.
func (c *Checker) realProbe(ctx context.Context, hc *Check, addr netip.AddrPort) error {
	switch hc.Type {
	case CheckTCP:
		return probeTCP(ctx, addr)
	case CheckHTTP:
		return c.probeHTTP(ctx, hc, addr)
	case CheckGRPC:
		return probeGRPC(ctx, hc, addr)
	}
	return fmt.Errorf("unknown check type %q", hc.Type)
}

func probeTCP(ctx context.Context, addr netip.AddrPort) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	return conn.Close()
}

func (c *Checker) probeHTTP(ctx context.Context, hc *Check, addr netip.AddrPort) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+hc.Path, nil)
	if err != nil {
		return err
	}
	if hc.Host != "" {
		req.Host = hc.Host
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	resp.Body.Close()
	if !hc.StatusOK(resp.StatusCode) {
		return errors.New("HTTP status " + strconv.Itoa(resp.StatusCode))
	}
	return nil
}

func probeGRPC(ctx context.Context, hc *Check, addr netip.AddrPort) error {
	conn, err := grpc.NewClient("passthrough:///"+addr.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent(userAgent),
		grpc.WithDisableRetry(),
	)
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: hc.Service})
	if err != nil {
		return err
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return errors.New("gRPC health status " + s.String())
	}
	return nil
}
