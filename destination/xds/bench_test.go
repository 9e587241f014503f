package xds

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// BenchmarkPush: one endpoint change delivered to 200 SotW EDS streams (on
// 4 connections) that ACK every response; ns/op is per change, so divide by
// 200 for a delivery. Client and server share the process. The service has
// 2 endpoints without labels, or 10 with the two labels of the bench source
// (the size of tributary-bench's CLAs).
func BenchmarkPush(b *testing.B) {
	b.Run("endpoints=2", func(b *testing.B) { benchPush(b, 2, false) })
	b.Run("endpoints=10,labels", func(b *testing.B) { benchPush(b, 10, true) })
}

func benchPush(b *testing.B, n int, labels bool) {
	const streams, conns = 200, 4
	store := cache.New()
	srv := New(Options{Store: store})
	g := grpc.NewServer(ServerOptions()...)
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = g.Serve(srv.Listener(ln)) }()
	defer func() { srv.Drain(); g.Stop(); srv.Wait() }()
	apply := func(i int) {
		eps := []discovery.Endpoint{ep(fmt.Sprintf("10.1.%d.%d:80", i/250%250, i%250))}
		for j := 1; j < n; j++ {
			eps = append(eps, ep(fmt.Sprintf("10.0.0.%d:80", j)))
		}
		if labels {
			for j := range eps {
				eps[j].Labels = map[string]string{"bench_seq": fmt.Sprint(1000000 + i*n + j), "bench_ts": fmt.Sprint(1765000000000000000 + i)}
			}
		}
		if _, err := store.Apply("file", []discovery.Group{group("web", "web.demo", 80, eps...)}); err != nil {
			b.Fatal(err)
		}
	}
	apply(0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got sync.WaitGroup
	var wg sync.WaitGroup
	for c := range conns {
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		client := discoverypb.NewAggregatedDiscoveryServiceClient(conn)
		for range streams / conns {
			st, err := client.StreamAggregatedResources(ctx)
			if err != nil {
				b.Fatal(err)
			}
			_ = c
			got.Add(1)
			if err := st.Send(&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, ResourceNames: []string{"web.demo:80"}}); err != nil {
				b.Fatal(err)
			}
			wg.Go(func() {
				for {
					r, err := st.Recv()
					if err != nil {
						return
					}
					_ = st.Send(&discoverypb.DiscoveryRequest{TypeUrl: TypeEndpoint, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: []string{"web.demo:80"}})
					got.Done()
				}
			})
		}
	}
	got.Wait()
	b.ResetTimer()
	for i := range b.N {
		got.Add(streams)
		apply(i + 1)
		got.Wait()
	}
	b.StopTimer()
	cancel()
	wg.Wait()
}
