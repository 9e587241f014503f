// Package destination serves Linkerd's destination gRPC API
// (io.linkerd.proxy.destination.Destination) from the registry: Get streams
// endpoint updates for an authority, GetProfile a minimal service profile.
package destination

import (
	"context"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination/fanout"
	"github.com/tributary-mesh/tributary/destination/internal/admit"
	"github.com/tributary-mesh/tributary/discovery"
)

// DefaultStartupTimeout bounds how long a stream waits for the sources to
// sync before its first answer; below the proxy's 3 s first-message timeout.
const DefaultStartupTimeout = 2 * time.Second

// Options configures a Server.
type Options struct {
	Store *cache.Store
	// Federation rules; nil means none (plain union by address).
	Federation *discovery.Federation
	// Synced is closed when every source has synced; nil means already synced.
	Synced <-chan struct{}
	// StartupTimeout bounds the wait for Synced; 0 means DefaultStartupTimeout.
	StartupTimeout time.Duration
	Logger         *slog.Logger
	// Metrics, when set, records stream and update counts.
	Metrics *Metrics
	// NodeZones, when set, gives the zone of a client that names its node
	// in the context token but not its zone.
	NodeZones discovery.NodeZoner

	// SendTimeout closes a stream whose client has not taken a message for
	// this long, with Unavailable: it reconnects and gets a fresh snapshot.
	// 0 means DefaultSendTimeout; negative disables the check.
	SendTimeout time.Duration
	// NewStreamsPerSecond and NewStreamsBurst rate-limit stream admission:
	// beyond them a new stream gets ResourceExhausted with a retry delay, so
	// a reconnect storm is spread out instead of exhausting memory. A rate
	// of 0 means DefaultNewStreamsPerSecond, a negative rate disables the
	// limit; a burst of 0 is one second's worth of the rate, so that a rate
	// set alone limits a storm from its first second.
	NewStreamsPerSecond float64
	NewStreamsBurst     int
	// MaxStreams bounds open streams; beyond it new streams get
	// ResourceExhausted with a retry delay. 0 means DefaultMaxStreams; a
	// negative value, no bound.
	MaxStreams int

	// VirtualIPs turn a virtual IP back into its service: the DNS
	// interface's virtual IPs, a Kubernetes source's ClusterIPs.
	// GetProfile(VIP:port) answers as GetProfile(host:port), so that a
	// proxy that discovers by the IP the application dialled calls Get
	// with the service's name. They are asked in order; the first that
	// knows the IP answers.
	VirtualIPs []VirtualIPs

	// now and jitter, when set, replace the clock and math/rand in
	// admission (tests).
	now    func() time.Time
	jitter func(n int64) int64
}

// VirtualIPs maps virtual IPs (the DNS interface's, destination/vip, or a
// Kubernetes Service's cluster IPs) to the hosts they stand for.
type VirtualIPs interface {
	// LookupVIP returns the host ip stands for, and a channel that closes
	// when that may change.
	LookupVIP(ip netip.Addr) (host string, changed <-chan struct{}, ok bool)
}

// Admission and slow-client defaults.
const (
	DefaultSendTimeout         = 30 * time.Second
	DefaultNewStreamsPerSecond = 20000
	// DefaultMaxStreams bounds open streams: 1.5 times the 100,000 streams
	// of the scale target. An idle stream costs 8.3–9.5 KiB of RSS
	// (docs/performance.md), so this bounds the streams' share at about
	// 1.4 GiB.
	DefaultMaxStreams = 150000
)

// Server implements the Destination service. A Get stream subscribes to the
// hub entry of its service (see hub): the entry follows the registry, and
// on every change sends each of its streams the difference from what that
// stream last got to the newest state. Nothing is queued per stream, so a
// slow client costs only its last-sent state.
type Server struct {
	pb.UnimplementedDestinationServer

	store   *cache.Store
	fed     *discovery.Federation
	synced  <-chan struct{}
	startup time.Duration
	log     *slog.Logger
	metrics *Metrics
	zones   discovery.NodeZoner
	vips    []VirtualIPs
	hub     *hub

	sendTimeout time.Duration
	admit       *admit.Admission
	maxStreams  int64
	open        atomic.Int64
	conns       fanout.Conns
	stalls      *fanout.StallWatch
	// drain ends with Drain; every stream's context is tied to it.
	drain    context.Context
	drainNow context.CancelFunc
}

// NewServer returns a server; register it with Register.
func NewServer(opts Options) *Server {
	s := &Server{
		store:   opts.Store,
		fed:     opts.Federation,
		synced:  opts.Synced,
		startup: opts.StartupTimeout,
		log:     opts.Logger,
		metrics: opts.Metrics,
		zones:   opts.NodeZones,
		vips:    opts.VirtualIPs,

		sendTimeout: opts.SendTimeout,
		maxStreams:  int64(opts.MaxStreams),
	}
	if s.maxStreams == 0 {
		s.maxStreams = DefaultMaxStreams
	}
	if s.sendTimeout == 0 {
		s.sendTimeout = DefaultSendTimeout
	}
	s.stalls = fanout.NewStallWatch(s.sendTimeout, s.closeStalled)
	r := opts.NewStreamsPerSecond
	if r == 0 {
		r = DefaultNewStreamsPerSecond
	}
	s.admit = admit.New(r, opts.NewStreamsBurst, opts.now, opts.jitter) // r < 0: no rate limit
	s.drain, s.drainNow = context.WithCancel(context.Background())
	if s.fed == nil {
		s.fed, _ = discovery.NewFederation(nil, nil)
	}
	s.hub = newHub(s)
	if s.startup <= 0 {
		s.startup = DefaultStartupTimeout
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s
}

// Register adds the Destination service to a gRPC server, which must have
// been created with ServerOptions().
func (s *Server) Register(g *grpc.Server) { g.RegisterService(s.serviceDesc(), s) }

// Drain ends every open stream and refuses new ones with Unavailable, so
// that proxies reconnect elsewhere. Call it before grpc.Server.GracefulStop.
func (s *Server) Drain() { s.drainNow() }

// Wait blocks until the goroutines that follow the registry for open
// streams have stopped. They stop with their last stream, so call it after
// the gRPC server has stopped.
func (s *Server) Wait() {
	s.hub.Wait()
	s.stalls.Wait()
}

// Get streams endpoint updates for the authority in req.Path.
//
// The handler's goroutine only sets the stream up and waits for its end:
// the sends are made by the hub's send jobs (see hub), on short-lived
// goroutines. An idle stream's goroutine thus never goes deeper than this
// and keeps a 4 KiB stack (see serviceDesc), and a change costs each of
// its streams one job instead of waking the stream's goroutine.
func (s *Server) Get(req *pb.GetDestination, stream pb.Destination_GetServer) error {
	g, err := s.openGet(req, stream.Context())
	if err != nil {
		return err
	}
	defer s.closeGet(g)
	g.stream = stream
	g.sub = s.hub.Subscribe(g.entry, g)
	select {
	case err := <-g.sub.Failed():
		return err
	case <-g.ctx.Done():
		return nil
	case <-s.drain.Done():
		return s.ended(stream.Context())
	}
}

// getStream is an open Get stream's state outside its goroutine's stack.
// A Get stream ends with its own context or with Drain; it derives no
// context of its own (that cost every idle stream a cancelCtx and a drain
// callback).
type getStream struct {
	s       *Server
	start   time.Time
	ctx     context.Context // the stream's
	stream  grpc.ServerStream
	done    func()
	entry   *fanout.Entry[snapshot]
	sub     *fanout.Subscriber[snapshot]
	sending *fanout.SendState // nil: no send timeout
}

//go:noinline
func (s *Server) openGet(req *pb.GetDestination, streamCtx context.Context) (*getStream, error) {
	g := &getStream{s: s, start: time.Now()}
	a, err := parseGetPath(req.GetPath())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	tok, err := parseContextToken(req.GetContextToken())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if g.done, err = s.startStream(streamCtx, "Get"); err != nil {
		return nil, err
	}
	g.ctx = streamCtx
	g.entry = s.hub.Acquire(fanout.Key{Authority: a, Zone: s.clientZone(tok)})
	if s.sendTimeout > 0 {
		g.sending = s.stalls.Add(g.ctx)
	}
	return g, nil
}

//go:noinline
func (s *Server) closeGet(g *getStream) {
	if g.sub != nil {
		s.hub.Unsubscribe(g.sub)
	}
	if g.sending != nil {
		s.stalls.Remove(g.sending)
	}
	s.hub.Release(g.entry)
	g.done()
}

// Send is the stream's step in a send job of the fan-out engine: it sends
// what takes the client from prev (nil: nothing yet) to cur — the
// snapshot's shared, pre-encoded messages.
func (g *getStream) Send(prev, cur *snapshot) error {
	s := g.s
	msgs := cur.messagesFrom(prev)
	if len(msgs) == 0 {
		return nil
	}
	if err := s.send(g.sending, g.stream, msgs); err != nil {
		return err
	}
	if prev == nil {
		s.metrics.firstMessage("Get", time.Since(g.start))
	} else {
		s.metrics.propagated(time.Since(cur.view.changed))
	}
	return nil
}

// GetProfile streams a minimal profile for a service authority or an
// IP:port, and a new one whenever it changes.
func (s *Server) GetProfile(req *pb.GetDestination, stream pb.Destination_GetProfileServer) error {
	ps, err := s.openProfile(req, stream.Context())
	if err != nil {
		return err
	}
	defer ps.done()
	// As for Get (see serviceDesc): the reads and the send go deeper than a
	// stream's goroutine otherwise needs, so they run on a goroutine of
	// their own, and the stream's goroutine only waits on the watch set.
	for {
		ws := memdb.NewWatchSet()
		if err := onFreshStack(func() error { return s.profileStep(ps, stream, ws) }); err != nil {
			return err
		}
		if !waitAny(ps.ctx, ws) {
			return s.ended(stream.Context())
		}
	}
}

// waitAny waits until a channel of ws closes (true) or ctx ends (false).
// memdb's WatchSet.WatchCtx does the same with a 32-case select whose frame
// alone would double a waiting stream's stack to 8 KiB; a profile's watch
// set has a handful of channels, which fit in a small one.
func waitAny(ctx context.Context, ws memdb.WatchSet) bool {
	if len(ws) > 6 {
		return ws.WatchCtx(ctx) == nil
	}
	var ch [6]<-chan struct{} // nil channels never fire
	i := 0
	for c := range ws {
		ch[i] = c
		i++
	}
	select {
	case <-ch[0]:
	case <-ch[1]:
	case <-ch[2]:
	case <-ch[3]:
	case <-ch[4]:
	case <-ch[5]:
	case <-ctx.Done():
		return false
	}
	return true
}

// profileStream is an open GetProfile stream's state outside its
// goroutine's stack.
type profileStream struct {
	start time.Time
	ctx   context.Context // the stream's, ended by Drain too
	done  func()
	a     discovery.Authority
	ip    netip.AddrPort // valid: a profile for an endpoint address
	zone  string
	ns    string                 // the client's namespace (context token)
	last  *pb.DestinationProfile // what the stream was last sent
}

//go:noinline
func (s *Server) openProfile(req *pb.GetDestination, streamCtx context.Context) (*profileStream, error) {
	ps := &profileStream{start: time.Now()}
	var err error
	if ps.a, ps.ip, err = parseProfileTarget(req.GetPath()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	tok, err := parseContextToken(req.GetContextToken())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if ps.ctx, ps.done, err = s.begin(streamCtx, "GetProfile"); err != nil {
		return nil, err
	}
	ps.zone = s.clientZone(tok)
	ps.ns = tok.NS
	return ps, nil
}

// profileStep reads the profile, adding its watches to ws, and sends it if
// it differs from the last one sent.
func (s *Server) profileStep(ps *profileStream, stream grpc.ServerStream, ws memdb.WatchSet) error {
	var p *pb.DestinationProfile
	if host, ok := s.virtualIP(ws, ps.ip); ok {
		p = s.virtualIPProfile(ws, discovery.Authority{Host: host, Port: ps.ip.Port()}, ps.ns)
	} else if ps.ip.IsValid() {
		p = s.endpointProfile(ws, ps.ip, ps.zone)
	} else {
		p = s.serviceProfile(ws, ps.a, ps.ns)
	}
	if ps.last != nil && proto.Equal(ps.last, p) {
		return nil
	}
	if err := stream.SendMsg(p); err != nil {
		return err
	}
	s.metrics.sentProfile()
	if ps.last == nil {
		s.metrics.firstMessage("GetProfile", time.Since(ps.start))
	}
	ps.last = p
	return nil
}

// send writes a snapshot's messages. A client that does not take them
// within the send timeout has its connection closed (see Listener): gRPC
// buffers only 64 KiB per stream, so the write stays blocked otherwise, and
// closing the connection is what unblocks it. Its proxy reconnects and gets
// a fresh snapshot. The timer is armed only around the write.
func (s *Server) send(st *fanout.SendState, stream grpc.ServerStream, msgs []encoded) error {
	if len(msgs) == 0 {
		return nil
	}
	if st == nil {
		return sendAll(stream, msgs, s.metrics)
	}
	st.Begin()
	err := sendAll(stream, msgs, s.metrics)
	st.End()
	if err != nil && st.Stalled() {
		return status.Errorf(codes.Unavailable, "client took no update for %v; connection closed (reconnect for a fresh snapshot)", s.sendTimeout)
	}
	return err
}

// closeStalled is the stall watch's action on a stream whose send has been
// blocked for the send timeout.
func (s *Server) closeStalled(st *fanout.SendState) {
	s.metrics.slowClientClosed()
	s.log.Warn("closing the connection of a client that took no update", "timeout", s.sendTimeout, "peer", peerAddr(st.Context()))
	s.conns.ClosePeer(st.Context())
}

func sendAll(stream grpc.ServerStream, msgs []encoded, m *Metrics) error {
	for _, msg := range msgs {
		if err := stream.SendMsg(msg.msg); err != nil {
			return err
		}
		m.sentKind(msg.kind)
	}
	return nil
}

// begin admits a stream: refuses it while draining or over the admission
// limits, waits (bounded) for the sources to sync, and returns a context
// that ends with the stream or with Drain.
func (s *Server) begin(streamCtx context.Context, method string) (context.Context, func(), error) {
	done, err := s.startStream(streamCtx, method)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(streamCtx)
	stopWatch := context.AfterFunc(s.drain, cancel)
	return ctx, func() {
		stopWatch()
		cancel()
		done()
	}, nil
}

// startStream counts a new stream against the admission limits and waits, within
// the startup timeout, for the sources to sync. Call done when the stream
// ends.
func (s *Server) startStream(streamCtx context.Context, method string) (done func(), err error) {
	if s.drain.Err() != nil {
		return nil, status.Error(codes.Unavailable, "server is shutting down")
	}
	if err := s.admitStream(); err != nil {
		s.metrics.streamRefused(method)
		return nil, err
	}
	s.metrics.streamOpened(method)
	done = func() {
		s.open.Add(-1)
		s.metrics.streamClosed(method)
	}
	if s.synced != nil {
		select {
		case <-s.synced:
		default:
			timer := time.NewTimer(s.startup)
			select {
			case <-s.synced:
			case <-timer.C:
				s.log.Warn("answering before every source synced", "waited", s.startup)
			case <-streamCtx.Done():
			case <-s.drain.Done():
			}
			timer.Stop()
		}
	}
	return done, nil
}

// clientZone is the zone a client says it is in, or the zone of the node it
// names, when known.
func (s *Server) clientZone(tok contextToken) string {
	if tok.Zone != "" || tok.NodeName == "" || s.zones == nil {
		return tok.Zone
	}
	zone, _ := s.zones.NodeZone(tok.NodeName)
	return zone
}

// admitStream takes a slot for a new stream or says when to retry (see
// admission).
func (s *Server) admitStream() error {
	if n := s.open.Add(1); s.maxStreams > 0 && n > s.maxStreams {
		s.open.Add(-1)
		return admit.RetryLater(s.admit.FullDelay(), "%d streams open, the configured maximum", s.maxStreams)
	}
	if ok, d := s.admit.Admit(); !ok {
		s.open.Add(-1)
		return admit.RetryLater(d, "too many new streams per second")
	}
	return nil
}

// ended is a stream's return value once its context is done: nil when the
// client went away, Unavailable when the server drains.
func (s *Server) ended(streamCtx context.Context) error {
	if streamCtx.Err() != nil {
		return nil
	}
	return status.Error(codes.Unavailable, "server is shutting down; reconnect")
}

// view reads what is served for a from snap (members are a's federation
// members), adding watches to ws when it is not nil.
func (s *Server) view(snap *cache.Snapshot, ws memdb.WatchSet, a discovery.Authority, members []discovery.Authority) view {
	var v view
	var all []*discovery.Endpoint
	for _, m := range members {
		st := snap.Service(ws, m)
		v.version = max(v.version, st.Version)
		v.exists = v.exists || st.Exists
		v.opaque = v.opaque || st.Opaque
		if v.profile == nil && v.clients == nil {
			v.profile, v.clients = st.Profile, st.ClientProfiles
		}
		if st.Changed.After(v.changed) {
			v.changed = st.Changed
		}
		if len(members) == 1 {
			all = st.Endpoints
		} else {
			all = append(all, st.Endpoints...)
		}
	}
	v.endpoints = s.fed.Resolve(a, all)
	return v
}

// defaultRetryBudget is Linkerd's default: 20% extra load, at least 10
// retries per second, over a 10 s window.
func defaultRetryBudget() *pb.RetryBudget {
	return &pb.RetryBudget{RetryRatio: 0.2, MinRetriesPerSecond: 10, Ttl: durationpb.New(10 * time.Second)}
}

// serviceProfile is the profile of service a for a client in namespace ns
// (the context token's): the service's client profile for ns when it has
// one, else its own, as Linkerd prefers the ServiceProfile in the client's
// namespace.
func (s *Server) serviceProfile(ws memdb.WatchSet, a discovery.Authority, ns string) *pb.DestinationProfile {
	v := s.view(s.store.Snapshot(), ws, a, s.fed.Members(a))
	p := &pb.DestinationProfile{RetryBudget: defaultRetryBudget(), OpaqueProtocol: v.opaque}
	if v.exists {
		p.FullyQualifiedName = a.Host
		prof := v.profile
		if cp, ok := v.clients[ns]; ok && ns != "" {
			prof = cp
		}
		applyProfile(p, prof, a.Port)
	}
	return p
}

// virtualIPProfile is the profile of GetProfile(VIP:port) for the service
// a the VIP stands for: its name, opaque_protocol for the port and the
// retry budget, as Linkerd's controller answers for a ClusterIP
// (getProfileByIP). For a port the service does not serve, the profile is
// empty, again as Linkerd's (svcDefinesPort), so the proxy neither calls
// Get with the name nor treats the port as the service's.
func (s *Server) virtualIPProfile(ws memdb.WatchSet, a discovery.Authority, ns string) *pb.DestinationProfile {
	p := s.serviceProfile(ws, a, ns)
	if p.FullyQualifiedName == "" {
		return &pb.DestinationProfile{}
	}
	return p
}

// virtualIP returns the host ip is the virtual IP of, if it is one. ws
// watches every lookup asked, up to the one that answered: a change in any
// of them may change the answer.
func (s *Server) virtualIP(ws memdb.WatchSet, ip netip.AddrPort) (string, bool) {
	if !ip.IsValid() {
		return "", false
	}
	for _, l := range s.vips {
		host, changed, ok := l.LookupVIP(ip.Addr().Unmap())
		if changed != nil {
			ws.Add(changed)
		}
		if ok {
			return host, true
		}
	}
	return "", false
}

func (s *Server) endpointProfile(ws memdb.WatchSet, ip netip.AddrPort, clientZone string) *pb.DestinationProfile {
	p := &pb.DestinationProfile{RetryBudget: defaultRetryBudget()}
	matches := s.store.Snapshot().EndpointsByAddr(ws, ip)
	var best *cache.AddrMatch
	for i := range matches {
		m := &matches[i]
		if best == nil || (!best.Endpoint.Health.Serving() && m.Endpoint.Health.Serving()) {
			best = m
		}
	}
	if best == nil {
		return p
	}
	p.Endpoint = weightedAddr(best.Endpoint, clientZone)
	p.OpaqueProtocol = best.Endpoint.Protocol == discovery.ProtocolOpaque
	return p
}
