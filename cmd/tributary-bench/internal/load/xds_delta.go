package load

import (
	"fmt"
	"slices"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
)

// Incremental xDS (--xds-delta): the same subscription as the state of the
// world streams, on DeltaAggregatedResources. A response carries the CLA
// when it changed, or its name in removed_resources; an ACK is the nonce.

type deltaStream = grpc.BidiStreamingClient[discoverygrpc.DeltaDiscoveryRequest, discoverygrpc.DeltaDiscoveryResponse]

func (f *Fleet) subscribeDelta(client discoverygrpc.AggregatedDiscoveryServiceClient, w *watcher, conn int) (deltaStream, error) {
	stream, err := client.DeltaAggregatedResources(f.ctx)
	if err != nil {
		return nil, err
	}
	req := &discoverygrpc.DeltaDiscoveryRequest{Node: benchNode(conn), TypeUrl: claType, ResourceNamesSubscribe: []string{f.paths[w.svc]}}
	if err := stream.Send(req); err != nil {
		return nil, err
	}
	return stream, nil
}

// receiveDelta replays a delta stream until it ends, ACKing every response.
func (f *Fleet) receiveDelta(w *watcher, client discoverygrpc.AggregatedDiscoveryServiceClient, conn int, stream deltaStream) {
	for {
		r, err := stream.Recv()
		now := time.Now().UnixNano()
		if err != nil {
			if !f.retryRefused(w, err) {
				return
			}
			if stream, err = f.subscribeDelta(client, w, conn); err != nil {
				f.streamFailed(w, err)
				return
			}
			continue
		}
		f.msgs.Add(1)
		first, err := f.applyDelta(w, r, now)
		if err != nil {
			f.streamFailed(w, err)
			return
		}
		if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: claType, ResponseNonce: r.GetNonce()}); err != nil {
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

// applyDelta folds one delta response into w, checking it.
func (f *Fleet) applyDelta(w *watcher, r *discoverygrpc.DeltaDiscoveryResponse, now int64) (first bool, err error) {
	if r.GetTypeUrl() != claType {
		f.violation(w, "response of type "+r.GetTypeUrl())
		return false, nil
	}
	name := f.paths[w.svc]
	var view *claView
	for _, res := range r.GetResources() {
		if res.GetName() != name {
			f.violation(w, "a resource not subscribed to, "+res.GetName())
			continue
		}
		if res.GetVersion() == "" {
			f.violation(w, "a resource without a version")
		}
		a := res.GetResource()
		if a.GetTypeUrl() != claType {
			f.violation(w, "resource of type "+a.GetTypeUrl())
			continue
		}
		v, err := f.xds.view(a.GetValue())
		if err != nil {
			return false, fmt.Errorf("ClusterLoadAssignment: %w", err)
		}
		if v.name != name {
			f.violation(w, "a CLA of another cluster, "+v.name)
			continue
		}
		view = v
	}
	removed := slices.Contains(r.GetRemovedResources(), name)
	if removed && view != nil {
		f.violation(w, "a resource both sent and removed")
	}
	if r.GetNonce() == "" {
		f.violation(w, "response without a nonce")
	}
	return f.applyCLA(w, view, removed, now), nil
}
