// Package admin serves Tributary's admin HTTP endpoints: Prometheus
// metrics, liveness and readiness, a JSON dump of the registry with
// provenance and health, and a small status page.
package admin

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tributary-mesh/tributary/cache"
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
}

// Handler is the admin HTTP handler. SetDraining makes /readyz fail, which
// is the first step of a graceful shutdown.
type Handler struct {
	http.Handler
	opts     Options
	draining atomic.Bool
}

// New builds the handler.
func New(opts Options) *Handler {
	h := &Handler{opts: opts}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("GET /debug/registry", h.registry)
	mux.HandleFunc("GET /debug/sources", h.sources)
	mux.HandleFunc("GET /{$}", h.index)
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
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Tributary</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.bad{color:#b00}</style>
</head><body>
<h1>Tributary {{.Version}}</h1>
<p>{{if .Ready}}Ready{{else}}<span class="bad">Not ready</span>{{end}} ·
<a href="/metrics">metrics</a> · <a href="/debug/registry">registry (JSON)</a> · <a href="/debug/sources">sources (JSON)</a> · <a href="/readyz">readyz</a></p>
<h2>Sources</h2>
<table><tr><th>name</th><th>kind</th><th>synced</th><th>stale</th><th>keys</th><th>services</th><th>endpoints</th><th>last error</th></tr>
{{range .Sources}}<tr><td>{{.Name}}</td><td>{{.Kind}}</td><td>{{.Synced}}</td><td{{if .Stale}} class="bad"{{end}}>{{.Stale}}</td><td>{{.Keys}}</td><td>{{.Services}}</td><td>{{.Endpoints}}</td><td>{{.LastError}}</td></tr>
{{end}}</table>
</body></html>`))

type sourceRow struct {
	discovery.SourceStatus
	cache.ProviderStats
}

func (h *Handler) index(w http.ResponseWriter, _ *http.Request) {
	stats := h.opts.Store.Snapshot().Providers()
	var rows []sourceRow
	for _, s := range h.status() {
		rows = append(rows, sourceRow{s, stats[s.Name]})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = indexTmpl.Execute(w, map[string]any{
		"Version": h.opts.Version,
		"Ready":   h.synced() && !h.draining.Load(),
		"Sources": rows,
	})
}
