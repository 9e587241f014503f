package admin

import (
	"bytes"
	"cmp"
	"container/heap"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// The JSON API under /api/v1/, which the status page and the CLI
// (`tributary status`, `tributary explain`) read. Version 1 is a contract:
// fields are added, never renamed or removed; a change that would break a
// reader gets /api/v2/. docs/status-page.md documents every field.

// APIVersion is the version of the JSON API's paths.
const APIVersion = "v1"

// Source states in SourceAPI.State.
const (
	StateSynced  = "synced"  // synced, last contact succeeded
	StateSyncing = "syncing" // not synced yet, no error so far
	StateFailing = "failing" // not synced yet, and its backend fails
	StateStale   = "stale"   // synced, but the last contact failed: last good state served
	StateExpired = "expired" // stale for longer than stale_after: its endpoints are withdrawn
)

// SourceAPI is one source in /api/v1/sources.
type SourceAPI struct {
	Name          string    `json:"name"`
	Kind          string    `json:"kind"`
	State         string    `json:"state"`
	Synced        bool      `json:"synced"`
	Stale         bool      `json:"stale"`
	Expired       bool      `json:"expired"`
	LastSuccess   time.Time `json:"last_success,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	Errors        uint64    `json:"errors"`
	Applies       uint64    `json:"applies"`
	Rejected      uint64    `json:"rejected"`
	// HeldWithdrawal: the deletion guard holds an update that would
	// withdraw HeldEndpoints endpoints.
	HeldWithdrawal bool `json:"held_withdrawal"`
	HeldEndpoints  int  `json:"held_endpoints,omitempty"`
	Keys           int  `json:"keys"`
	Services       int  `json:"services"`
	Endpoints      int  `json:"endpoints"`
}

// PanicAPI is an authority in panic mode.
type PanicAPI struct {
	Authority string    `json:"authority"`
	Since     time.Time `json:"since"`
	Serving   int       `json:"serving"`
	Addresses int       `json:"addresses"`
}

// SourcesAPI is the body of /api/v1/sources.
type SourcesAPI struct {
	Version string      `json:"version"`
	Ready   bool        `json:"ready"`
	Time    time.Time   `json:"time"`
	Sources []SourceAPI `json:"sources"`
	// Panicking lists the authorities in panic mode, at most maxPanicking
	// of them (nil when the server does not track them); PanickingTotal
	// counts them all.
	Panicking      []PanicAPI `json:"panicking"`
	PanickingTotal int        `json:"panicking_total"`
}

// maxPanicking bounds /api/v1/sources' list of authorities in panic mode,
// which the page polls: in a wide outage it could name every service.
const maxPanicking = 100

// ServiceSummary is one authority in /api/v1/services.
type ServiceSummary struct {
	Authority string `json:"authority"`
	// Sources that assert the authority, sorted.
	Sources   []string       `json:"sources"`
	Endpoints int            `json:"endpoints"`
	Served    int            `json:"served"`
	Panic     bool           `json:"panic"`
	ByHealth  map[string]int `json:"by_health"`
	BySource  map[string]int `json:"by_source"`
}

// ServicesAPI is the body of /api/v1/services.
type ServicesAPI struct {
	Query    string           `json:"q"`
	Sort     string           `json:"sort"`
	Offset   int              `json:"offset"`
	Limit    int              `json:"limit"`
	Total    int              `json:"total"`
	Services []ServiceSummary `json:"services"`
}

// EndpointAPI is one endpoint the registry holds for a service, with what
// the federation does with it for the client zone asked about.
type EndpointAPI struct {
	Address  string   `json:"address"`
	Zone     string   `json:"zone,omitempty"`
	ForZones []string `json:"for_zones,omitempty"`
	Health   string   `json:"health"`
	// HealthFrom says what set the health: "source" (the source reports
	// it) or "check:tcp", "check:http", "check:grpc" (Tributary's active
	// check, combined with the source's own).
	HealthFrom string            `json:"health_from"`
	Weight     uint32            `json:"weight"`
	Identity   string            `json:"identity,omitempty"`
	ServerName string            `json:"server_name,omitempty"`
	Protocol   string            `json:"protocol,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Source     string            `json:"source"`
	Key        string            `json:"key"`
	// Stale: the endpoint's source is stale (its last good state is
	// served).
	Stale bool `json:"stale"`
	// Served says whether a client in the zone receives it; Reason is the
	// federation step that decided (discovery.Reason) and Why a sentence.
	Served bool   `json:"served"`
	Reason string `json:"reason"`
	Why    string `json:"why"`
	// WinnerSource and WinnerKey name the endpoint served for the address
	// instead, with reason "duplicate".
	WinnerSource string `json:"winner_source,omitempty"`
	WinnerKey    string `json:"winner_key,omitempty"`
	// Check is what the endpoint's active health check found, when one
	// covers it (added in v1: absent otherwise).
	Check *CheckAPI `json:"check,omitempty"`
}

// CheckAPI is an endpoint's active health check: its own verdict (before
// it is combined with the source's health) and its last failure.
type CheckAPI struct {
	Type string `json:"type"`
	// Target is the address probed (the endpoint's, or the check's port).
	Target  string `json:"target"`
	Verdict string `json:"verdict"`
	// LastCheck is when the last check ended (absent: none yet).
	LastCheck time.Time `json:"last_check,omitzero"`
	// LastError is the last failed check's error and LastErrorTime when
	// it ended; they stay after the checks pass again.
	LastError            string    `json:"last_error,omitempty"`
	LastErrorTime        time.Time `json:"last_error_time,omitzero"`
	ConsecutiveFailures  int       `json:"consecutive_failures"`
	ConsecutiveSuccesses int       `json:"consecutive_successes"`
	// HeldDownUntil: a flapping endpoint is kept out until then.
	HeldDownUntil time.Time `json:"held_down_until,omitzero"`
}

// TierAPI is a failover tier of a federation rule.
type TierAPI struct {
	Sources    []string `json:"sources"`
	MinHealthy int      `json:"min_healthy"`
}

// ServiceAPI is the body of /api/v1/services/{authority}: the explain view.
type ServiceAPI struct {
	Authority string `json:"authority"`
	Exists    bool   `json:"exists"`
	Opaque    bool   `json:"opaque"`
	// Members are the authorities whose endpoints serve it: itself, then
	// its federation rule's aliases.
	Members []string `json:"members"`
	// Zone is the client zone explained ("": a client without one); Zones
	// every zone the endpoints name or are hinted for, to choose from.
	Zone  string   `json:"zone"`
	Zones []string `json:"zones"`
	// Tiers of the federation rule, and the index of the one chosen (-1:
	// none; len(tiers): the sources no tier names).
	Tiers            []TierAPI `json:"tiers,omitempty"`
	Tier             int       `json:"tier"`
	PanicThreshold   float64   `json:"panic_threshold"`
	Panic            bool      `json:"panic"`
	Addresses        int       `json:"addresses"`
	ServingAddresses int       `json:"serving_addresses"`
	ZoneHints        bool      `json:"zone_hints"`
	// Served counts what the client receives; Endpoints lists every
	// endpoint the registry holds, served or not.
	Served    int           `json:"served"`
	Endpoints []EndpointAPI `json:"endpoints"`
}

// ErrorAPI is the body of an API error (4xx).
type ErrorAPI struct {
	Error string `json:"error"`
}

// The orders of /api/v1/services (its sort parameter).
const (
	SortName      = "name"      // by host, then port (the default)
	SortEndpoints = "endpoints" // the most endpoints first, then by name
)

const (
	defaultLimit = 50
	maxLimit     = 1000
	maxQuery     = 256
)

func (h *Handler) routeAPI(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/v1/sources", h.apiSources)
	mux.HandleFunc("GET /api/v1/services", h.apiServices)
	mux.HandleFunc("GET /api/v1/services/{authority}", h.apiService)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			apiError(w, http.StatusMethodNotAllowed, "the API is read-only: use GET")
			return
		}
		apiError(w, http.StatusNotFound, "no such API path "+strconv.Quote(r.URL.Path)+" (this server speaks /api/v1/sources, /api/v1/services, /api/v1/services/{authority})")
	})
}

func apiError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	writeJSONBody(w, ErrorAPI{Error: msg})
}

func sourceState(s discovery.SourceStatus) string {
	switch {
	case s.Expired:
		return StateExpired
	case s.Synced && s.Stale:
		return StateStale
	case s.Synced:
		return StateSynced
	case s.Stale || s.LastError != "":
		return StateFailing
	}
	return StateSyncing
}

// Sources returns the body of /api/v1/sources.
func (h *Handler) Sources() SourcesAPI {
	stats := h.opts.Store.Snapshot().Providers()
	out := SourcesAPI{Version: h.opts.Version, Ready: h.synced() && !h.draining.Load(), Time: time.Now().UTC(), Sources: []SourceAPI{}}
	for _, s := range h.status() {
		st := stats[s.Name]
		out.Sources = append(out.Sources, SourceAPI{
			Name: s.Name, Kind: s.Kind, State: sourceState(s), Synced: s.Synced, Stale: s.Stale, Expired: s.Expired,
			LastSuccess: s.LastSuccess, LastError: s.LastError, LastErrorTime: s.LastErrorTime,
			Errors: s.Errors, Applies: s.Applies, Rejected: s.Rejected,
			HeldWithdrawal: s.HeldWithdrawal, HeldEndpoints: s.HeldEndpoints,
			Keys: st.Keys, Services: st.Services, Endpoints: st.Endpoints,
		})
	}
	slices.SortFunc(out.Sources, func(x, y SourceAPI) int { return strings.Compare(x.Name, y.Name) })
	if h.opts.Panicking != nil {
		out.Panicking = []PanicAPI{}
		all := h.opts.Panicking()
		out.PanickingTotal = len(all)
		for _, p := range all[:min(len(all), maxPanicking)] {
			out.Panicking = append(out.Panicking, PanicAPI{Authority: p.Authority.String(), Since: p.Since, Serving: p.Serving, Addresses: p.Addresses})
		}
	}
	return out
}

func (h *Handler) apiSources(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, h.Sources())
}

// intParam reads a non-negative integer query parameter.
func intParam(r *http.Request, name string, def int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%s must be a non-negative integer, got %q", name, s)
	}
	return v, nil
}

func (h *Handler) apiServices(w http.ResponseWriter, r *http.Request) {
	offset, err := intParam(r, "offset", 0)
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	limit, err := intParam(r, "limit", defaultLimit)
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	if limit > maxLimit {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("limit must be at most %d, got %d", maxLimit, limit))
		return
	}
	q := r.URL.Query().Get("q")
	if len(q) > maxQuery {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("q is longer than %d bytes", maxQuery))
		return
	}
	sortBy := r.URL.Query().Get("sort")
	if sortBy != "" && sortBy != SortName && sortBy != SortEndpoints {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("sort must be %q or %q, got %q", SortName, SortEndpoints, sortBy))
		return
	}
	if sortBy == SortEndpoints {
		writeJSON(w, h.LargestServices(q, offset, limit))
		return
	}
	writeJSON(w, h.Services(q, offset, limit))
}

// Services returns a page of /api/v1/services: the authorities whose
// name contains q (case-insensitive), sorted by host then port, from
// offset, at most limit, with the total that match. It walks the
// registry's authorities once without copying them, and reads endpoints
// only for the page.
func (h *Handler) Services(q string, offset, limit int) ServicesAPI {
	q = strings.ToLower(q)
	snap := h.opts.Store.Snapshot()
	out := ServicesAPI{Query: q, Sort: SortName, Offset: offset, Limit: limit, Services: []ServiceSummary{}}
	type row struct {
		a       discovery.Authority
		sources []string
	}
	var page []row
	var last discovery.Authority
	first := true
	qb := []byte(q)
	var buf []byte
	snap.EachAuthority(func(a discovery.Authority, provider string) bool {
		if !first && a == last {
			if n := len(page); n > 0 && page[n-1].a == a && !slices.Contains(page[n-1].sources, provider) {
				page[n-1].sources = append(page[n-1].sources, provider)
			}
			return true
		}
		first, last = false, a
		if q != "" && !strings.Contains(a.Host, q) {
			// host:port, as String formats it, without an allocation.
			buf = append(buf[:0], a.Host...)
			if a.Port != 0 {
				buf = strconv.AppendUint(append(buf, ':'), uint64(a.Port), 10)
			}
			if !bytes.Contains(buf, qb) {
				return true
			}
		}
		if out.Total >= offset && out.Total < offset+limit {
			page = append(page, row{a: a, sources: []string{provider}})
		}
		out.Total++
		return true
	})
	for _, p := range page {
		out.Services = append(out.Services, h.summary(snap, p.a, p.sources))
	}
	return out
}

// LargestServices is Services ordered by endpoints held, the most first
// (then by name). It walks the authority index once, as Services does,
// takes each authority's endpoint count from h.counts (kept from one
// request to the next, and read again only for hosts that changed since)
// and keeps the best offset+limit in a bounded heap: it builds no row for
// an authority that is not in the page.
func (h *Handler) LargestServices(q string, offset, limit int) ServicesAPI {
	q = strings.ToLower(q)
	h.counts.mu.Lock()
	defer h.counts.mu.Unlock()
	// The snapshot is taken under the lock, so the counts only move forward.
	snap := h.opts.Store.Snapshot()
	h.counts.refresh(snap)
	out := ServicesAPI{Query: q, Sort: SortEndpoints, Offset: offset, Limit: limit, Services: []ServiceSummary{}}
	k := offset + limit
	top := &topRows{}
	var cur *countRow // the current authority's row, when the heap holds it
	var last discovery.Authority
	first, match := true, false
	qb := []byte(q)
	var buf []byte
	snap.EachAuthority(func(a discovery.Authority, provider string) bool {
		if !first && a == last {
			if cur != nil && !slices.Contains(cur.sources, provider) {
				cur.sources = append(cur.sources, provider)
			}
			return true
		}
		first, last, cur = false, a, nil
		if match = q == "" || matches(a, q, qb, &buf); !match || k == 0 {
			if match {
				out.Total++
			}
			return true
		}
		r := countRow{a: a, seq: out.Total}
		out.Total++
		for _, m := range h.opts.Federation.Members(a) {
			r.n += h.counts.of(snap, m)
		}
		switch {
		case len(*top) < k:
			cur = &r
			heap.Push(top, cur)
		case r.better((*top)[0]):
			cur = &r
			(*top)[0] = cur
			heap.Fix(top, 0)
		}
		if cur != nil {
			cur.sources = []string{provider}
		}
		return true
	})
	rows := slices.Clone(*top)
	slices.SortFunc(rows, func(x, y *countRow) int {
		if x.better(y) {
			return -1
		}
		return 1
	})
	for _, r := range rows[min(offset, len(rows)):] {
		out.Services = append(out.Services, h.summary(snap, r.a, r.sources))
	}
	return out
}

// matches reports whether a's host:port contains q (lower case; qb is q),
// formatting it into *buf rather than allocating.
func matches(a discovery.Authority, q string, qb []byte, buf *[]byte) bool {
	if strings.Contains(a.Host, q) {
		return true
	}
	b := append((*buf)[:0], a.Host...)
	if a.Port != 0 {
		b = strconv.AppendUint(append(b, ':'), uint64(a.Port), 10)
	}
	*buf = b
	return bytes.Contains(b, qb)
}

// countRow is an authority in the largest-services heap: n endpoints, the
// seq-th match in name order.
type countRow struct {
	a       discovery.Authority
	n, seq  int
	sources []string
}

// better orders the largest services: more endpoints, then by name.
func (r *countRow) better(o *countRow) bool {
	return r.n > o.n || (r.n == o.n && r.seq < o.seq)
}

// topRows is a min-heap of the best rows so far, the worst at its root.
type topRows []*countRow

func (t topRows) Len() int           { return len(t) }
func (t topRows) Less(i, j int) bool { return t[j].better(t[i]) }
func (t topRows) Swap(i, j int)      { t[i], t[j] = t[j], t[i] }
func (t *topRows) Push(x any)        { *t = append(*t, x.(*countRow)) }
func (t *topRows) Pop() any {
	old := *t
	x := old[len(old)-1]
	*t = old[:len(old)-1]
	return x
}

// endpointCounts caches how many endpoints the registry holds for an
// authority as a client asks for it (len(Snapshot.Service(a).Endpoints)),
// by host: a host's counts are dropped when the host changes, and read
// again when asked for. It serves sort=endpoints: after the first request,
// one costs a walk of the authority index and of the hosts changed since.
type endpointCounts struct {
	mu     sync.Mutex
	since  uint64                // the store version the counts hold for
	byHost map[string]hostCounts // by canonical host
}

// hostCounts are one host's counts: the first port asked for inline (most
// hosts have one), any other in more.
type hostCounts struct {
	port uint16
	n    int
	more map[uint16]int
}

// refresh drops the counts of the hosts that changed since the last call.
func (c *endpointCounts) refresh(snap *cache.Snapshot) {
	if c.byHost == nil {
		c.byHost = map[string]hostCounts{}
	}
	c.since = snap.HostsChangedSince(nil, c.since, func(host string) { delete(c.byHost, host) })
}

// of is the endpoint count of a, read from snap when not cached.
func (c *endpointCounts) of(snap *cache.Snapshot, a discovery.Authority) int {
	// Keyed by the host as the store names it (an alias may be written
	// otherwise), so that its change drops it.
	if h, err := discovery.CanonicalHost(a.Host); err == nil {
		a.Host = h
	}
	hc, ok := c.byHost[a.Host]
	if ok && hc.port == a.Port {
		return hc.n
	}
	if n, found := hc.more[a.Port]; found {
		return n
	}
	n := len(snap.Service(nil, a).Endpoints)
	switch {
	case !ok:
		hc = hostCounts{port: a.Port, n: n}
	case hc.more == nil:
		hc.more = map[uint16]int{a.Port: n}
	default:
		hc.more[a.Port] = n
	}
	c.byHost[a.Host] = hc
	return n
}

// summary is one authority's line in the service list.
func (h *Handler) summary(snap *cache.Snapshot, a discovery.Authority, sources []string) ServiceSummary {
	ex := h.explain(snap, a, "")
	slices.Sort(sources)
	s := ServiceSummary{Authority: a.String(), Served: len(ex.Served), Panic: ex.Panic,
		ByHealth: map[string]int{}, BySource: map[string]int{}, Sources: sources}
	for _, d := range ex.Decisions {
		s.Endpoints++
		s.ByHealth[d.Endpoint.Health.String()]++
		s.BySource[d.Endpoint.Source]++
	}
	return s
}

// explain resolves a as a Get stream of a client in zone would: the
// members' endpoints, Resolve, PreferZone (discovery.Federation.Explain
// runs both).
func (h *Handler) explain(snap *cache.Snapshot, a discovery.Authority, zone string) *discovery.Explanation {
	var all []*discovery.Endpoint
	for _, m := range h.opts.Federation.Members(a) {
		all = append(all, snap.Service(nil, m).Endpoints...)
	}
	return h.opts.Federation.Explain(a, zone, all)
}

// why puts a decision into words.
func why(d discovery.Decision, ex *discovery.Explanation) string {
	e := d.Endpoint
	switch d.Reason {
	case discovery.ReasonServed:
		if e.Health == discovery.HealthWarning {
			return "served: warning counts as serving"
		}
		return "served"
	case discovery.ReasonServedInPanic:
		return fmt.Sprintf("critical, but served: panic mode (%d of %d addresses serving, below the %g%% threshold)",
			ex.ServingAddresses, ex.Addresses, ex.PanicThreshold*100)
	case discovery.ReasonCritical:
		return "evicted: health is critical"
	case discovery.ReasonDuplicate:
		return fmt.Sprintf("not served: source %q serves this address (higher priority, or the same and a smaller name)", d.Winner.Source)
	case discovery.ReasonFailoverTier:
		return fmt.Sprintf("not served: source %q is not in the failover tier in use (tier %d)", e.Source, ex.Tier)
	case discovery.ReasonFailoverLevel:
		return fmt.Sprintf("not served: another %s level of source %q has serving endpoints", discovery.PriorityLabel, e.Source)
	case discovery.ReasonZoneHint:
		return fmt.Sprintf("not served to zone %q: topology hints send it to %s", ex.Zone, strings.Join(e.ForZones, ", "))
	}
	return string(d.Reason)
}

// ErrBadAuthority is returned by Service for an authority that does not parse.
var ErrBadAuthority = errors.New("invalid authority")

// Service returns the body of /api/v1/services/{authority} for a client
// in zone.
func (h *Handler) Service(authority, zone string) (ServiceAPI, error) {
	a, err := discovery.ParseAuthority(authority, 0)
	if err != nil {
		return ServiceAPI{}, fmt.Errorf("%w: %v", ErrBadAuthority, err)
	}
	if len(zone) > maxQuery {
		return ServiceAPI{}, fmt.Errorf("zone is longer than %d bytes", maxQuery)
	}
	stale := map[string]bool{}
	for _, s := range h.status() {
		stale[s.Name] = s.Stale
	}
	snap := h.opts.Store.Snapshot()
	out := ServiceAPI{Authority: a.String(), Zone: zone, Endpoints: []EndpointAPI{}, Zones: []string{}, Members: []string{}}
	// memberOf is the authority each endpoint's source asserted it under,
	// which the health checker keys its checks by: a host's every port
	// when asked without one, a port-less assertion under any port.
	memberOf := map[*discovery.Endpoint]discovery.Authority{}
	checked := h.opts.HealthCheck != nil || h.opts.Checks != nil
	for _, m := range h.opts.Federation.Members(a) {
		out.Members = append(out.Members, m.String())
		st := snap.Service(nil, m)
		out.Exists = out.Exists || st.Exists
		out.Opaque = out.Opaque || st.Opaque
		for _, e := range st.Endpoints {
			memberOf[e] = m
			if checked {
				memberOf[e] = assertedUnder(snap, e, m)
			}
		}
	}
	ex := h.explain(snap, a, zone)
	out.Tier, out.PanicThreshold, out.Panic = ex.Tier, ex.PanicThreshold, ex.Panic
	out.Addresses, out.ServingAddresses, out.ZoneHints, out.Served = ex.Addresses, ex.ServingAddresses, ex.ZoneHints, len(ex.Served)
	for _, t := range ex.Tiers {
		out.Tiers = append(out.Tiers, TierAPI{Sources: t.Sources, MinHealthy: max(t.MinHealthy, 1)})
	}
	zones := map[string]bool{}
	for _, d := range ex.Decisions {
		e := d.Endpoint
		ea := EndpointAPI{
			Address: e.Addr.String(), Zone: e.Zone, ForZones: e.ForZones, Health: e.Health.String(), Weight: e.EffectiveWeight(),
			Identity: e.Identity.Name, ServerName: e.Identity.ServerName, Protocol: e.Protocol.String(), Labels: e.Labels,
			Source: e.Source, Key: e.Key, Stale: stale[e.Source],
			Served: d.Reason == discovery.ReasonServed || d.Reason == discovery.ReasonServedInPanic,
			Reason: string(d.Reason), Why: why(d, ex),
		}
		ea.HealthFrom = "source"
		if h.opts.HealthCheck != nil {
			if c := h.opts.HealthCheck(e.Source, memberOf[e]); c != "" {
				ea.HealthFrom = "check:" + c
			}
		}
		if h.opts.Checks != nil && ea.HealthFrom != "source" {
			if cs, ok := h.opts.Checks.CheckState(e.Source, memberOf[e], e.Addr); ok {
				ea.Check = checkAPI(cs)
			}
		}
		if e.Health == discovery.HealthCritical {
			switch c := ea.Check; {
			case ea.HealthFrom == "source":
				ea.Why += "; its source reports it critical"
			case c != nil && c.Verdict == discovery.HealthCritical.String():
				ea.Why += "; " + checkWhy(c)
			case c != nil:
				ea.Why += fmt.Sprintf("; its source reports it critical (its active %s check says %s)", c.Type, c.Verdict)
			default:
				ea.Why += "; its active " + strings.TrimPrefix(ea.HealthFrom, "check:") + " health check fails (or its source reports it critical)"
			}
		}
		if ea.Stale {
			ea.Why += "; its source is stale (its last good state is served)"
		}
		if d.Winner != nil {
			ea.WinnerSource, ea.WinnerKey = d.Winner.Source, d.Winner.Key
		}
		if e.Zone != "" {
			zones[e.Zone] = true
		}
		for _, z := range e.ForZones {
			zones[z] = true
		}
		out.Endpoints = append(out.Endpoints, ea)
	}
	out.Zones = slices.Sorted(maps.Keys(zones))
	slices.SortStableFunc(out.Endpoints, func(x, y EndpointAPI) int { return cmp.Compare(boolRank(!x.Served), boolRank(!y.Served)) })
	return out, nil
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (h *Handler) apiService(w http.ResponseWriter, r *http.Request) {
	v, err := h.Service(r.PathValue("authority"), r.URL.Query().Get("zone"))
	if err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, v)
}

func checkAPI(cs discovery.CheckState) *CheckAPI {
	return &CheckAPI{
		Type: cs.Type, Target: cs.Target.String(), Verdict: cs.Verdict.String(),
		LastCheck: cs.LastCheck.UTC(), LastError: cs.LastError, LastErrorTime: cs.LastErrorTime.UTC(),
		ConsecutiveFailures: cs.ConsecutiveFailures, ConsecutiveSuccesses: cs.ConsecutiveSuccesses,
		HeldDownUntil: cs.HeldDownUntil.UTC(),
	}
}

// checkWhy puts a failing check into words: its last error, how many in
// a row, when.
func checkWhy(c *CheckAPI) string {
	s := "its active " + c.Type + " health check of " + c.Target + " fails"
	if c.LastError != "" {
		s += ": " + c.LastError
	}
	if c.ConsecutiveFailures > 0 {
		s += fmt.Sprintf(" (%d failures in a row, last at %s)", c.ConsecutiveFailures, c.LastErrorTime.Format(time.RFC3339))
	}
	if !c.HeldDownUntil.IsZero() {
		s += "; held down for flapping until " + c.HeldDownUntil.Format(time.RFC3339)
	}
	return s
}

// assertedUnder is the authority e's source asserted it under: m, or,
// when m has no port or e came from a port-less assertion, the one the
// registry's row names.
func assertedUnder(snap *cache.Snapshot, e *discovery.Endpoint, m discovery.Authority) discovery.Authority {
	for _, am := range snap.EndpointsByAddr(nil, e.Addr) {
		if am.Endpoint == e {
			return am.Authority
		}
	}
	return m
}
