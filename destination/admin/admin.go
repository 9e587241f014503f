// Package admin serves Tributary's admin HTTP endpoints: Prometheus
// metrics, liveness and readiness, a JSON dump of the registry with
// provenance and health, and a small status page.
package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination/served"
	"github.com/tributary-mesh/tributary/discovery"
)

// StatusFunc reports every source's status.
type StatusFunc func() []discovery.SourceStatus

// Options configures the admin handler.
type Options struct {
	Store    *cache.Store
	Status   StatusFunc
	Gatherer prometheus.Gatherer
	// Synced is closed when every source has synced (readiness).
	Synced <-chan struct{}
	// Version is shown on the status page.
	Version string
	// Pprof mounts /debug/pprof/ when true.
	Pprof bool
	// Federation is what the edges serve with; the API's explain view
	// runs it. nil: no rules, default priorities.
	Federation *discovery.Federation
	// Panicking lists the authorities in panic mode (a served.Tracker's
	// Panicking); nil: not tracked.
	Panicking func() []served.Panic
	// HealthCheck names the active health check (tcp, http, grpc) that
	// sets the health of a source's endpoints of authority a, "" when none
	// does (the source's own health stands). nil: none anywhere.
	HealthCheck func(source string, a discovery.Authority) string
	// Checks reads what the active checks found for an endpoint (the
	// health checker's CheckState); nil: not shown.
	Checks CheckReader
}

// CheckReader reads the active health checker's state of one endpoint:
// source's endpoint addr under authority a. ok is false when no check
// covers it.
type CheckReader interface {
	CheckState(source string, a discovery.Authority, addr netip.AddrPort) (discovery.CheckState, bool)
}

// Handler is the admin HTTP handler. SetDraining makes /readyz fail, which
// is the first step of a graceful shutdown.
type Handler struct {
	http.Handler
	opts     Options
	draining atomic.Bool
	// counts serves /api/v1/services?sort=endpoints.
	counts endpointCounts
}

// New builds the handler.
func New(opts Options) *Handler {
	if opts.Federation == nil {
		opts.Federation, _ = discovery.NewFederation(nil, nil)
	}
	h := &Handler{opts: opts}
	mux := http.NewServeMux()
	h.routeAPI(mux)
	h.routeUI(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("GET /debug/registry", h.registry)
	mux.HandleFunc("GET /debug/sources", h.sources)
	if opts.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	h.Handler = mux
	return h
}

// SetDraining marks the server as shutting down: /readyz answers 503.
func (h *Handler) SetDraining() { h.draining.Store(true) }

func (h *Handler) synced() bool {
	if h.opts.Synced == nil {
		return true
	}
	select {
	case <-h.opts.Synced:
		return true
	default:
		return false
	}
}

// readyz is 200 once every source has synced and until draining starts.
// The body lists each source so an operator sees which one holds it back;
// a stale source does not make the server unready (it still serves its last
// good state) but is named.
func (h *Handler) readyz(w http.ResponseWriter, _ *http.Request) {
	code, verdict := http.StatusOK, "ready"
	switch {
	case h.draining.Load():
		code, verdict = http.StatusServiceUnavailable, "draining"
	case !h.synced():
		code, verdict = http.StatusServiceUnavailable, "not ready: waiting for sources to sync"
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, verdict)
	for _, s := range h.status() {
		state := "synced"
		if !s.Synced {
			state = "not synced"
		}
		if s.Stale {
			state += ", stale: " + s.LastError
		}
		fmt.Fprintf(w, "source %s (%s): %s\n", s.Name, s.Kind, state)
	}
}

func (h *Handler) status() []discovery.SourceStatus {
	if h.opts.Status == nil {
		return nil
	}
	return h.opts.Status()
}

// EndpointJSON is one endpoint in /debug/registry.
type EndpointJSON struct {
	Address    string            `json:"address"`
	Weight     uint32            `json:"weight"`
	Zone       string            `json:"zone,omitempty"`
	Health     string            `json:"health"`
	Identity   string            `json:"identity,omitempty"`
	ServerName string            `json:"server_name,omitempty"`
	Protocol   string            `json:"protocol,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Source     string            `json:"source"`
	Key        string            `json:"key"`
	Stale      bool              `json:"stale,omitempty"`
}

// ServiceJSON is one service assertion in /debug/registry.
type ServiceJSON struct {
	Authority string         `json:"authority"`
	Source    string         `json:"source"`
	Key       string         `json:"key"`
	Opaque    bool           `json:"opaque,omitempty"`
	Endpoints []EndpointJSON `json:"endpoints"`
}

// RegistryJSON is the body of /debug/registry.
type RegistryJSON struct {
	Sources  []discovery.SourceStatus `json:"sources"`
	Services []ServiceJSON            `json:"services"`
}

// EndpointToJSON renders an endpoint as /debug/registry and `tributary
// watch --json` show it.
func EndpointToJSON(e *discovery.Endpoint, stale bool) EndpointJSON {
	return EndpointJSON{
		Address:    e.Addr.String(),
		Weight:     e.EffectiveWeight(),
		Zone:       e.Zone,
		Health:     e.Health.String(),
		Identity:   e.Identity.Name,
		ServerName: e.Identity.ServerName,
		Protocol:   e.Protocol.String(),
		Labels:     e.Labels,
		Source:     e.Source,
		Key:        e.Key,
		Stale:      stale,
	}
}

func (h *Handler) registry(w http.ResponseWriter, r *http.Request) {
	statuses := h.status()
	stale := map[string]bool{}
	for _, s := range statuses {
		stale[s.Name] = s.Stale
	}
	out := RegistryJSON{Sources: statuses, Services: []ServiceJSON{}}
	filter := r.URL.Query().Get("authority")
	for _, row := range h.opts.Store.Snapshot().Dump() {
		if filter != "" && row.Authority.String() != filter && row.Authority.Host != filter {
			continue
		}
		sj := ServiceJSON{Authority: row.Authority.String(), Source: row.Provider, Key: row.Key, Opaque: row.Opaque, Endpoints: []EndpointJSON{}}
		for _, e := range row.Endpoints {
			sj.Endpoints = append(sj.Endpoints, EndpointToJSON(e, stale[row.Provider]))
		}
		out.Services = append(out.Services, sj)
	}
	writeJSON(w, out)
}

func (h *Handler) sources(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, h.status())
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	writeJSONBody(w, v)
}

func writeJSONBody(w http.ResponseWriter, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
