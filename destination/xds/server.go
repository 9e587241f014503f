// Package xds serves Envoy's aggregated discovery service (ADS), state of
// the world and delta, from the registry: a listener, a route
// configuration, a cluster and a cluster load assignment per authority,
// all named host:port (docs/xds.md). It is an edge on the fan-out engine
// (destination/fanout): the view of an authority for clients of one zone
// is built once per change and shared by every stream that subscribes to
// it; a stream keeps only what it last sent of each resource.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/hashicorp/go-memdb"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination/fanout"
	"github.com/tributary-mesh/tributary/destination/internal/admit"
	"github.com/tributary-mesh/tributary/discovery"
)

// Defaults: the destination API's.
const (
	DefaultStartupTimeout      = 2 * time.Second
	DefaultSendTimeout         = 30 * time.Second
	DefaultMaxStreams          = 150000
	DefaultNewStreamsPerSecond = 20000
)

// Options configures a Server.
type Options struct {
	Store      *cache.Store
	Federation *discovery.Federation // nil: no rules
	Settings   *Settings             // nil: no node zones, plaintext clusters
	// Synced is closed when every source has synced; nil: already.
	Synced         <-chan struct{}
	StartupTimeout time.Duration // the bounded wait for Synced; 0: default
	// SendTimeout closes the connection of a client that has not taken a
	// response for this long; 0: default, negative: never.
	SendTimeout time.Duration
	// MaxStreams bounds open ADS streams (0: DefaultMaxStreams, negative:
	// none); NewStreamsPerSecond and NewStreamsBurst rate-limit new ones
	// (rate 0: DefaultNewStreamsPerSecond, negative: none; burst 0: one
	// second's worth). Beyond them a stream gets ResourceExhausted with a
	// retry delay, as on the destination API.
	MaxStreams          int
	NewStreamsPerSecond float64
	NewStreamsBurst     int
	Logger              *slog.Logger
	Registerer          prometheus.Registerer // nil: no metrics
}

// Server is the ADS server. Register it on a gRPC server served on
// Listener's listener, and call Drain then Wait to stop.
type Server struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer

	store    *cache.Store
	fed      *discovery.Federation
	settings *Settings
	synced   <-chan struct{}
	startup  time.Duration
	log      *slog.Logger
	metrics  *metrics
	hub      *fanout.Hub[view]
	catalog  catalog // the registry's authorities, for wildcard subscriptions

	// staticVersion is the version of listeners, routes and clusters:
	// they change only with the server's settings.
	staticVersion string

	sendTimeout time.Duration
	stalls      *fanout.StallWatch
	conns       fanout.Conns
	drain       context.Context
	drainNow    context.CancelFunc
	streams     sync.WaitGroup
	ids         atomic.Uint64

	maxStreams int64
	open       atomic.Int64
	admission  *admit.Admission
}

// New returns a server.
func New(opts Options) *Server {
	s := &Server{
		store: opts.Store, fed: opts.Federation, settings: opts.Settings,
		synced: opts.Synced, startup: opts.StartupTimeout, log: opts.Logger,
		metrics: newMetrics(opts.Registerer), sendTimeout: opts.SendTimeout,
		staticVersion: "s1",
	}
	if s.fed == nil {
		s.fed, _ = discovery.NewFederation(nil, nil)
	}
	if s.settings == nil {
		s.settings = &Settings{}
	}
	if s.settings.UpstreamTLS != nil {
		// A cluster's content changes with the TLS settings: a client
		// that kept a cluster across a restart with other settings must
		// not take it for the current one (delta initial versions).
		t := s.settings.UpstreamTLS
		s.staticVersion = fmt.Sprintf("s1-%s-%s-%s-%s-%v", t.Mode, t.Certificate, t.Validation, t.SDSCluster, t.TrustDomains)
	}
	if s.startup <= 0 {
		s.startup = DefaultStartupTimeout
	}
	if s.sendTimeout == 0 {
		s.sendTimeout = DefaultSendTimeout
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.maxStreams = int64(opts.MaxStreams)
	if s.maxStreams == 0 {
		s.maxStreams = DefaultMaxStreams
	}
	r := opts.NewStreamsPerSecond
	if r == 0 {
		r = DefaultNewStreamsPerSecond
	}
	s.admission = admit.New(r, opts.NewStreamsBurst, nil, nil) // r < 0: no rate limit
	s.stalls = fanout.NewStallWatch(max(s.sendTimeout, time.Millisecond), s.closeStalled)
	s.drain, s.drainNow = context.WithCancel(context.Background())
	s.catalog.srv = s
	s.hub = fanout.New(fanout.Options[view]{
		Store: s.store, Federation: s.fed,
		Build: func(snap *cache.Snapshot, ws memdb.WatchSet, key fanout.Key, members []discovery.Authority) (*view, uint64) {
			return s.build(snap, ws, key.Authority, key.Zone, members)
		},
	})
	return s
}

// Register adds the ADS service to g.
func (s *Server) Register(g *grpc.Server) {
	discoverypb.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// Listener wraps ln so that a client that stops reading can have its
// connection closed (send timeout).
func (s *Server) Listener(ln net.Listener) net.Listener { return s.conns.Listener(ln) }

// Drain refuses new streams with Unavailable; the open ones end when the
// gRPC server stops (Stop: xDS streams never end by themselves, and their
// clients reconnect to another replica), or with Unavailable at their next
// request.
func (s *Server) Drain() { s.drainNow() }

// Wait returns once every stream and the goroutines that follow the
// registry for them have stopped; call it after the gRPC server stopped.
func (s *Server) Wait() {
	s.streams.Wait()
	s.catalog.wait()
	s.hub.Wait()
	s.stalls.Wait()
}

func (s *Server) closeStalled(st *fanout.SendState) {
	s.metrics.slowClosed.Inc()
	s.log.Warn("xds: closing the connection of a client that took no response", "timeout", s.sendTimeout, "peer", fanout.PeerAddr(st.Context()))
	s.conns.ClosePeer(st.Context())
}

// StreamAggregatedResources serves a state-of-the-world ADS stream.
func (s *Server) StreamAggregatedResources(st grpc.BidiStreamingServer[discoverypb.DiscoveryRequest, discoverypb.DiscoveryResponse]) error {
	return s.run(st.Context(), false, func(node bool) (request, error) {
		r := new(discoverypb.DiscoveryRequest)
		var m any = r
		if !node {
			m = &nodeLater{r}
		}
		err := st.RecvMsg(m)
		return request{sotw: r}, err
	}, func(r *response) error { return st.SendMsg(r.sotw) })
}

// DeltaAggregatedResources serves an incremental (delta) ADS stream.
func (s *Server) DeltaAggregatedResources(st grpc.BidiStreamingServer[discoverypb.DeltaDiscoveryRequest, discoverypb.DeltaDiscoveryResponse]) error {
	return s.run(st.Context(), true, func(node bool) (request, error) {
		r := new(discoverypb.DeltaDiscoveryRequest)
		var m any = r
		if !node {
			m = &nodeLater{r}
		}
		err := st.RecvMsg(m)
		return request{delta: r}, err
	}, func(r *response) error { return st.Send(r.delta) })
}

type request struct {
	sotw  *discoverypb.DiscoveryRequest
	delta *discoverypb.DeltaDiscoveryRequest
}

type response struct {
	sotw  *rawResponse // SotW responses are written in wire form (sotwWire)
	delta *discoverypb.DeltaDiscoveryResponse
}

// run serves one stream: requests are read on a goroutine of their own and
// handled here; responses are sent from here (answers to requests) and
// from the fan-out engine's send jobs (changes), one at a time under the
// stream's lock.
//
// recv reads the next request; with node false it may leave the request's
// node out (it is read from the first request only).
func (s *Server) run(ctx context.Context, delta bool, recv func(node bool) (request, error), send func(*response) error) error {
	if s.drain.Err() != nil {
		return status.Error(codes.Unavailable, "server is shutting down")
	}
	if err := s.admitStream(); err != nil {
		return err
	}
	defer s.open.Add(-1)
	s.streams.Add(1)
	defer s.streams.Done()
	proto := "sotw"
	if delta {
		proto = "delta"
	}
	s.metrics.streams.WithLabelValues(proto).Inc()
	defer s.metrics.streams.WithLabelValues(proto).Dec()
	s.waitSynced(ctx)

	x := &stream{srv: s, ctx: ctx, delta: delta, send: send, id: s.ids.Add(1), byName: map[string]*authSub{}, failed: make(chan error, 1)}
	if s.sendTimeout > 0 {
		x.sending = s.stalls.Add(ctx)
		defer s.stalls.Remove(x.sending)
	}
	defer x.close()

	// The handler's goroutine reads and handles the requests; changes are
	// sent by the fan-out engine's send jobs. A stream ends when its
	// client leaves or its connection closes: a stalled client's (the
	// stall watch), or every one when the gRPC server stops (after Drain).
	for {
		// x.node is written by handle, on this goroutine.
		r, err := recv(!x.node)
		if err != nil {
			select {
			case ferr := <-x.failed:
				return ferr
			default:
			}
			if s.drain.Err() != nil {
				return status.Error(codes.Unavailable, "server is shutting down; reconnect")
			}
			return nil // io.EOF or a cancelled stream: the client left
		}
		if s.drain.Err() != nil {
			return status.Error(codes.Unavailable, "server is shutting down; reconnect")
		}
		if err := x.handle(r); err != nil {
			return err
		}
	}
}

// admit takes a slot for a new stream, or refuses it with
// ResourceExhausted and a retry delay: over MaxStreams, or over the rate of
// new streams (a reconnect storm is spread out).
func (s *Server) admitStream() error {
	if n := s.open.Add(1); s.maxStreams > 0 && n > s.maxStreams {
		s.open.Add(-1)
		s.metrics.refused.Inc()
		return admit.RetryLater(s.admission.FullDelay(), "%d xDS streams open, the configured maximum", s.maxStreams)
	}
	if ok, d := s.admission.Admit(); !ok {
		s.open.Add(-1)
		s.metrics.refused.Inc()
		return admit.RetryLater(d, "too many new xDS streams per second")
	}
	return nil
}

func (s *Server) waitSynced(ctx context.Context) {
	if s.synced == nil {
		return
	}
	select {
	case <-s.synced:
		return
	default:
	}
	t := time.NewTimer(s.startup)
	defer t.Stop()
	select {
	case <-s.synced:
	case <-t.C:
		s.log.Warn("xds: answering before every source synced", "waited", s.startup)
	case <-ctx.Done():
	case <-s.drain.Done():
	}
}

// stream is one ADS stream's state.
type stream struct {
	srv     *Server
	ctx     context.Context
	id      uint64
	delta   bool
	send    func(*response) error
	sending *fanout.SendState // nil: no send timeout

	failOnce sync.Once
	failed   chan error // a send job's failed send

	mu      sync.Mutex // guards what follows, and every send
	node    bool       // the zone is known (first request seen)
	zone    string
	byName  map[string]*authSub  // the authorities followed, by resource name
	types   [numKinds]*typeState // nil until the type's first request
	nonce   uint64
	closing bool
	// inCatalog: the stream has joined the catalog (a wildcard
	// subscription); catalog is its newest list of authorities.
	inCatalog  bool
	catalog    []string
	catalogSeq uint64
}

// authSub is the stream's subscription to one authority's entry, shared by
// every resource type that names it.
type authSub struct {
	x     *stream
	name  string // host:port
	refs  int    // types subscribing
	entry *fanout.Entry[view]
	sub   *fanout.Subscriber[view]
	cur   *view // the newest view the fan-out engine handed over; nil until then
	gone  bool
}

// typeState is what the stream knows of one resource type.
type typeState struct {
	kind     kind
	started  bool // a request of this type was seen
	wildcard bool
	names    map[string]uint8 // subscribed names → who asked (byName, byWildcard)
	named    int              // names with byName
	// gone are names the catalog dropped that a delta client must be
	// told are removed.
	gone []string
	// sent maps a resource name to the version of it the client was last
	// sent ("" for delta: told it does not exist).
	sent    map[string]string
	nonce   string // of the last response
	version uint64 // SotW version_info counter
	acked   string // the last version the client accepted
	// answerPending: the first request waits for views to be answered.
	answerPending bool
}

// Send is the fan-out engine's send job for one authority of the stream:
// it sends the resources of every type that changed with the new view.
func (a *authSub) Send(_, cur *view) error {
	x := a.x
	x.mu.Lock()
	defer x.mu.Unlock()
	if a.gone || x.closing {
		return nil
	}
	a.cur = cur
	for _, t := range x.types {
		if t != nil && t.started && t.subscribed(a.name) {
			if err := x.flush(t, false, a.name); err != nil {
				x.fail(err)
				return err
			}
		}
	}
	return nil
}

// sameSubscription reports whether a request leaves t's subscription as
// it is.
func (t *typeState) sameSubscription(sotw *discoverypb.DiscoveryRequest, subscribe, unsubscribe []string, initial map[string]string) bool {
	if sotw == nil {
		return len(subscribe) == 0 && len(unsubscribe) == 0 && len(initial) == 0
	}
	names := sotw.GetResourceNames()
	if len(names) == 0 {
		return t.named == 0 && (!t.wildcard || t.kind.fullState())
	}
	if len(names) != t.named+btoi(t.wildcard) {
		return false
	}
	for _, n := range names {
		if n == "*" {
			if !t.wildcard {
				return false
			}
		} else if t.names[n]&byName == 0 {
			return false
		}
	}
	return true
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (t *typeState) subscribed(name string) bool {
	return t.names[name] != 0
}

// close ends every subscription of the stream.
func (x *stream) close() {
	x.mu.Lock()
	x.closing = true
	subs := make([]*authSub, 0, len(x.byName))
	for _, a := range x.byName {
		a.gone = true
		subs = append(subs, a)
	}
	x.byName = nil
	inCatalog := x.inCatalog
	x.mu.Unlock()
	if inCatalog {
		x.srv.catalog.leave(x)
	}
	for _, a := range subs {
		if a.sub != nil {
			x.srv.hub.Unsubscribe(a.sub)
		}
		x.srv.hub.Release(a.entry)
	}
}

// fail is called by a send job whose send failed: the stream ends.
func (x *stream) fail(err error) {
	x.failOnce.Do(func() { x.failed <- err })
}

// handle processes one request.
func (x *stream) handle(r request) error {
	var (
		typeURL     string
		nonce       string
		errDetail   *status.Status
		node        *corepb.Node
		subscribe   []string
		unsubscribe []string
		sotwNames   []string
		initialVers map[string]string
	)
	if r.delta != nil {
		d := r.delta
		typeURL, nonce, node = d.GetTypeUrl(), d.GetResponseNonce(), d.GetNode()
		if d.GetErrorDetail() != nil {
			errDetail = status.FromProto(d.GetErrorDetail())
		}
		subscribe, unsubscribe, initialVers = d.GetResourceNamesSubscribe(), d.GetResourceNamesUnsubscribe(), d.GetInitialResourceVersions()
	} else {
		q := r.sotw
		typeURL, nonce, node = q.GetTypeUrl(), q.GetResponseNonce(), q.GetNode()
		if q.GetErrorDetail() != nil {
			errDetail = status.FromProto(q.GetErrorDetail())
		}
		sotwNames = q.GetResourceNames()
	}
	k, ok := kindOf(typeURL)
	if !ok {
		x.srv.metrics.badRequests.Inc()
		return status.Errorf(codes.InvalidArgument, "unknown resource type %q (served: listeners, route configurations, clusters, cluster load assignments, v3)", typeURL)
	}
	x.mu.Lock()
	if !x.node {
		x.node = true
		x.zone = x.srv.settings.zoneOf(node.GetId(), node.GetCluster(), node.GetLocality().GetZone())
	}
	t := x.types[k]
	if t == nil { // made with the type's first request: most streams ask for one type
		t = &typeState{kind: k, names: map[string]uint8{}, sent: map[string]string{}}
		x.types[k] = t
	}
	if nonce != "" && t.nonce != "" { // a nonce of an earlier stream counts for nothing
		switch {
		case nonce != t.nonce && r.delta != nil:
			// A stale nonce on a delta stream: the ACK or NACK is of an
			// older response, but the subscription changes it carries are
			// sent once only, so they are applied.
			x.srv.metrics.staleNonces.Inc()
		case nonce != t.nonce:
			// A stale nonce (SotW): the client answers a response it has
			// since been sent a newer one of; its next request, with
			// that nonce, carries its whole subscription again (xDS
			// protocol, "Resource updates and nonces").
			x.srv.metrics.staleNonces.Inc()
			x.mu.Unlock()
			return nil
		case errDetail != nil:
			x.srv.metrics.nacks.WithLabelValues(kindNames[k]).Inc()
			x.srv.log.Warn("xds: client rejected a response (NACK); it keeps its last accepted state", "type", kindNames[k],
				"nonce", nonce, "error", errDetail.Message(), "peer", fanout.PeerAddr(x.ctx))
		case r.sotw != nil:
			t.acked = r.sotw.GetVersionInfo()
		}
	}
	first := !t.started
	t.started = true
	if !first && t.sameSubscription(r.sotw, subscribe, unsubscribe, initialVers) {
		// An ACK or NACK that changes nothing: what changes is pushed by
		// the fan-out engine, not answered here.
		x.mu.Unlock()
		return nil
	}

	// The subscription change: names are kept with who asked for them
	// (named, or the wildcard's catalog); an authority is followed while
	// some type names it.
	var release []*authSub
	if r.delta != nil {
		wild := t.wildcard
		if first && len(subscribe) == 0 && k.fullState() {
			wild = true // legacy wildcard: the first request names nothing
		}
		for _, n := range subscribe {
			if n == "*" {
				wild = true
				continue
			}
			x.setName(t, n, byName, true, &release)
		}
		for _, n := range unsubscribe {
			if n == "*" {
				wild = false
				continue
			}
			if t.names[n]&byName != 0 {
				delete(t.sent, n)
			}
			x.setName(t, n, byName, false, &release)
		}
		x.setWildcard(t, wild, &release)
		for n, v := range initialVers {
			if _, ok := t.names[n]; ok && v != "" {
				t.sent[n] = "=" + v // what the client holds: sent again only if it differs
			}
		}
	} else {
		want := map[string]bool{}
		wild := false
		for _, n := range sotwNames {
			if n == "*" {
				wild = true
			} else {
				want[n] = true
			}
		}
		if len(sotwNames) == 0 && (first || t.wildcard) && k.fullState() {
			wild = true
		}
		for n, by := range t.names {
			if by&byName != 0 && !want[n] {
				delete(t.sent, n) // the client forgets what it unsubscribes from
				x.setName(t, n, byName, false, &release)
			}
		}
		for n := range want {
			x.setName(t, n, byName, true, &release)
		}
		x.setWildcard(t, wild, &release)
	}
	// Answer what can be answered now: the resources whose views are
	// known; the others follow when their first view is built.
	err := x.flush(t, nonce == "" || t.nonce == "", "")
	x.mu.Unlock()
	x.srv.releaseAll(release)
	return err
}

// Who subscribes a type to a name: the client by name, or the wildcard.
const (
	byName uint8 = 1 << iota
	byWildcard
)

// setName adds or removes one reason for t to follow name, following or
// leaving its authority when the first reason comes or the last goes;
// subscriptions to end are added to release (ended outside the lock).
// x.mu held.
func (x *stream) setName(t *typeState, name string, by uint8, on bool, release *[]*authSub) {
	old := t.names[name]
	nw := old &^ by
	if on {
		nw = old | by
	}
	if by == byName && nw != old {
		if on {
			t.named++
		} else {
			t.named--
		}
	}
	switch {
	case nw == old:
		return
	case nw == 0:
		delete(t.names, name)
		if a := x.unref(name); a != nil {
			*release = append(*release, a)
		}
	default:
		t.names[name] = nw
		if old == 0 {
			x.ref(name)
		}
	}
}

// setWildcard turns t's wildcard subscription on or off: while on, t
// follows every authority in the registry's catalog.
func (x *stream) setWildcard(t *typeState, on bool, release *[]*authSub) {
	if on == t.wildcard {
		return
	}
	t.wildcard = on
	if on {
		if !x.inCatalog {
			x.inCatalog = true
			x.catalog, x.catalogSeq = x.srv.catalog.join(x)
		}
		for _, n := range x.catalog {
			x.setName(t, n, byWildcard, true, release)
		}
		return
	}
	for n, by := range t.names {
		if by&byWildcard != 0 {
			x.setName(t, n, byWildcard, false, release)
			if t.names[n] == 0 {
				delete(t.sent, n) // the client forgets what it unsubscribes from
			}
		}
	}
}

// catalogChanged is the catalog's news for a stream with a wildcard
// subscription: names is every authority now in the registry.
func (x *stream) catalogChanged(seq uint64, names []string) {
	x.mu.Lock()
	if x.closing || seq <= x.catalogSeq {
		x.mu.Unlock()
		return // gone, or a newer list was applied already
	}
	x.catalog, x.catalogSeq = names, seq
	in := make(map[string]bool, len(names))
	for _, n := range names {
		in[n] = true
	}
	var release []*authSub
	var err error
	for _, t := range x.types {
		if t == nil || !t.wildcard {
			continue
		}
		for n, by := range t.names {
			if by&byWildcard != 0 && !in[n] {
				x.setName(t, n, byWildcard, false, &release)
				if by == byWildcard && x.delta {
					t.gone = append(t.gone, n)
				}
			}
		}
		for _, n := range names {
			x.setName(t, n, byWildcard, true, &release)
		}
		if e := x.flush(t, false, ""); e != nil && err == nil {
			err = e
		}
	}
	x.mu.Unlock()
	x.srv.releaseAll(release)
	if err != nil {
		x.fail(err)
	}
}

func (s *Server) releaseAll(subs []*authSub) {
	for _, a := range subs {
		s.hub.Unsubscribe(a.sub)
		s.hub.Release(a.entry)
	}
}

// authority is the authority a resource name stands for: host:port in
// canonical form (discovery.ParseAuthority's), or false for any other
// name, which names no resource.
func authority(name string) (discovery.Authority, bool) {
	a, err := discovery.ParseAuthority(name, 0)
	if err != nil || a.Port == 0 || a.String() != name {
		return discovery.Authority{}, false
	}
	return a, true
}

// ref takes a reference to name's authority for one more type, following
// it from the first. x.mu held: the subscription's first send waits for it.
func (x *stream) ref(name string) {
	if s := x.byName[name]; s != nil {
		s.refs++
		return
	}
	a, ok := authority(name)
	if !ok {
		return
	}
	s := &authSub{x: x, name: name, refs: 1}
	s.entry = x.srv.hub.Acquire(fanout.Key{Authority: a, Zone: x.zone})
	s.sub = x.srv.hub.Subscribe(s.entry, s) // a failed send ends the stream (authSub.Send)
	x.byName[name] = s
}

// unref drops one type's reference; it returns the subscription to end
// (outside the lock) when it was the last.
func (x *stream) unref(name string) *authSub {
	s := x.byName[name]
	if s == nil {
		return nil
	}
	s.refs--
	if s.refs > 0 {
		return nil
	}
	s.gone = true
	delete(x.byName, name)
	return s
}

// flush sends the client what of type t differs from what it holds. With
// answer, a SotW response is sent even when nothing changed (the answer to
// the first request, so that the client knows its state is current). only,
// when set, is the one name whose view changed. Called with x.mu held.
func (x *stream) flush(t *typeState, answer bool, only string) error {
	if answer || t.answerPending {
		// The first answer waits for the first view of every name, so
		// that it is the state (the views take a registry read).
		for n := range t.names {
			if _, _, known := x.current(t.kind, n); !known {
				t.answerPending = true
				return nil
			}
		}
		t.answerPending, answer, only = false, true, ""
	}
	if only != "" {
		_, ver, known := x.current(t.kind, only)
		old, held := t.sent[only]
		if !known || (held && (old == ver || old == "="+ver)) || (!held && ver == "") {
			return nil // nothing the client sees changed
		}
		if !t.kind.fullState() || x.delta {
			return x.flushNames(t, []string{only})
		}
	}
	if x.delta {
		return x.flushNames(t, nil)
	}
	return x.flushSotW(t, answer)
}

// current is the resource of kind k under name, with its version, or
// false when it does not exist (or is not known yet: known is false).
func (x *stream) current(k kind, name string) (v *view, version string, known bool) {
	s, ok := x.byName[name]
	if !ok {
		if _, valid := authority(name); !valid {
			return nil, "", true // never exists
		}
		return nil, "", false
	}
	if s.cur == nil {
		return nil, "", false
	}
	return s.cur, s.cur.resourceVersion(k, x.srv), true
}

func (x *stream) flushSotW(t *typeState, answer bool) error {
	var res [][]byte
	changed := false
	newSent := map[string]string{}
	for name := range t.names {
		v, ver, known := x.current(t.kind, name)
		if !known {
			if old, ok := t.sent[name]; ok {
				newSent[name] = old // not known yet: keep what the client holds
			}
			continue
		}
		old, held := t.sent[name]
		switch {
		case ver == "" && held && t.kind == kindEndpoint:
			// SotW cannot remove a cluster load assignment: send it empty.
			res = append(res, emptyAssignment(name))
			changed = true
		case ver == "":
			changed = changed || held
		default:
			newSent[name] = ver
			if !held || old != ver {
				changed = true
				_, w := v.resource(t.kind, x.srv)
				res = append(res, w)
			} else if t.kind.fullState() {
				_, w := v.resource(t.kind, x.srv)
				res = append(res, w)
			}
		}
	}
	for name := range t.sent {
		if _, ok := newSent[name]; !ok && t.names[name] == 0 {
			changed = true // left the wildcard's catalog: the full state drops it
		}
	}
	t.sent = newSent
	if !changed && !answer {
		return nil
	}
	return x.respondSotW(t, res)
}

// respondSotW sends a SotW response of t's type with res.
// The resources are marshalled Anys, shared: the response is written
// around them (sotwWire) rather than marshalled again per stream.
func (x *stream) respondSotW(t *typeState, res [][]byte) error {
	t.version++
	x.nonce++
	t.nonce = strconv.FormatUint(x.nonce, 10)
	b := sotwWire(strconv.FormatUint(t.version, 10), res, typeURLs[t.kind], t.nonce)
	return x.sendLocked(t.kind, &response{sotw: &rawResponse{bufs: b}}, len(res))
}

// flushNames sends the resources among names (nil: every subscribed name)
// that differ from what the client holds: the delta protocol, and SotW
// for the types whose responses need not carry every resource.
func (x *stream) flushNames(t *typeState, names []string) error {
	if names == nil {
		names = make([]string, 0, len(t.names))
		for n := range t.names {
			names = append(names, n)
		}
	}
	if !x.delta {
		var res [][]byte
		for _, name := range names {
			v, ver, known := x.current(t.kind, name)
			old, held := t.sent[name]
			switch {
			case !known || (held && old == ver):
			case ver == "":
				if held {
					delete(t.sent, name)
					if t.kind == kindEndpoint {
						res = append(res, emptyAssignment(name))
					}
				}
			default:
				t.sent[name] = ver
				_, w := v.resource(t.kind, x.srv)
				res = append(res, w)
			}
		}
		if len(res) == 0 {
			return nil
		}
		return x.respondSotW(t, res)
	}
	var res []*discoverypb.Resource
	var removed []string
	for _, n := range t.gone {
		if t.names[n] != 0 {
			continue // named too: still followed
		}
		if old, held := t.sent[n]; held && old != "" {
			removed = append(removed, n)
		}
		delete(t.sent, n)
	}
	t.gone = nil
	for _, name := range names {
		v, ver, known := x.current(t.kind, name)
		if !known {
			continue
		}
		old, held := t.sent[name]
		if ver == "" {
			// Told once: a name asked for that does not exist, or a
			// resource the client holds that went away.
			if (held && old != "") || (!held && t.names[name]&byName != 0) {
				removed = append(removed, name)
				t.sent[name] = ""
			}
			continue
		}
		if held && (old == ver || old == "="+ver) {
			t.sent[name] = ver
			continue
		}
		t.sent[name] = ver
		a, _ := v.resource(t.kind, x.srv)
		res = append(res, &discoverypb.Resource{Name: name, Version: ver, Resource: a})
	}
	if len(res) == 0 && len(removed) == 0 {
		return nil
	}
	x.nonce++
	t.nonce = strconv.FormatUint(x.nonce, 10)
	resp := &discoverypb.DeltaDiscoveryResponse{
		SystemVersionInfo: strconv.FormatUint(x.nonce, 10),
		Resources:         res,
		RemovedResources:  removed,
		TypeUrl:           typeURLs[t.kind],
		Nonce:             t.nonce,
	}
	return x.sendLocked(t.kind, &response{delta: resp}, len(res)+len(removed))
}

// sendLocked sends one response, watched by the stall watch. x.mu held.
func (x *stream) sendLocked(k kind, r *response, n int) error {
	if x.closing {
		return nil
	}
	if x.sending != nil {
		x.sending.Begin()
	}
	err := x.send(r)
	if x.sending != nil {
		x.sending.End()
		if err != nil && x.sending.Stalled() {
			err = status.Errorf(codes.Unavailable, "client took no response for %v; connection closed", x.srv.sendTimeout)
		}
	}
	if err != nil {
		return err
	}
	x.srv.metrics.pushed[k].Inc()
	x.srv.metrics.resourcesSent[k].Add(float64(n))
	return nil
}
