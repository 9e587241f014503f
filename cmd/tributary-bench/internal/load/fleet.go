package load

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tributary-mesh/tributary/cmd/tributary-bench/internal/hist"
	"github.com/tributary-mesh/tributary/sources/bench"
)

// Fleet is the client side: C gRPC connections carrying W Get streams.
// Each stream has one goroutine that receives and replays its updates into
// a compact map (address -> weight and bench_seq), as a proxy would, and
// records the latency of every change it is told about.
type Fleet struct {
	ctx     context.Context
	cancel  context.CancelFunc
	conns   []*grpc.ClientConn
	clients []pb.DestinationClient
	paths   []string // Get path of service i
	codec   *sharedDecoder
	wg      sync.WaitGroup
	// ads and xds are set for xDS streams (NewXDSFleet; xds.go).
	ads []discoverygrpc.AggregatedDiscoveryServiceClient
	xds *xdsState

	mu       sync.Mutex
	watchers []*watcher

	rec        recorder
	msgs       atomic.Uint64 // messages received
	deliveries atomic.Uint64 // changes received (bench_seq new to the stream), outside first messages
	streamErrs atomic.Uint64 // streams that failed to open or ended early
	refused    atomic.Uint64 // refusals (ResourceExhausted) retried
	contract   atomic.Uint64 // messages that broke the destination contract
	exMu       sync.Mutex
	examples   []string // the first few errors, for the report
}

// watcher is one Get stream and what its client holds.
type watcher struct {
	svc int
	// done is closed at the first message, or when the stream fails
	// before one; ok tells which.
	done    chan struct{}
	ok      atomic.Bool
	openNs  int64  // before the Get call
	refused uint64 // refusals (ResourceExhausted) before the stream was admitted
	firstNs int64  // receipt of the first message; read after done

	mu      sync.Mutex
	started bool
	exists  bool
	eps     map[uint64]epState
}

// epState is what a client holds of one endpoint.
type epState struct {
	seq    uint64
	weight uint32
}

// clientOptions are the dial options of the tool's connections. The HTTP/2
// windows are static, as linkerd2-proxy's client (Rust h2, no adaptive
// window) and Envoy's are: grpc-go's default instead probes the bandwidth-
// delay product with a PING after received data, and every such PING costs the
// server a read, an ack and a write syscall that a real proxy never asks for.
func clientOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(clientStreamWindow),
		grpc.WithInitialConnWindowSize(clientConnWindow),
	}
}

const (
	clientStreamWindow = 1 << 16 // h2's default
	clientConnWindow   = 1 << 20
)

// NewFleet dials conns connections to api (lazily; see Connect). paths[i]
// is the Get path of service i.
func NewFleet(api string, conns int, paths []string) (*Fleet, error) {
	if conns < 1 {
		return nil, errors.New("need at least one connection")
	}
	if len(paths) == 0 {
		return nil, errors.New("the bench source has no services to watch")
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Fleet{ctx: ctx, cancel: cancel, paths: paths, codec: newSharedDecoder()}
	for range conns {
		cc, err := grpc.NewClient(api, clientOptions()...)
		if err != nil {
			f.Close()
			return nil, err
		}
		f.conns = append(f.conns, cc)
		f.clients = append(f.clients, pb.NewDestinationClient(cc))
	}
	return f, nil
}

// Connect establishes every connection, so that stream timings do not
// include TCP and HTTP/2 handshakes.
func (f *Fleet) Connect(ctx context.Context, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for i, cc := range f.conns {
		cc.Connect()
		for st := cc.GetState(); st != connectivity.Ready; st = cc.GetState() {
			if !cc.WaitForStateChange(ctx, st) {
				return fmt.Errorf("connection %d not ready after %v (state %v)", i, bound, st)
			}
		}
	}
	return nil
}

// Close ends every stream and connection and waits for the receivers.
func (f *Fleet) Close() {
	f.cancel()
	for _, cc := range f.conns {
		cc.Close()
	}
	f.wg.Wait()
}

// Len is the number of streams opened.
func (f *Fleet) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.watchers)
}

// add creates n watchers; watcher i (over the fleet's life) watches
// service i mod S and uses connection i mod C.
func (f *Fleet) add(n int) (ws []*watcher, first int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	first = len(f.watchers)
	for i := range n {
		w := &watcher{svc: (first + i) % len(f.paths), done: make(chan struct{})}
		f.watchers = append(f.watchers, w)
		ws = append(ws, w)
	}
	return ws, first
}

// open starts watcher w's stream on connection conn and its receiver.
func (f *Fleet) open(w *watcher, conn int) {
	if f.xds != nil {
		f.openXDS(w, conn)
		return
	}
	w.openNs = time.Now().UnixNano()
	client := f.clients[conn%len(f.clients)]
	stream, err := client.Get(f.ctx, f.request(w), grpc.ForceCodecV2(f.codec))
	if err != nil {
		f.streamFailed(w, err)
		return
	}
	f.wg.Go(func() { f.receive(w, client, stream) })
}

func (f *Fleet) request(w *watcher) *pb.GetDestination {
	return &pb.GetDestination{Scheme: "k8s", Path: f.paths[w.svc]}
}

// OpenMany opens n streams as fast as the client can, one opener per
// connection, without waiting for answers. It returns the streams and the
// time the first Get was called.
func (f *Fleet) OpenMany(n int) ([]*watcher, int64) {
	ws, first := f.add(n)
	start := time.Now().UnixNano()
	var wg sync.WaitGroup
	c := len(f.clients)
	for k := range c {
		wg.Go(func() {
			for i := k; i < n; i += c {
				f.open(ws[i], first+i)
			}
		})
	}
	wg.Wait()
	return ws, start
}

// Storm opens n streams from n goroutines released at once; it returns the
// streams and the release time.
func (f *Fleet) Storm(n int) ([]*watcher, int64) {
	ws, first := f.add(n)
	release := make(chan struct{})
	var ready, wg sync.WaitGroup
	for i, w := range ws {
		ready.Add(1)
		wg.Go(func() {
			ready.Done()
			<-release
			f.open(w, first+i)
		})
	}
	ready.Wait()
	start := time.Now().UnixNano()
	close(release)
	wg.Wait()
	return ws, start
}

// OpenOne opens one stream and waits (at most bound) for its first message;
// it returns the time from the Get call to that message.
func (f *Fleet) OpenOne(bound time.Duration) (time.Duration, error) {
	ws, first := f.add(1)
	w := ws[0]
	f.open(w, first)
	select {
	case <-w.done:
	case <-time.After(bound):
		return 0, fmt.Errorf("no first message within %v", bound)
	}
	if !w.ok.Load() {
		return 0, errors.New("stream failed before its first message")
	}
	return time.Duration(w.firstNs - w.openNs), nil
}

// WaitFirst waits until every stream of ws has its first message (or
// failed), at most until deadline. It returns how many got one and when
// the last of them arrived.
func (f *Fleet) WaitFirst(ws []*watcher, deadline time.Time) (synced int, last int64) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for _, w := range ws {
		select {
		case <-w.done:
		case <-timer.C:
			return f.countSynced(ws)
		}
	}
	return f.countSynced(ws)
}

func (f *Fleet) countSynced(ws []*watcher) (synced int, last int64) {
	for _, w := range ws {
		select {
		case <-w.done:
			if w.ok.Load() {
				synced++
				last = max(last, w.firstNs)
			}
		default:
		}
	}
	return synced, last
}

// FirstLatencies records each stream's Get-to-first-message time into h.
func FirstLatencies(ws []*watcher, h *hist.Histogram) {
	for _, w := range ws {
		select {
		case <-w.done:
			if w.ok.Load() {
				h.Record(w.firstNs - w.openNs)
			}
		default:
		}
	}
}

func (f *Fleet) streamFailed(w *watcher, err error) {
	if f.ctx.Err() != nil {
		return // we are closing
	}
	f.streamErrs.Add(1)
	f.example("stream %s: %v", f.paths[w.svc], err)
	select {
	case <-w.done:
	default:
		close(w.done)
	}
}

func (f *Fleet) example(format string, args ...any) {
	f.exMu.Lock()
	defer f.exMu.Unlock()
	if len(f.examples) < 5 {
		f.examples = append(f.examples, fmt.Sprintf(format, args...))
	}
}

// RefusedStreams counts the streams refused at least once and the most
// refusals one stream had. Call it once the streams are done opening.
func (f *Fleet) RefusedStreams() (streams, most uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.watchers {
		w.mu.Lock()
		n := w.refused
		w.mu.Unlock()
		if n > 0 {
			streams++
			most = max(most, n)
		}
	}
	return streams, most
}

// Examples returns the first errors seen, for the report.
func (f *Fleet) Examples() []string {
	f.exMu.Lock()
	defer f.exMu.Unlock()
	return append([]string(nil), f.examples...)
}

// receive replays a stream until it ends. A stream refused with
// ResourceExhausted before its first message (the server's admission
// limit) is retried after the delay the server asks for, plus jitter, as a
// proxy would; its first-message time still counts from the first attempt.
func (f *Fleet) receive(w *watcher, client pb.DestinationClient, stream grpc.ServerStreamingClient[pb.Update]) {
	for {
		u, err := stream.Recv()
		now := time.Now().UnixNano()
		if err != nil {
			if w.started || status.Code(err) != codes.ResourceExhausted || f.ctx.Err() != nil {
				f.streamFailed(w, err)
				return
			}
			f.refused.Add(1)
			w.mu.Lock()
			w.refused++
			w.mu.Unlock()
			delay := retryDelay(err)
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(delay + rand.N(delay/2+1)):
			}
			if stream, err = client.Get(f.ctx, f.request(w), grpc.ForceCodecV2(f.codec)); err != nil {
				f.streamFailed(w, err)
				return
			}
			continue
		}
		f.msgs.Add(1)
		if f.apply(w, u, now) {
			w.firstNs = now
			w.ok.Store(true)
			close(w.done)
		}
	}
}

// retryDelay is the RetryInfo delay of a refusal, within 10ms..5s;
// 100ms when it has none.
func retryDelay(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return min(max(ri.GetRetryDelay().AsDuration(), 10*time.Millisecond), 5*time.Second)
		}
	}
	return 100 * time.Millisecond
}

// apply folds one update into w, checking the destination contract, and
// records the latency of every change it brings; it reports whether it was
// the stream's first message.
func (f *Fleet) apply(w *watcher, u *pb.Update, now int64) (first bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	first = !w.started
	w.started = true
	if w.eps == nil {
		w.eps = make(map[uint64]epState)
	}
	switch x := u.GetUpdate().(type) {
	case *pb.Update_Add:
		addrs := x.Add.GetAddrs()
		if len(addrs) == 0 {
			f.violation(w, "empty add")
		}
		w.exists = true
		for _, wa := range addrs {
			key, ok := addrKey(wa.GetAddr())
			if !ok {
				f.violation(w, "add with an address that is not IPv4")
				continue
			}
			labels := wa.GetMetricLabels()
			seq, err := strconv.ParseUint(labels[bench.LabelSeq], 10, 64)
			if err != nil {
				f.violation(w, "endpoint without a bench_seq label")
			}
			old, had := w.eps[key]
			w.eps[key] = epState{seq: seq, weight: wa.GetWeight()}
			if first || seq == 0 || (had && old.seq == seq) {
				continue
			}
			if ts, err := strconv.ParseInt(labels[bench.LabelTS], 10, 64); err == nil {
				f.deliveries.Add(1)
				f.rec.record(ts, now)
			}
		}
	case *pb.Update_Remove:
		addrs := x.Remove.GetAddrs()
		if first {
			f.violation(w, "remove as the first message")
		}
		if len(addrs) == 0 {
			f.violation(w, "empty remove")
		}
		for _, a := range addrs {
			key, ok := addrKey(a)
			if !ok {
				f.violation(w, "remove with an address that is not IPv4")
				continue
			}
			delete(w.eps, key)
		}
	case *pb.Update_NoEndpoints:
		w.exists = x.NoEndpoints.GetExists()
		clear(w.eps)
	default:
		f.violation(w, "update with no content")
	}
	return first
}

func (f *Fleet) violation(w *watcher, what string) {
	f.contract.Add(1)
	f.example("contract: %s: %s", f.paths[w.svc], what)
}

// addrKey packs an IPv4 address and port; the bench source generates IPv4.
func addrKey(a *pbnet.TcpAddress) (uint64, bool) {
	ip, ok := a.GetIp().GetIp().(*pbnet.IPAddress_Ipv4)
	if !ok || a.GetPort() == 0 || a.GetPort() > 65535 {
		return 0, false
	}
	return uint64(ip.Ipv4)<<16 | uint64(a.GetPort()), true
}

func addrPortKey(ap netip.AddrPort) (uint64, bool) {
	if !ap.Addr().Is4() {
		return 0, false
	}
	b := ap.Addr().As4()
	v := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	return v<<16 | uint64(ap.Port()), true
}

// Verify compares every stream's state with the truth and returns how many
// differ, with a description of the first few.
func (f *Fleet) Verify(t bench.Truth) (mismatched int, examples []string, err error) {
	want := make([]map[uint64]epState, len(t.Services))
	for i, s := range t.Services {
		m := make(map[uint64]epState, len(s.Endpoints))
		for _, e := range s.Endpoints {
			ap, err := netip.ParseAddrPort(e.Addr)
			if err != nil {
				return 0, nil, fmt.Errorf("truth: %s: %w", s.Authority, err)
			}
			key, ok := addrPortKey(ap)
			if !ok {
				return 0, nil, fmt.Errorf("truth: %s: %s is not IPv4", s.Authority, e.Addr)
			}
			seq := e.Seq
			if f.xds != nil && f.xds.unlabelled.Load() {
				seq = 0 // xds.go: the server sends no labels
			}
			m[key] = epState{seq: seq, weight: e.Weight}
		}
		want[i] = m
	}
	f.mu.Lock()
	ws := append([]*watcher(nil), f.watchers...)
	f.mu.Unlock()
	for _, w := range ws {
		if w.svc >= len(want) {
			return 0, nil, fmt.Errorf("truth has %d services, a stream watches service %d", len(want), w.svc)
		}
		if why := w.differs(want[w.svc]); why != "" {
			mismatched++
			if len(examples) < 3 {
				examples = append(examples, fmt.Sprintf("%s: %s", f.paths[w.svc], why))
			}
		}
	}
	return mismatched, examples, nil
}

// differs describes how w's state differs from want; "" when equal.
func (w *watcher) differs(want map[uint64]epState) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !w.started:
		return "no message received"
	case !w.exists:
		return "told the service does not exist"
	case len(w.eps) != len(want):
		return fmt.Sprintf("holds %d endpoints, truth has %d", len(w.eps), len(want))
	}
	for k, v := range w.eps {
		if wv, ok := want[k]; !ok {
			return fmt.Sprintf("holds %s, which the truth does not have", keyString(k))
		} else if wv != v {
			return fmt.Sprintf("%s: holds seq %d weight %d, truth seq %d weight %d", keyString(k), v.seq, v.weight, wv.seq, wv.weight)
		}
	}
	return ""
}

func keyString(k uint64) string {
	ip := uint32(k >> 16)
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), uint16(k)).String()
}

// recorder sends each change's latency to the histogram of the phase in
// which the change was made (by its bench_ts), so that a change made just
// before a phase boundary and received after it counts in its own phase.
type recorder struct {
	phases atomic.Pointer[[]phase]
}

type phase struct {
	start int64
	h     *hist.Histogram
}

// begin starts a phase for changes stamped from start on.
func (r *recorder) begin(start int64) *hist.Histogram {
	h := new(hist.Histogram)
	var ps []phase
	if p := r.phases.Load(); p != nil {
		ps = append(ps, *p...)
	}
	ps = append(ps, phase{start: start, h: h})
	r.phases.Store(&ps)
	return h
}

// end stops recording.
func (r *recorder) end() { r.phases.Store(nil) }

func (r *recorder) record(ts, now int64) {
	p := r.phases.Load()
	if p == nil {
		return
	}
	ps := *p
	for i := len(ps) - 1; i >= 0; i-- {
		if ts >= ps[i].start {
			ps[i].h.Record(now - ts)
			return
		}
	}
}
