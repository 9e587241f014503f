package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/tributary-mesh/tributary/discovery"
)

// reachability tracks whether the API server answers the informers'
// requests, and tells the sink.
//
// client-go's reflectors retry a refused watch inside their own backoff
// loop without calling the watch error handler, so that handler alone
// cannot see an API server that is down. Every request goes through
// observe instead: a request that fails (no connection, 401/403, 429, 5xx)
// marks its resource path failing and calls sink.Failed; the next
// successful request on that path clears it; when no path is failing any
// more the sink hears Healthy. The informers keep their caches meanwhile,
// so the last state stays served, marked stale.
type reachability struct {
	sink discovery.Sink
	host string

	mu      sync.Mutex
	failing map[string]error // by request path
	stopped bool             // Run returned: the sink must not be called
}

// stop makes every later observation a no-op. client-go may finish a list
// request after its reflector has returned; the sink must not hear of it.
func (r *reachability) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

func newReachability(sink discovery.Sink, host string) *reachability {
	return &reachability{sink: sink, host: host, failing: map[string]error{}}
}

// failure returns one of the current failures, nil when none.
func (r *reachability) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failing) == 0 {
		return nil
	}
	paths := make([]string, 0, len(r.failing))
	for p := range r.failing {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return r.failing[paths[0]]
}

// ok and fail call the sink under mu, so that none of their calls can
// come after stop returns.

func (r *reachability) ok(path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, was := r.failing[path]
	delete(r.failing, path)
	if was && len(r.failing) == 0 && !r.stopped {
		r.sink.Healthy()
	}
}

func (r *reachability) fail(path string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failing[path] = err
	if !r.stopped {
		r.sink.Failed(err)
	}
}

// wrap returns a RoundTripper that reports each request's outcome.
func (r *reachability) wrap(rt http.RoundTripper) http.RoundTripper {
	return &observingTransport{rt: rt, r: r}
}

type observingTransport struct {
	rt http.RoundTripper
	r  *reachability
}

func (t *observingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	t.r.observe(req, resp, err)
	return resp, err
}

// WrappedRoundTripper lets client-go reach the transport underneath (to
// close idle connections).
func (t *observingTransport) WrappedRoundTripper() http.RoundTripper { return t.rt }

func (r *reachability) observe(req *http.Request, resp *http.Response, err error) {
	path := req.URL.Path
	what := describeRequest(req)
	switch {
	case err != nil:
		if errors.Is(err, context.Canceled) || req.Context().Err() != nil {
			return // we stopped the request: not the server's fault
		}
		r.fail(path, fmt.Errorf("kubernetes API %s: %s: %w", r.host, what, err))
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden ||
		resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		r.fail(path, fmt.Errorf("kubernetes API %s: %s: %s", r.host, what, resp.Status))
	default:
		r.ok(path)
	}
}

// describeRequest says "watch pods in namespace prod" for an informer request.
func describeRequest(req *http.Request) string {
	verb := "list"
	if req.URL.Query().Get("watch") == "true" || req.URL.Query().Get("watch") == "1" {
		verb = "watch"
	}
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	resource := parts[len(parts)-1]
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] == "namespaces" && i+2 < len(parts) {
			return verb + " " + resource + " in namespace " + parts[i+1]
		}
	}
	return verb + " " + resource
}
