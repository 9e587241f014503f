package load

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/tributary-mesh/tributary/sources/bench"
)

// The xDS side of the fleet (--api xds): each watcher is one ADS stream
// (state of the world) subscribed to one ClusterLoadAssignment, named by
// the service's authority, as an Envoy or a proxyless gRPC client's EDS
// subscription is. The stream ACKs every response, replaces what it holds
// with the CLA it received (SotW: every response carries the whole
// resource), and records the latency of every endpoint whose bench_seq is
// new to it, from the bench_ts the source stamped at hand-over: the same
// instrument as the destination API's Get streams.

// claType is the type URL of a ClusterLoadAssignment.
const claType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

// NewXDSFleet dials conns connections to an xDS server at addr; paths[i]
// is the CLA name (authority) of service i; delta makes the streams
// incremental (xds_delta.go).
func NewXDSFleet(addr string, conns int, paths []string, delta bool) (*Fleet, error) {
	f, err := NewFleet(addr, conns, paths)
	if err != nil {
		return nil, err
	}
	f.xds = &xdsState{delta: delta, views: make(map[string]*claView)}
	for _, cc := range f.conns {
		f.ads = append(f.ads, discoverygrpc.NewAggregatedDiscoveryServiceClient(cc))
	}
	return f, nil
}

// xdsState is what the xDS streams of a fleet share: the decoded CLAs by
// their bytes. The streams of one service receive the same resource bytes
// for the same state (the version and nonce are outside them), so each is
// decoded once, which leaves the machine's CPU to the server under test.
// Views are read-only once built.
type xdsState struct {
	// delta: the streams use incremental xDS (DeltaAggregatedResources).
	delta bool

	mu    sync.Mutex
	views map[string]*claView
	// unlabelled is set once a CLA's endpoints came without the bench
	// labels: the server does not send an endpoint's labels. Latencies
	// cannot be measured then, and the final state is checked by address
	// and weight only.
	unlabelled atomic.Bool
}

// claView is one decoded CLA: every endpoint with the bench labels.
type claView struct {
	name string
	eps  map[uint64]epState
	ts   map[uint64]int64 // bench_ts by endpoint
	bad  string           // why the CLA breaks the contract; "" when it does not
	// unlabelled: an endpoint came without a bench_seq label.
	unlabelled bool
}

func (x *xdsState) view(b []byte) (*claView, error) {
	x.mu.Lock()
	v, ok := x.views[string(b)]
	x.mu.Unlock()
	if ok {
		return v, nil
	}
	var cla endpointv3.ClusterLoadAssignment
	if err := proto.Unmarshal(b, &cla); err != nil {
		return nil, err
	}
	v = decodeCLA(&cla)
	x.mu.Lock()
	if len(x.views) >= maxShared {
		clear(x.views)
	}
	x.views[string(b)] = v
	x.mu.Unlock()
	return v, nil
}

// decodeCLA reads a CLA's endpoints: address, weight, and the bench_seq
// and bench_ts labels wherever the server put them in the endpoint's
// metadata (any filter_metadata namespace, at any depth).
func decodeCLA(cla *endpointv3.ClusterLoadAssignment) *claView {
	v := &claView{name: cla.GetClusterName(), eps: map[uint64]epState{}, ts: map[uint64]int64{}}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			switch e.GetHealthStatus() {
			case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
			default:
				v.bad = fmt.Sprintf("endpoint health %v; the bench's endpoints are all passing", e.GetHealthStatus())
				continue
			}
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil || sa.GetPortValue() == 0 || sa.GetPortValue() > 65535 {
				v.bad = fmt.Sprintf("endpoint address %q port %d", sa.GetAddress(), sa.GetPortValue())
				continue
			}
			key, ok := addrPortKey(netip.AddrPortFrom(ip, uint16(sa.GetPortValue())))
			if !ok {
				v.bad = "an endpoint address that is not IPv4"
				continue
			}
			seqS, tsS := findLabel(e.GetMetadata(), bench.LabelSeq), findLabel(e.GetMetadata(), bench.LabelTS)
			seq, err := strconv.ParseUint(seqS, 10, 64)
			if err != nil {
				v.unlabelled = true
			}
			if ts, err := strconv.ParseInt(tsS, 10, 64); err == nil {
				v.ts[key] = ts
			}
			w := e.GetLoadBalancingWeight().GetValue()
			v.eps[key] = epState{seq: seq, weight: w}
		}
	}
	return v
}

// findLabel looks for a string (or number) field named key in every
// filter_metadata struct of md, nested structs included.
func findLabel(md *corev3.Metadata, key string) string {
	for _, s := range md.GetFilterMetadata() {
		if v, ok := findInStruct(s, key, 3); ok {
			return v
		}
	}
	return ""
}

func findInStruct(s *structpb.Struct, key string, depth int) (string, bool) {
	if s == nil || depth == 0 {
		return "", false
	}
	if v, ok := s.GetFields()[key]; ok {
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			return x.StringValue, true
		case *structpb.Value_NumberValue:
			return strconv.FormatFloat(x.NumberValue, 'f', -1, 64), true
		}
	}
	for _, v := range s.GetFields() {
		if sub := v.GetStructValue(); sub != nil {
			if r, ok := findInStruct(sub, key, depth-1); ok {
				return r, true
			}
		}
	}
	return "", false
}

// openXDS starts watcher w's ADS stream on connection conn and its
// receiver: the first request subscribes to the service's CLA.
func (f *Fleet) openXDS(w *watcher, conn int) {
	w.openNs = time.Now().UnixNano()
	client := f.ads[conn%len(f.ads)]
	if f.xds.delta {
		stream, err := f.subscribeDelta(client, w, conn)
		if err != nil {
			f.streamFailed(w, err)
			return
		}
		f.wg.Go(func() { f.receiveDelta(w, client, conn, stream) })
		return
	}
	stream, err := f.subscribeXDS(client, w, conn)
	if err != nil {
		f.streamFailed(w, err)
		return
	}
	f.wg.Go(func() { f.receiveXDS(w, client, conn, stream) })
}

type adsStream = grpc.BidiStreamingClient[discoverygrpc.DiscoveryRequest, discoverygrpc.DiscoveryResponse]

func (f *Fleet) subscribeXDS(client discoverygrpc.AggregatedDiscoveryServiceClient, w *watcher, conn int) (adsStream, error) {
	stream, err := client.StreamAggregatedResources(f.ctx)
	if err != nil {
		return nil, err
	}
	req := &discoverygrpc.DiscoveryRequest{
		Node:          benchNode(conn),
		TypeUrl:       claType,
		ResourceNames: []string{f.paths[w.svc]},
	}
	if err := stream.Send(req); err != nil {
		return nil, err
	}
	return stream, nil
}

// benchNode is the node of the streams of connection conn (no zone: the
// bench's endpoints have none).
func benchNode(conn int) *corev3.Node {
	return &corev3.Node{Id: "tributary-bench-" + strconv.Itoa(conn), Cluster: "tributary-bench"}
}

// retryRefused handles a stream's receive error: a refusal
// (ResourceExhausted) before the first response waits for the delay the
// server asks for and reports true (subscribe again); anything else marks
// the stream failed and reports false.
func (f *Fleet) retryRefused(w *watcher, err error) bool {
	if w.started || status.Code(err) != codes.ResourceExhausted || f.ctx.Err() != nil {
		f.streamFailed(w, err)
		return false
	}
	f.refused.Add(1)
	w.mu.Lock()
	w.refused++
	w.mu.Unlock()
	delay := retryDelay(err)
	select {
	case <-f.ctx.Done():
		return false
	case <-time.After(delay + rand.N(delay/2+1)):
	}
	return true
}

// receiveXDS replays a stream until it ends, ACKing every response. A
// stream refused (ResourceExhausted) before its first response is retried
// after the delay the server asks for, as receive does.
func (f *Fleet) receiveXDS(w *watcher, client discoverygrpc.AggregatedDiscoveryServiceClient, conn int, stream adsStream) {
	names := []string{f.paths[w.svc]}
	for {
		r, err := stream.Recv()
		now := time.Now().UnixNano()
		if err != nil {
			if !f.retryRefused(w, err) {
				return
			}
			if stream, err = f.subscribeXDS(client, w, conn); err != nil {
				f.streamFailed(w, err)
				return
			}
			continue
		}
		f.msgs.Add(1)
		first, err := f.applyXDS(w, r, now)
		if err != nil {
			f.streamFailed(w, err)
			return
		}
		ack := &discoverygrpc.DiscoveryRequest{TypeUrl: claType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names}
		if err := stream.Send(ack); err != nil {
			f.streamFailed(w, err)
			return
		}
		if first {
			w.firstNs = now
			w.ok.Store(true)
			close(w.done)
		}
	}
}

// applyXDS folds one response into w, checking it, and records the
// latency of every endpoint whose bench_seq is new to the stream; it
// reports whether it was the stream's first response.
func (f *Fleet) applyXDS(w *watcher, r *discoverygrpc.DiscoveryResponse, now int64) (first bool, err error) {
	if r.GetTypeUrl() != claType {
		f.violation(w, "response of type "+r.GetTypeUrl())
		return false, nil
	}
	var view *claView
	for _, a := range r.GetResources() {
		if a.GetTypeUrl() != claType {
			f.violation(w, "resource of type "+a.GetTypeUrl())
			continue
		}
		v, err := f.xds.view(a.GetValue())
		if err != nil {
			return false, fmt.Errorf("ClusterLoadAssignment: %w", err)
		}
		if v.name != f.paths[w.svc] {
			f.violation(w, "a CLA of another cluster, "+v.name)
			continue
		}
		view = v
	}
	if r.GetVersionInfo() == "" || r.GetNonce() == "" {
		f.violation(w, "response without version or nonce")
	}
	return f.applyCLA(w, view, false, now), nil
}

// applyCLA folds a received CLA (nil: none; removed: the server said it
// no longer exists) into w, and records the latencies of the changes it
// brings; it reports whether it was the stream's first response.
func (f *Fleet) applyCLA(w *watcher, view *claView, removed bool, now int64) (first bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	first = !w.started
	w.started = true
	if view == nil {
		// SotW EDS may omit a resource that did not change (the spec lets a
		// server send only what changed for EDS); before any CLA, though,
		// the stream has nothing: the service does not exist.
		if first || removed {
			w.exists, w.eps = false, nil
		}
		return first
	}
	if view.bad != "" {
		f.violation(w, view.bad)
	}
	if view.unlabelled && !f.xds.unlabelled.Swap(true) {
		f.example("%s: the server's EDS endpoints carry no bench_seq/bench_ts labels in their metadata: no latency can be measured, and final states are checked by address and weight only", f.paths[w.svc])
	}
	old := w.eps
	w.exists, w.eps = true, view.eps // shared and read-only
	if first {
		return true
	}
	for k, e := range view.eps {
		if e.seq == 0 {
			continue
		}
		if o, had := old[k]; had && o.seq == e.seq {
			continue
		}
		if ts, ok := view.ts[k]; ok {
			f.deliveries.Add(1)
			f.rec.record(ts, now)
		}
	}
	return false
}
