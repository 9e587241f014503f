package kubernetes

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
)

// stubTransport answers each request with the next scripted outcome.
type stubTransport struct {
	status int
	err    error
}

func (s *stubTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if s.err != nil {
		return nil, s.err
	}
	return &http.Response{StatusCode: s.status, Status: http.StatusText(s.status), Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
}

func TestReachabilityReportsFailuresAndRecovery(t *testing.T) {
	sink := newFakeSink()
	r := newReachability(sink, "https://10.0.0.1:6443")
	stub := &stubTransport{}
	rt := r.wrap(stub)
	do := func(path string, status int, err error) {
		t.Helper()
		stub.status, stub.err = status, err
		req, _ := http.NewRequest("GET", "https://10.0.0.1:6443"+path, nil)
		resp, _ := rt.RoundTrip(req)
		if resp != nil {
			resp.Body.Close()
		}
	}
	expect := func(want string) {
		t.Helper()
		select {
		case c := <-sink.Calls:
			got := c.Op
			if c.Err != nil {
				got += ": " + c.Err.Error()
			}
			if !strings.HasPrefix(got, want) {
				t.Fatalf("got %q, want %q…", got, want)
			}
		default:
			if want != "" {
				t.Fatalf("no call, want %q", want)
			}
		}
	}
	quiet := func() {
		t.Helper()
		select {
		case c := <-sink.Calls:
			t.Fatalf("unexpected %v", c)
		default:
		}
	}

	const pods = "/api/v1/namespaces/prod/pods"
	const slices = "/apis/discovery.k8s.io/v1/endpointslices"
	do(pods, 200, nil)
	quiet() // success while healthy says nothing
	do(pods+"?watch=true", 0, syscall.ECONNREFUSED)
	expect("failed: kubernetes API https://10.0.0.1:6443: watch pods in namespace prod: connection refused")
	do(slices, 403, nil)
	expect("failed: kubernetes API https://10.0.0.1:6443: list endpointslices: Forbidden")
	if err := r.failure(); err == nil {
		t.Fatal("failure() nil while failing")
	}
	do(pods, 200, nil)
	quiet()              // slices still fail: not healthy yet
	do(slices, 410, nil) // Gone (expired resource version) is an answer, not a failure
	expect("healthy")
	if err := r.failure(); err != nil {
		t.Fatalf("failure() = %v after recovery", err)
	}
	for _, code := range []int{429, 500, 503, 401} {
		do(pods, code, nil)
		expect("failed")
		do(pods, 200, nil)
		expect("healthy")
	}
	// A request we cancelled is not the server's fault.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	stub.err = context.Canceled
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://10.0.0.1:6443"+pods, nil)
	_, _ = rt.RoundTrip(req)
	quiet()
	stub.err = errors.New("tls: bad certificate")
	req, _ = http.NewRequest("GET", "https://10.0.0.1:6443"+pods, nil)
	_, _ = rt.RoundTrip(req)
	expect("failed: kubernetes API https://10.0.0.1:6443: list pods in namespace prod: tls: bad certificate")

	// After Run returns, nothing reaches the sink.
	r.stop()
	do(pods, 500, nil)
	do(pods, 200, nil)
	quiet()

	if w, ok := rt.(interface{ WrappedRoundTripper() http.RoundTripper }); !ok || w.WrappedRoundTripper() != stub {
		t.Error("the wrapper hides the transport underneath")
	}
}

func TestDescribeRequest(t *testing.T) {
	for path, want := range map[string]string{
		"/api/v1/services": "list services",
		"/api/v1/namespaces/prod/services?watch=true":                        "watch services in namespace prod",
		"/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices?watch=1":   "watch endpointslices in namespace prod",
		"/api/v1/nodes?allowWatchBookmarks=true&watch=true&resourceVersion=": "watch nodes",
	} {
		req, _ := http.NewRequest("GET", "https://k8s"+path, nil)
		if got := describeRequest(req); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
}
