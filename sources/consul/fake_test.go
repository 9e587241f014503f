package consul

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// fakeConsul is an in-process stand-in for a Consul agent's HTTP API: the
// catalog service list, per-service health, the checks-by-state list, CA
// roots and the agent's datacenter, with Consul's blocking-query rules
// (answer when the index passes the one asked for, or when wait elapses).
type fakeConsul struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	changed chan struct{} // closed on every change
	index   uint64
	dcs     map[string]*fakeDC
	selfDC  string

	trustDomain     string
	connectDisabled bool
	selfForbidden   bool
	aclFiltered     bool
	failCode        int            // answer everything with this status
	failService     map[string]int // answer one service's health with this status
	failDC          map[string]int // answer everything about one datacenter with this status
	servedFilters   map[string]string

	inflight      map[string]int // by kind: health, blocking-health, catalog, checks
	maxInflight   map[string]int
	blockingNames map[string]int // blocking health queries by service
	blockingNow   map[string]int // … running now
	requests      []string       // "kind dc/name index"
}

type fakeDC struct {
	services      map[string][]*api.ServiceEntry
	svcIndex      map[string]uint64
	servicesIndex uint64
	checksIndex   uint64
}

func newFakeConsul(t *testing.T, dcs ...string) *fakeConsul {
	t.Helper()
	f := &fakeConsul{
		t:             t,
		changed:       make(chan struct{}),
		index:         10,
		dcs:           map[string]*fakeDC{},
		selfDC:        dcs[0],
		trustDomain:   "11111111-2222-3333-4444-555555555555.consul",
		failService:   map[string]int{},
		failDC:        map[string]int{},
		servedFilters: map[string]string{},
		inflight:      map[string]int{},
		maxInflight:   map[string]int{},
		blockingNames: map[string]int{},
		blockingNow:   map[string]int{},
	}
	for _, dc := range dcs {
		f.dcs[dc] = &fakeDC{services: map[string][]*api.ServiceEntry{}, svcIndex: map[string]uint64{}, servicesIndex: 10, checksIndex: 10}
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
	return f
}

func (f *fakeConsul) addr() string { return strings.TrimPrefix(f.srv.URL, "http://") }

// bump advances the index and wakes blocked queries; the caller holds mu.
func (f *fakeConsul) bump() uint64 {
	f.index++
	close(f.changed)
	f.changed = make(chan struct{})
	return f.index
}

// set registers a service's instances: a catalog change (the service list
// index moves) and a health change.
func (f *fakeConsul) set(dc, name string, entries ...*api.ServiceEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dcs[dc]
	idx := f.bump()
	d.services[name] = entries
	d.svcIndex[name] = idx
	d.servicesIndex = idx
	d.checksIndex = idx
}

// setChecks changes only the checks of a service's instances: the service
// list does not move, as in Consul.
func (f *fakeConsul) setChecks(dc, name string, entries ...*api.ServiceEntry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dcs[dc]
	idx := f.bump()
	d.services[name] = entries
	d.svcIndex[name] = idx
	d.checksIndex = idx
}

func (f *fakeConsul) remove(dc, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dcs[dc]
	idx := f.bump()
	delete(d.services, name)
	d.svcIndex[name] = idx
	d.servicesIndex = idx
	d.checksIndex = idx
}

// restart simulates a Consul that lost its state and starts counting
// again from a low index.
func (f *fakeConsul) restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index = 2
	f.bump()
	for _, d := range f.dcs {
		d.servicesIndex, d.checksIndex = f.index, f.index
		for name := range d.svcIndex {
			d.svcIndex[name] = f.index
		}
	}
}

// fail makes every request answer code (0: normal again).
func (f *fakeConsul) fail(code int) {
	f.mu.Lock()
	f.failCode = code
	f.bump()
	f.mu.Unlock()
}

func (f *fakeConsul) failDatacenter(dc string, code int) {
	f.mu.Lock()
	f.failDC[dc] = code
	f.bump()
	f.mu.Unlock()
}

func (f *fakeConsul) failHealth(name string, code int) {
	f.mu.Lock()
	if code == 0 {
		delete(f.failService, name)
	} else {
		f.failService[name] = code
	}
	f.bump()
	f.mu.Unlock()
}

func (f *fakeConsul) stat(kind string) (inflight, maxInflight int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inflight[kind], f.maxInflight[kind]
}

// blockingQueriesOf counts the blocking health queries a service got so
// far, and those running now.
func (f *fakeConsul) blockingQueriesOf(name string) (total, now int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blockingNames[name], f.blockingNow[name]
}

func (f *fakeConsul) requestLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func (f *fakeConsul) filterSeen(path string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.servedFilters[path]
}

func (f *fakeConsul) enter(kinds ...string) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range kinds {
		f.inflight[k]++
		f.maxInflight[k] = max(f.maxInflight[k], f.inflight[k])
	}
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, k := range kinds {
			f.inflight[k]--
		}
	}
}

func (f *fakeConsul) serve(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	dcName := q.Get("dc")
	if dcName == "" {
		dcName = f.selfDC
	}
	index, _ := strconv.ParseUint(q.Get("index"), 10, 64)
	wait := 5 * time.Minute
	if s := q.Get("wait"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			wait = d
		}
	}
	p := req.URL.Path
	// Consul sends these on every answer; consul/api stops reading the
	// query meta where one is missing.
	w.Header().Set("X-Consul-LastContact", "0")
	w.Header().Set("X-Consul-KnownLeader", "true")
	f.mu.Lock()
	if q.Has("filter") {
		f.servedFilters[p] = q.Get("filter")
	}
	code := f.failCode
	if c := f.failDC[dcName]; c != 0 && p != "/v1/agent/self" {
		code = c
	}
	d := f.dcs[dcName]
	f.mu.Unlock()
	if code != 0 {
		http.Error(w, "injected failure", code)
		return
	}
	if d == nil && p != "/v1/agent/self" {
		http.Error(w, "No path to datacenter", http.StatusInternalServerError)
		return
	}

	switch {
	case p == "/v1/agent/self":
		f.mu.Lock()
		forbidden := f.selfForbidden
		f.mu.Unlock()
		if forbidden {
			http.Error(w, "Permission denied", http.StatusForbidden)
			return
		}
		writeJSON(w, 0, map[string]any{"Config": map[string]string{"Datacenter": f.selfDC}})
	case p == "/v1/catalog/datacenters":
		var names []string
		for n := range f.dcs {
			if n != f.selfDC {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		writeJSON(w, 0, append([]string{f.selfDC}, names...))
	case p == "/v1/connect/ca/roots":
		f.mu.Lock()
		disabled, td := f.connectDisabled, f.trustDomain
		f.mu.Unlock()
		if disabled {
			http.Error(w, "Connect must be enabled in order to use this endpoint", http.StatusInternalServerError)
			return
		}
		writeJSON(w, 1, map[string]any{"TrustDomain": td, "Roots": []any{}})
	case p == "/v1/catalog/services":
		defer f.enter("catalog")()
		idx, ok := f.block(w, req.Context(), dcName, index, wait, func() uint64 { return d.servicesIndex })
		if !ok {
			return
		}
		f.mu.Lock()
		out := map[string][]string{}
		for name, entries := range d.services {
			tags := []string{}
			for _, e := range entries {
				for _, t := range e.Service.Tags {
					if !slices.Contains(tags, t) {
						tags = append(tags, t)
					}
				}
			}
			out[name] = tags
		}
		filtered := f.aclFiltered
		f.requests = append(f.requests, "catalog "+dcName+" "+strconv.FormatUint(index, 10)+consistency(q))
		f.mu.Unlock()
		if filtered {
			w.Header().Set("X-Consul-Results-Filtered-By-ACLs", "true")
		}
		writeJSON(w, idx, out)
	case strings.HasPrefix(p, "/v1/health/service/") || strings.HasPrefix(p, "/v1/health/connect/"):
		name := p[len("/v1/health/service/"):]
		kinds := []string{"health"}
		if index > 0 {
			kinds = append(kinds, "blocking-health")
			f.mu.Lock()
			f.blockingNames[name]++
			f.blockingNow[name]++
			f.mu.Unlock()
			defer func() {
				f.mu.Lock()
				f.blockingNow[name]--
				f.mu.Unlock()
			}()
		}
		defer f.enter(kinds...)()
		idx, ok := f.block(w, req.Context(), dcName, index, wait, func() uint64 {
			if i, ok := d.svcIndex[name]; ok {
				return i
			}
			return d.servicesIndex
		})
		if !ok {
			return
		}
		f.mu.Lock()
		fc := f.failService[name]
		entries := d.services[name]
		if entries == nil {
			entries = []*api.ServiceEntry{}
		}
		f.requests = append(f.requests, "health "+dcName+"/"+name+" "+strconv.FormatUint(index, 10)+consistency(q))
		body, err := json.Marshal(entries)
		f.mu.Unlock()
		if fc != 0 {
			http.Error(w, "injected failure", fc)
			return
		}
		if err != nil {
			f.t.Error(err)
		}
		w.Header().Set("X-Consul-Index", strconv.FormatUint(idx, 10))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	case strings.HasPrefix(p, "/v1/health/state/"):
		state := strings.TrimPrefix(p, "/v1/health/state/")
		defer f.enter("checks")()
		if !slices.Contains(nonPassing, state) {
			f.t.Errorf("checks query of state %q, want one of %v", state, nonPassing)
		}
		if q.Has("filter") {
			f.t.Errorf("checks query with filter %q: Consul evaluates it over every check", q.Get("filter"))
		}
		idx, ok := f.block(w, req.Context(), dcName, index, wait, func() uint64 { return d.checksIndex })
		if !ok {
			return
		}
		f.mu.Lock()
		var out []*api.HealthCheck
		for _, entries := range d.services {
			for _, e := range entries {
				for _, c := range e.Checks {
					if c.Status == state {
						out = append(out, c)
					}
				}
			}
		}
		body, _ := json.Marshal(out)
		f.mu.Unlock()
		w.Header().Set("X-Consul-Index", strconv.FormatUint(idx, 10))
		_, _ = w.Write(body)
	default:
		http.NotFound(w, req)
	}
}

// block waits, as a Consul blocking query does, until the index passes
// min (an index below min waits out the wait, as in Consul) or wait
// elapses; false when the request ended or a failure was injected, which
// it then answers.
func (f *fakeConsul) block(w http.ResponseWriter, ctx context.Context, dc string, min uint64, wait time.Duration, idx func() uint64) (uint64, bool) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		cur, ch, failing := idx(), f.changed, f.failCode
		if c := f.failDC[dc]; c != 0 {
			failing = c
		}
		f.mu.Unlock()
		if failing != 0 {
			http.Error(w, "injected failure", failing)
			return 0, false
		}
		if min == 0 || cur > min {
			return cur, true
		}
		select {
		case <-ch:
		case <-timer.C:
			return cur, true
		case <-ctx.Done():
			return 0, false
		}
	}
}

// consistency marks a request log entry of a consistent or stale read.
func consistency(q url.Values) string {
	switch {
	case q.Has("consistent"):
		return " consistent"
	case q.Has("stale"):
		return " stale"
	}
	return ""
}

func writeJSON(w http.ResponseWriter, index uint64, v any) {
	if index > 0 {
		w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// inst builds one instance with one service check of the given status.
func inst(node, addr, id string, port int, status string, tags ...string) *api.ServiceEntry {
	name, _, _ := strings.Cut(id, "-")
	return &api.ServiceEntry{
		Node:    &api.Node{Node: node, Address: addr, Datacenter: "dc1"},
		Service: &api.AgentService{ID: id, Service: name, Port: port, Tags: tags, Weights: api.AgentWeights{Passing: 1, Warning: 1}},
		Checks: api.HealthChecks{{
			Node: node, CheckID: "service:" + id, Status: status, ServiceID: id, ServiceName: name,
		}},
	}
}
