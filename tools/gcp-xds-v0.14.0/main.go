// Command gcp-xds is the comparison server of `tributary-bench steady --api
// xds`: go-control-plane v0.14.0's own xDS server (pkg/server/v3) over its
// LinearCache for ClusterLoadAssignments (pkg/cache/v3), fed by the same
// synthetic `bench` source that runs inside `tributary serve`. Both servers
// thus get the identical stream of changes at the identical rate, driven
// through the same control API, and the tool measures both the same way.
//
// It is a measuring instrument, built and started by tributary-bench; it
// is not part of Tributary. It takes what a straightforward go-control-plane
// user would write: one CLA per service, updated with UpdateResources from
// one goroutine that applies the source's coalesced groups (as Tributary's
// manager does: the source never waits for the cache), and the default
// server options.
//
//	gcp-xds --xds 127.0.0.1:18000 --admin 127.0.0.1:9996 --control 127.0.0.1:9997 \
//	    --services 1000 --endpoints 10 --host 'svc-%d.bench:8080' --seed 1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/sources/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gcp-xds:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		xdsAddr, adminAddr, control, host string
		services, endpoints               int
		seed                              uint64
	)
	flag.StringVar(&xdsAddr, "xds", "127.0.0.1:18000", "xDS (ADS, EDS) gRPC listen address")
	flag.StringVar(&adminAddr, "admin", "127.0.0.1:9996", "admin HTTP: /readyz /metrics /debug/pprof/")
	flag.StringVar(&control, "control", "127.0.0.1:9997", "the bench source's control API (loopback)")
	flag.StringVar(&host, "host", bench.DefaultHost, "bench authority pattern")
	flag.IntVar(&services, "services", 1000, "bench services")
	flag.IntVar(&endpoints, "endpoints", 10, "endpoints per service")
	flag.Uint64Var(&seed, "seed", 1, "seed of the bench source's changes")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg := bench.DefaultConfig()
	cfg.Services, cfg.Endpoints, cfg.Host, cfg.Seed = services, endpoints, host, seed
	cfg.Paused, cfg.Control = true, control
	src, err := bench.NewSource(cfg, discovery.BuildContext{Name: "bench", Logger: log})
	if err != nil {
		return err
	}

	lc := cache.NewLinearCache(resource.EndpointType)
	sink := newSink(lc)
	var wg sync.WaitGroup
	wg.Go(func() { sink.apply(ctx) })
	wg.Go(func() { src.Run(ctx, sink) })

	xds := server.NewServer(ctx, lc, nil)
	gs := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xds)
	lis, err := net.Listen("tcp", xdsAddr)
	if err != nil {
		return err
	}
	wg.Go(func() { _ = gs.Serve(lis) })

	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !sink.ready.Load() {
			http.Error(w, "bench source not handed over yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	adminSrv := &http.Server{Addr: adminAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	adminLis, err := net.Listen("tcp", adminAddr)
	if err != nil {
		return err
	}
	wg.Go(func() { _ = adminSrv.Serve(adminLis) })
	log.Info("go-control-plane v0.14.0 LinearCache xDS server", "xds", xdsAddr, "admin", adminAddr, "control", control)

	<-ctx.Done()
	gs.Stop()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = adminSrv.Shutdown(sctx)
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// sink is the bench source's discovery.Sink: it coalesces the groups
// handed over (newest per key wins) and wakes one applier, so that the
// source, like in Tributary, never waits for the cache.
type sink struct {
	lc    *cache.LinearCache
	ready atomic.Bool

	mu       sync.Mutex
	pending  map[string]discovery.Group
	replace  bool
	wake     chan struct{}
	lastKeys map[string]bool // applier only: CLA names last set
}

func newSink(lc *cache.LinearCache) *sink {
	return &sink{lc: lc, pending: map[string]discovery.Group{}, wake: make(chan struct{}, 1)}
}

func (s *sink) Update(groups ...discovery.Group) {
	s.mu.Lock()
	for _, g := range groups {
		s.pending[g.Key] = g
	}
	s.mu.Unlock()
	s.signal()
}

func (s *sink) Replace(groups []discovery.Group) {
	s.mu.Lock()
	clear(s.pending)
	for _, g := range groups {
		s.pending[g.Key] = g
	}
	s.replace = true
	s.mu.Unlock()
	s.signal()
}

func (s *sink) Healthy()     {}
func (s *sink) Failed(error) {}

func (s *sink) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// apply moves pending groups into the LinearCache until ctx ends.
func (s *sink) apply(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		s.mu.Lock()
		groups, replace := s.pending, s.replace
		s.pending, s.replace = make(map[string]discovery.Group, len(groups)), false
		s.mu.Unlock()
		res := make(map[string]types.Resource)
		for _, g := range groups {
			for _, svc := range g.Services {
				name := svc.Authority.String()
				res[name] = loadAssignment(name, svc.Endpoints)
			}
		}
		if replace {
			s.lc.SetResources(res)
			s.ready.Store(true)
			continue
		}
		if err := s.lc.UpdateResources(res, nil); err != nil {
			slog.Error("LinearCache update", "err", err)
		}
	}
}

// loadAssignment is a service's CLA: one locality per zone, every endpoint
// with its weight, health and labels in metadata (filter_metadata
// "tributary", field "labels"), as Tributary's own EDS encodes them.
func loadAssignment(name string, eps []discovery.Endpoint) *endpointv3.ClusterLoadAssignment {
	byZone := map[string]*endpointv3.LocalityLbEndpoints{}
	var order []string
	for i := range eps {
		e := &eps[i]
		l := byZone[e.Zone]
		if l == nil {
			l = &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: e.Zone}}
			byZone[e.Zone] = l
			order = append(order, e.Zone)
		}
		labels := make(map[string]any, len(e.Labels))
		for k, v := range e.Labels {
			labels[k] = v
		}
		md, _ := structpb.NewStruct(map[string]any{"labels": labels})
		health := corev3.HealthStatus_HEALTHY
		if e.Health == discovery.HealthCritical {
			health = corev3.HealthStatus_UNHEALTHY
		}
		l.LbEndpoints = append(l.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       e.Addr.Addr().String(),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(e.Addr.Port())},
				}}},
			}},
			HealthStatus:        health,
			LoadBalancingWeight: wrapperspb.UInt32(e.EffectiveWeight()),
			Metadata:            &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"tributary": md}},
		})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	for _, z := range order {
		l := byZone[z]
		var w uint32
		for _, e := range l.LbEndpoints {
			w += e.GetLoadBalancingWeight().GetValue()
		}
		l.LoadBalancingWeight = wrapperspb.UInt32(max(w, 1))
		cla.Endpoints = append(cla.Endpoints, l)
	}
	return cla
}
