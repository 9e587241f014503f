//go:build integration

package register

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// TestExpiryUnder5000Streams: 5,000 Get streams (over 5 connections) watch
// one registered endpoint; its lease runs out and every stream is told.
// The spread of the deliveries is logged, not asserted.
func TestExpiryUnder5000Streams(t *testing.T) {
	const conns, perConn = 5, 1000
	s := harness.Start(t, t.TempDir(), memorySource)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var added, withdrawn sync.WaitGroup
	var mu sync.Mutex
	var at []time.Time
	var wg sync.WaitGroup
	errs := make(chan error, conns*perConn)
	for range conns {
		conn, err := grpc.NewClient(s.API, grpc.WithTransportCredentials(insecure.NewCredentials()))
		must(t, err)
		defer conn.Close()
		client := pb.NewDestinationClient(conn)
		for range perConn {
			stream, err := client.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: "web.vm.test:8080"})
			must(t, err)
			added.Add(1)
			withdrawn.Add(1)
			wg.Go(func() {
				seen := false
				for {
					u, err := stream.Recv()
					if err != nil {
						if ctx.Err() == nil {
							errs <- err
						}
						return
					}
					switch d := harness.Describe(u); {
					case d == "add:127.0.0.1:18090" && !seen:
						seen = true
						added.Done()
					case d == "none:false" && seen:
						now := time.Now()
						mu.Lock()
						at = append(at, now)
						mu.Unlock()
						withdrawn.Done()
						return
					}
				}
			})
		}
	}
	defer wg.Wait()
	defer cancel()
	regAt := time.Now()
	_, err := client(t, s).Register(ctx, web("127.0.0.1:18090", 2*time.Second))
	must(t, err)
	waitGroup(t, &added, errs, "every stream saw the registration")
	waitGroup(t, &withdrawn, errs, "every stream saw the expiry")
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	t.Logf("5,000 streams told of the expiry within %v of each other (first %v after registration, TTL 2s)",
		at[len(at)-1].Sub(at[0]).Round(time.Millisecond), at[0].Sub(regAt).Round(10*time.Millisecond))
}

func waitGroup(t *testing.T, wg *sync.WaitGroup, errs chan error, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case err := <-errs:
		t.Fatalf("a stream ended: %v", err)
	case <-time.After(4 * harness.WaitFor):
		t.Fatalf("not every stream: %s", what)
	}
}
