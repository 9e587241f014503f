// Package consul is the `consul` source kind: services registered in
// Consul, with the health of their checks, discovered through a Consul
// agent's HTTP API with blocking queries.
//
//	sources:
//	  - name: consul
//	    kind: consul
//	    address: 127.0.0.1:8500
//	    datacenters: [dc1, dc2]      # default: the agent's own
//	    token_file: consul.token
//
// Each Consul service of each datacenter is one group keyed "dc/service".
// Its instances are the endpoints of <service>.service.<dc>.consul (any
// port) and of <tag>.<service>.service.<dc>.consul per tag; the naming
// templates change that.
//
// How it reads Consul: one blocking query per datacenter on the catalog's
// service list, and one blocking query per service on its health
// (/v1/health/service/<name>) for up to max_watches services. Every
// blocking query holds an HTTP connection, and the agent allows 200 per
// client address by default, so services beyond max_watches are not
// watched one by one: they are read with short non-blocking queries
// (at most overflow.concurrency at a time) when a per-datacenter blocking
// query on the non-passing checks shows that one of their checks changed,
// when the catalog changes, and every overflow.resync_interval.
// watch_first names the services that get a watch before any other.
//
// The source is synced once every datacenter's catalog and every service's
// first answer are in (one Replace). Then each changed service is handed
// over on its own; a service that leaves the catalog is withdrawn. When the
// agent cannot be reached or answers 5xx/429, the source reports Failed,
// hands over nothing, and retries with jittered exponential backoff; on
// recovery every query starts again from scratch, so whatever changed
// meanwhile — deregistrations included — is reconciled.
package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/retry"
)

// KindName is the value of `kind:` for this source.
const KindName = "consul"

func init() {
	discovery.Register(discovery.Kind{Name: KindName, New: newFromNode})
}

// Source is a consul source; build it with NewSource.
type Source struct {
	s         *settings
	name      string
	log       *slog.Logger
	client    *api.Client
	transport *http.Transport

	// rejected counts instances left out because they could not become an
	// endpoint (a hostname address, no port).
	rejected atomic.Uint64

	// jitter returns a random float in [0, 1); tests may replace it.
	jitter func() float64
}

var _ discovery.Source = (*Source)(nil)

// NewSource validates cfg and builds the source with its own HTTP client:
// one transport whose connections to the agent are bounded by what the
// source can have in flight. It starts nothing.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	s, err := cfg.validate(bc.BaseDir)
	if err != nil {
		return nil, err
	}
	log := bc.Log()
	tlsConf, err := api.SetupTLSConfig(&s.api.TLSConfig)
	if err != nil {
		return nil, &discovery.ConfigError{Key: "tls", Err: err}
	}
	conns := s.maxConns()
	tr := &http.Transport{
		Proxy:                 nil, // the agent is local or named; never via a proxy from the environment
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   10 * time.Second,
		MaxConnsPerHost:       conns,
		MaxIdleConns:          conns,
		MaxIdleConnsPerHost:   conns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // blocking queries answer late on purpose; contexts bound them
	}
	conf := s.api
	if sock, ok := strings.CutPrefix(conf.Address, "unix://"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		conf.Address, conf.Scheme = "consul.sock", "http"
	}
	conf.Transport = tr
	conf.HttpClient = &http.Client{Transport: tr}
	client, err := api.NewClient(&conf)
	if err != nil {
		return nil, &discovery.ConfigError{Key: "address", Err: err}
	}
	if conns > consulConnLimit {
		log.Warn("this source may hold more connections to the Consul agent than its default per-client limit; raise limits.http_max_conns_per_client on the agent or lower max_watches",
			"connections", conns, "consul_default_limit", consulConnLimit)
	}
	return &Source{s: s, name: bc.Name, log: log, client: client, transport: tr, jitter: rand.Float64}, nil
}

// Rejected reports how many instances were left out so far because they
// could not become endpoints.
func (src *Source) Rejected() uint64 { return src.rejected.Load() }

// Run implements discovery.Source.
func (src *Source) Run(ctx context.Context, sink discovery.Sink) {
	if ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	r := newRun(src, sink)
	defer func() {
		cancel()
		r.wg.Wait()
		src.transport.CloseIdleConnections()
	}()
	if !r.bootstrap(ctx) {
		return
	}
	r.loop(ctx)
}

// newBackoff returns the retry delays of one retrying loop: backoff.initial
// doubling to backoff.max, jittered (retry.Backoff).
func (src *Source) newBackoff() *retry.Backoff {
	return &retry.Backoff{Min: src.s.backoffInitial, Max: src.s.backoffMax, Rand: src.jitter}
}

// query builds the options of one request. A blocking query (index > 0)
// waits a random 90–100% of wait, so watches started together do not
// return together.
//
// A consistent query goes to the leader once it has applied everything
// committed. The watches use one for their first read after a failure: a
// Consul server that just restarted answers from its state store while it
// is still replaying its log, and a stale or default read could then hand
// a half-loaded catalog over the good state the source kept.
func (src *Source) query(ctx context.Context, dc string, index uint64, consistent bool) (*api.QueryOptions, context.CancelFunc) {
	q := &api.QueryOptions{
		Datacenter:        dc,
		AllowStale:        src.s.allowStale && !consistent,
		RequireConsistent: consistent,
		WaitIndex:         index,
		Token:             src.s.api.Token,
		Namespace:         src.s.api.Namespace,
		Partition:         src.s.api.Partition,
	}
	timeout := 30 * time.Second
	if index > 0 {
		q.WaitTime = src.s.wait - time.Duration(float64(src.s.wait)/10*src.jitter())
		// Consul adds up to wait/16 of its own jitter.
		timeout += src.s.wait + src.s.wait/16
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	return q.WithContext(qctx), cancel
}

// retryable reports whether an error is the backend's (an outage, a 5xx, a
// 429, a bad token) rather than the request's: a 4xx about one service is
// that service's problem and does not hold back the others.
func retryable(err error) bool {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code >= 500 || se.Code == http.StatusTooManyRequests || se.Code == http.StatusForbidden ||
			se.Code == http.StatusUnauthorized || se.Code == http.StatusRequestTimeout
	}
	return true
}

// nextIndex applies Consul's rules for a blocking query's index: an index
// that went backwards resets to 0 (the next query reads from scratch), and
// 0 is never used to block (it would return at once, forever).
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	}
	return got
}

// resolveDatacenter finds the agent's own datacenter: from /v1/agent/self,
// or, when the token may not read the agent, the nearest of
// /v1/catalog/datacenters (the agent's own comes first).
func (src *Source) resolveDatacenter(ctx context.Context) (string, error) {
	q, cancel := src.query(ctx, "", 0, false)
	defer cancel()
	var self struct{ Config struct{ Datacenter string } }
	_, err := src.client.Raw().Query("/v1/agent/self", &self, q)
	if err == nil && self.Config.Datacenter != "" {
		return self.Config.Datacenter, nil
	}
	if err != nil && retryable(err) && !isForbidden(err) {
		return "", fmt.Errorf("reading the agent's datacenter: %w", err)
	}
	var dcs []string
	if _, err := src.client.Raw().Query("/v1/catalog/datacenters", &dcs, q); err != nil {
		return "", fmt.Errorf("listing datacenters: %w", err)
	}
	if len(dcs) == 0 || !isDatacenterName(dcs[0]) {
		return "", fmt.Errorf("the agent names no datacenter (got %q)", dcs)
	}
	return dcs[0], nil
}

func isForbidden(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusForbidden
}

// errConnectDisabled: the datacenter does not run Connect, so its services
// have no Connect identity.
var errConnectDisabled = errors.New("connect is not enabled")

// resolveTrustDomain reads a datacenter's trust domain from its CA roots.
func (src *Source) resolveTrustDomain(ctx context.Context, dc string) (string, error) {
	q, cancel := src.query(ctx, dc, 0, false)
	defer cancel()
	roots, _, err := src.client.Connect().CARoots(q)
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) && strings.Contains(se.Body, "Connect must be enabled") {
			return "", errConnectDisabled
		}
		return "", fmt.Errorf("reading the Connect CA roots of %s: %w", dc, err)
	}
	if roots.TrustDomain == "" {
		return "", fmt.Errorf("the Connect CA of %s has no trust domain yet", dc)
	}
	return roots.TrustDomain, nil
}

// run is the state of one Run call. The loop goroutine owns everything but
// wg and events; the goroutines it starts only send events.
type run struct {
	*Source
	sink   discovery.Sink
	events chan any
	wg     sync.WaitGroup

	// Set by bootstrap.
	dcs []string
	b   *builder

	loopState
}

func newRun(src *Source, sink discovery.Sink) *run {
	return &run{Source: src, sink: sink, events: make(chan any, 64)}
}

// bootstrap learns the datacenters and their trust domains, retrying with
// backoff until it can; false when ctx ended first.
func (r *run) bootstrap(ctx context.Context) bool {
	bo := r.newBackoff()
	dcs := r.s.datacenters
	tds := map[string]string{}
	warned := map[string]bool{}
	for {
		err := func() error {
			if len(dcs) == 0 {
				dc, err := r.resolveDatacenter(ctx)
				if err != nil {
					return err
				}
				dcs = []string{dc}
				r.log.Info("discovering the agent's datacenter", "datacenter", dc)
			}
			for _, dc := range dcs {
				if _, done := tds[dc]; done {
					continue
				}
				if r.s.trustDomain != "" {
					tds[dc] = r.s.trustDomain
					continue
				}
				td, err := r.resolveTrustDomain(ctx, dc)
				switch {
				case errors.Is(err, errConnectDisabled) && r.s.connect:
					return fmt.Errorf("connect_endpoints needs Connect enabled in %s (or trust_domain set)", dc)
				case errors.Is(err, errConnectDisabled):
					if !warned[dc] {
						r.log.Info("Connect is not enabled; no endpoint gets a Connect identity", "datacenter", dc)
						warned[dc] = true
					}
				case err != nil:
					return err
				}
				tds[dc] = td
			}
			return nil
		}()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return false
		}
		r.log.Debug("cannot reach Consul yet", "err", err)
		r.sink.Failed(err)
		if retry.Wait(ctx, bo.Next()) != nil {
			return false
		}
	}
	r.dcs = dcs
	r.b = &builder{s: r.s, trustDomains: tds}
	return true
}

// send hands an event to the loop; false when ctx ended.
func (r *run) send(ctx context.Context, ev any) bool {
	select {
	case r.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// goFn runs f in a goroutine the run waits for.
func (r *run) goFn(f func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
}
