//go:build integration

package kubernetes

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/tributary-mesh/tributary/destination"
)

const (
	benchEndpoints = 10 // per Service
	benchWriters   = 32 // concurrent creates
)

// benchAddr is endpoint j of Service i (10.200.0.0 on, 10.201.… past the
// 65,536th).
func benchAddr(i, j int) string {
	n := i*benchEndpoints + j
	return netip.AddrFrom4([4]byte{10, byte(200 + n>>16), byte(n >> 8), byte(n)}).String()
}

// BenchmarkKubernetesStartup measures a tributary start against a real API
// server holding 2,000 Services × 10 endpoints: the time from `tributary
// serve` starting to /readyz answering 200 (ready-s), to the first Get
// that answers a Service with all its endpoints (first-answer-s), and the
// process's resident memory then (rss-MiB). Filling the API server is
// measured apart (fill-s). Run it once:
//
//	go test -tags integration -run '^$' -bench KubernetesStartup -benchtime 1x ./integration/kubernetes/
//
// TRIBUTARY_BENCH_HEAPPROFILE=FILE saves tributary's heap profile at the end.
func BenchmarkKubernetesStartup(b *testing.B) { kubeStartup(b, 2000) }

// BenchmarkKubernetesLargeEstate is issue #17's Kubernetes estate: 10,000
// Services × 10 endpoints (100,000), with the same figures; its target is
// ready-s ≤ 5.
func BenchmarkKubernetesLargeEstate(b *testing.B) { kubeStartup(b, 10000) }

func kubeStartup(b *testing.B, services int) {
	c, err := newCluster(b, peerBinaries(b), "bench", 1)
	if err != nil {
		b.Fatal(err)
	}
	cs := c.admin(b)
	const ns = "bench"
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	fillStart := time.Now()
	if err := fill(cs, ns, services); err != nil {
		b.Fatal(err)
	}
	fillTime := time.Since(fillStart)

	dir := b.TempDir()
	kc := c.kubeconfig(b, dir, tributaryToken)
	probe := fmt.Sprintf("svc-%d.%s.svc.cluster.local:80", services-1, ns)
	want := map[string]bool{}
	for j := 0; j < benchEndpoints; j++ {
		want[benchAddr(services-1, j)+":8080"] = true
	}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		runDir, err := os.MkdirTemp(dir, "run")
		if err != nil {
			b.Fatal(err)
		}
		heapProfile := os.Getenv("TRIBUTARY_BENCH_HEAPPROFILE")
		var args []string
		if heapProfile != "" {
			args = append(args, "--pprof")
		}
		start := time.Now()
		p := startUnready(b, runDir, source("bench", kc), args...)
		var wg sync.WaitGroup
		var ready, answer time.Duration
		var answerErr error
		wg.Go(func() {
			deadline := start.Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				if code, _ := httpGet(p.admin, "/readyz"); code == 200 {
					ready = time.Since(start)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
		wg.Go(func() { answer, answerErr = firstCorrectAnswer(p.api, probe, want, start) })
		wg.Wait()
		if ready == 0 || answerErr != nil {
			b.Fatalf("ready after %v; first answer: %v\n%s", ready, answerErr, p.logs.String())
		}
		rss, ok := metricValue(b, p.admin, "process_resident_memory_bytes")
		v, err := strconv.ParseFloat(rss, 64)
		if !ok || err != nil {
			b.Fatalf("process_resident_memory_bytes: %q %v", rss, err)
		}
		b.ReportMetric(ready.Seconds(), "ready-s")
		b.ReportMetric(answer.Seconds(), "first-answer-s")
		b.ReportMetric(v/(1<<20), "rss-MiB")
		if heap, ok := metricValue(b, p.admin, "go_memstats_heap_inuse_bytes"); ok {
			if h, err := strconv.ParseFloat(heap, 64); err == nil {
				b.ReportMetric(h/(1<<20), "heap-inuse-MiB")
			}
		}
		if heapProfile != "" {
			// For looking into rss-MiB: go tool pprof -sample_index=inuse_space FILE
			_, body := httpGet(p.admin, "/debug/pprof/heap?gc=1")
			if err := os.WriteFile(heapProfile, []byte(body), 0o644); err != nil {
				b.Error(err)
			}
		}
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	b.ReportMetric(fillTime.Seconds(), "fill-s")
}

// fill creates the Services and their EndpointSlices with benchWriters
// concurrent writers.
func fill(cs *k8s.Clientset, ns string, services int) error {
	ctx := context.Background()
	jobs := make(chan int)
	errc := make(chan error, benchWriters)
	var wg sync.WaitGroup
	for w := 0; w < benchWriters; w++ {
		wg.Go(func() {
			for i := range jobs {
				name := "svc-" + strconv.Itoa(i)
				_, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{svcPort("http", 80, intstr.FromString("http"))}},
				}, metav1.CreateOptions{})
				if err != nil {
					errc <- fmt.Errorf("service %s: %w", name, err)
					return
				}
				eps := make([]discoveryv1.Endpoint, benchEndpoints)
				for j := range eps {
					eps[j] = ep(benchAddr(i, j), zone("zone-"+strconv.Itoa(j%3)))
				}
				_, err = cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
					ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
					AddressType: discoveryv1.AddressTypeIPv4,
					Ports:       []discoveryv1.EndpointPort{slicePort("http", 8080)},
					Endpoints:   eps,
				}, metav1.CreateOptions{})
				if err != nil {
					errc <- fmt.Errorf("endpointslice %s-1: %w", name, err)
					return
				}
			}
		})
	}
	var err error
feed:
	for i := 0; i < services; i++ {
		select {
		case jobs <- i:
		case err = <-errc:
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	return err
}

// firstCorrectAnswer opens Get streams on probe until one's first message
// is exactly the Service's endpoints, and returns the time since start.
func firstCorrectAnswer(api, probe string, want map[string]bool, start time.Time) (time.Duration, error) {
	// The server is not listening yet when this starts: reconnect every
	// few milliseconds rather than after gRPC's default 1 s backoff, which
	// would be measured instead of tributary.
	conn, err := grpc.NewClient(api, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1, MaxDelay: 5 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	client := pb.NewDestinationClient(conn)
	deadline := start.Add(2 * time.Minute)
	last := "nothing"
	for time.Now().Before(deadline) {
		ok, got := func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := client.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: probe})
			if err != nil {
				return false, err.Error()
			}
			u, err := st.Recv()
			if err != nil {
				return false, err.Error()
			}
			var set destination.EndpointSet
			if err := set.Apply(u); err != nil {
				return false, err.Error()
			}
			if len(set.Addrs) != len(want) {
				return false, fmt.Sprintf("%d addresses", len(set.Addrs))
			}
			for a := range set.Addrs {
				if !want[a.String()] {
					return false, "unexpected " + a.String()
				}
			}
			return true, ""
		}()
		if ok {
			return time.Since(start), nil
		}
		last = got
		time.Sleep(5 * time.Millisecond)
	}
	return 0, fmt.Errorf("no correct answer for %s within 2 minutes; last: %s", probe, last)
}
