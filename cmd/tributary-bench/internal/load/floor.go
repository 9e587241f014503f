package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tributary-mesh/tributary/sources/bench"

	// The proto codec registers itself; floorCodec delegates to it.
	_ "google.golang.org/grpc/encoding/proto"
)

// The floors of the two streaming APIs: what any gRPC server of that API
// pays on this machine per delivery and per stream, measured with the
// least server there can be. It is this executable re-run with FloorArg:
// a grpc-go server that sends each new stream one pre-marshalled message
// (the service's endpoints at the run's size, the bench labels on each)
// and then does nothing more for it but what grpc-go does — for xDS, its
// handler decodes the ACKs that come back, blocked in Recv as every grpc-go
// bidi stream's is; for Get, its handler waits for the stream to end. A
// change is a line on its standard input naming a service: the server
// writes that service's pre-marshalled change on each of its streams (xDS:
// the whole CLA again, as state of the world does; Get: an Add of one
// endpoint, as Tributary sends a one-endpoint change), from the goroutine
// that read the line (no per-stream wake-up, no per-change marshalling, no
// bookkeeping). The tool opens the run's streams on the run's connections,
// feeds changes at the run's rate and reads the server process's CPU and
// RSS from /proc, as it does the real servers': <api>_floor_cpu_us_per_delivery
// and <api>_floor_mem_per_stream_kib are the least those figures can be
// here, for grpc-go.

// FloorArg is the argument that makes this executable a floor server;
// main must call RunFloorServer with the arguments after it.
const FloorArg = "__floor-server"

// The floors' APIs, and the prefix of their figures.
const (
	floorXDS = "xds"
	floorGet = "get"
)

// floorCodec sends a *floorRaw as it is and anything else as protobuf.
type floorCodec struct{ encoding.CodecV2 }

type floorRaw struct{ bufs mem.BufferSlice }

func (c floorCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*floorRaw); ok {
		return r.bufs, nil
	}
	return c.CodecV2.Marshal(v)
}

// floorServer is a floor's server: per service, its streams and its
// pre-marshalled first message and change.
type floorServer struct {
	discoverygrpc.UnimplementedAggregatedDiscoveryServiceServer
	pb.UnimplementedDestinationServer
	index  map[string]int // service by CLA name or Get path
	first  [][]byte       // pre-marshalled first message by service
	change [][]byte       // pre-marshalled change by service
	acks   atomic.Uint64  // xDS ACKs; Get: streams that got their first message

	mu      sync.Mutex
	streams [][]*floorStream // by service
}

type floorStream struct {
	mu sync.Mutex // one sender at a time
	s  grpc.ServerStream
}

func (f *floorStream) send(b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.s.SendMsg(&floorRaw{bufs: mem.BufferSlice{mem.SliceBuffer(b)}})
}

func (f *floorServer) StreamAggregatedResources(s discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	req, err := s.Recv()
	if err != nil {
		return err
	}
	svc, ok := -1, false
	if len(req.GetResourceNames()) == 1 {
		svc, ok = f.index[req.GetResourceNames()[0]]
	}
	if !ok {
		return fmt.Errorf("floor server: subscribe to exactly one known CLA")
	}
	f.join(svc, s)
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
		f.acks.Add(1)
	}
}

// join sends a new stream its service's first message and adds it to
// the service's streams.
func (f *floorServer) join(svc int, s grpc.ServerStream) {
	fs := &floorStream{s: s}
	fs.send(f.first[svc])
	f.mu.Lock()
	f.streams[svc] = append(f.streams[svc], fs)
	f.mu.Unlock()
}

func (f *floorServer) Get(req *pb.GetDestination, s pb.Destination_GetServer) error {
	svc, ok := f.index[req.GetPath()]
	if !ok {
		return fmt.Errorf("floor server: unknown path %q", req.GetPath())
	}
	f.join(svc, s)
	f.acks.Add(1)
	<-s.Context().Done()
	return nil
}

// floorUpdate is a Get Add of endpoints first to first+n-1 of service svc,
// the bench labels on each, as Tributary writes them.
func floorUpdate(svc, first, n, endpoints int) *pb.Update {
	var addrs []*pb.WeightedAddr
	for e := first; e < first+n; e++ {
		addrs = append(addrs, &pb.WeightedAddr{
			Addr:   &pbnet.TcpAddress{Ip: &pbnet.IPAddress{Ip: &pbnet.IPAddress_Ipv4{Ipv4: uint32(10)<<24 | uint32(svc>>8&255)<<16 | uint32(svc&255)<<8 | uint32(e&255)}}, Port: 8080},
			Weight: 10000,
			MetricLabels: map[string]string{
				bench.LabelSeq: strconv.Itoa(1_000_000 + svc*endpoints + e),
				bench.LabelTS:  strconv.FormatInt(time.Now().UnixNano(), 10),
			},
		})
	}
	return &pb.Update{Update: &pb.Update_Add{Add: &pb.WeightedAddrSet{Addrs: addrs}}}
}

// floorCLA is service svc's CLA as the run's servers send it: endpoints
// IPv4 endpoints with a weight and the bench labels in their metadata.
func floorCLA(name string, svc, endpoints int) *endpointv3.ClusterLoadAssignment {
	var lb []*endpointv3.LbEndpoint
	for e := range endpoints {
		labels, _ := structpb.NewStruct(map[string]any{
			bench.LabelSeq: strconv.Itoa(1_000_000 + svc*endpoints + e),
			bench.LabelTS:  strconv.FormatInt(time.Now().UnixNano(), 10),
		})
		lb = append(lb, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       fmt.Sprintf("10.%d.%d.%d", svc>>8&255, svc&255, e&255),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080},
				}}},
			}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(10000),
			Metadata:            &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"tributary": {Fields: map[string]*structpb.Value{"labels": structpb.NewStructValue(labels)}}}},
		})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lb}}}
}

func floorName(svc int) string { return "floor-" + strconv.Itoa(svc) + ".bench.svc:8080" }

// RunFloorServer is a floor's server: args are the API (xds or get), the
// services and the endpoints per service. It prints its address, then
// reads commands on standard input until it closes: a service number (a
// change: send it on the service's streams), or "gc" (collect garbage,
// then print the Go heap and stacks in use, and the ACKs received).
func RunFloorServer(args []string) error {
	if len(args) != 3 || args[0] != floorXDS && args[0] != floorGet {
		return errors.New("usage: " + FloorArg + " xds|get SERVICES ENDPOINTS")
	}
	api := args[0]
	services, err1 := strconv.Atoi(args[1])
	endpoints, err2 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2); err != nil || services <= 0 || endpoints <= 0 {
		return fmt.Errorf("%s: bad sizes %q", FloorArg, args)
	}
	f := &floorServer{index: map[string]int{}, first: make([][]byte, services), change: make([][]byte, services), streams: make([][]*floorStream, services)}
	for svc := range services {
		name := floorName(svc)
		f.index[name] = svc
		var first, change proto.Message
		if api == floorXDS {
			cla, err := anypb.New(floorCLA(name, svc, endpoints))
			if err != nil {
				return err
			}
			first = &discoverygrpc.DiscoveryResponse{VersionInfo: "1", Resources: []*anypb.Any{cla}, TypeUrl: claType, Nonce: "1"}
			change = first
		} else {
			first, change = floorUpdate(svc, 0, endpoints, endpoints), floorUpdate(svc, 0, 1, endpoints)
		}
		var err error
		if f.first[svc], err = proto.Marshal(first); err != nil {
			return err
		}
		if f.change[svc], err = proto.Marshal(change); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(floorCodec{encoding.GetCodecV2("proto")}))
	if api == floorXDS {
		discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, f)
	} else {
		pb.RegisterDestinationServer(srv, f)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, ln.Addr().String())
	out.Flush()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		line := in.Text()
		if line == "gc" {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Fprintln(out, ms.HeapInuse+ms.StackInuse, f.acks.Load())
			out.Flush()
			continue
		}
		svc, err := strconv.Atoi(line)
		if err != nil || svc < 0 || svc >= services {
			return fmt.Errorf("%s: bad command %q", FloorArg, line)
		}
		f.mu.Lock()
		ss := f.streams[svc]
		f.mu.Unlock()
		for _, s := range ss {
			s.send(f.change[svc])
		}
	}
	return in.Err()
}

// floorProc is a running floor server, seen from the tool.
type floorProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// settle makes the floor server collect garbage and reports its Go heap
// and stacks in use, and the ACKs it has received.
func (p *floorProc) settle() (live float64, acks uint64, err error) {
	if _, err := io.WriteString(p.in, "gc\n"); err != nil {
		return 0, 0, err
	}
	if !p.out.Scan() {
		return 0, 0, fmt.Errorf("floor server: no answer: %v", p.out.Err())
	}
	var l uint64
	if _, err := fmt.Sscan(p.out.Text(), &l, &acks); err != nil {
		return 0, 0, fmt.Errorf("floor server: %q: %v", p.out.Text(), err)
	}
	return float64(l), acks, nil
}

// measureServerFloor runs api's floor server with the run's sizes
// (streams on conns connections over services of endpoints each, stream i
// on service i mod services), feeds it changes at rate for d, one service
// after another, and records the <api>_floor_ figures in res.
func measureServerFloor(ctx context.Context, res *Result, api string, streams, conns, services, endpoints int, rate float64, d time.Duration) error {
	if streams <= 0 || services <= 0 || rate <= 0 || d <= 0 {
		return fmt.Errorf("%s floor: no streams or no changes", api)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.Command(exe, FloorArg, api, strconv.Itoa(services), strconv.Itoa(endpoints))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &floorProc{cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	defer func() {
		in.Close()
		if cmd.Wait() != nil {
			cmd.Process.Kill()
		}
	}()
	if !p.out.Scan() {
		return fmt.Errorf("%s floor server did not start: %v", api, p.out.Err())
	}
	addr := strings.TrimSpace(p.out.Text())

	baseLive, _, err := p.settle()
	if err != nil {
		return err
	}
	_, baseRSS, err := procUsage(cmd.Process.Pid)
	if err != nil {
		return err
	}
	conns = max(1, min(conns, streams))
	ccs := make([]*grpc.ClientConn, conns)
	for i := range ccs {
		if ccs[i], err = grpc.NewClient(addr, clientOptions()...); err != nil {
			return err
		}
		defer ccs[i].Close()
	}
	var received atomic.Uint64
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	synced := make(chan error, streams)
	if api == floorGet {
		// As the fleet opens them: one goroutine per connection opens its
		// streams one after another; each stream then reads on its own.
		for k := range conns {
			client := pb.NewDestinationClient(ccs[k])
			wg.Go(func() {
				for i := k; i < streams; i += conns {
					s, err := client.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: floorName(i % services)})
					if err != nil {
						synced <- err
						continue
					}
					wg.Go(func() {
						for first := true; ; first = false {
							if _, err := s.Recv(); err != nil {
								if first {
									synced <- err
								}
								return
							}
							received.Add(1)
							if first {
								synced <- nil
							}
						}
					})
				}
			})
		}
	}
	for i := range streams {
		if api == floorGet {
			break
		}
		client := discoverygrpc.NewAggregatedDiscoveryServiceClient(ccs[i%conns])
		wg.Go(func() {
			s, err := client.StreamAggregatedResources(ctx)
			if err == nil {
				err = s.Send(&discoverygrpc.DiscoveryRequest{Node: benchNode(i % conns), TypeUrl: claType, ResourceNames: []string{floorName(i % services)}})
			}
			if err != nil {
				synced <- err
				return
			}
			first := true
			for {
				r, err := s.Recv()
				if err != nil {
					if first {
						synced <- err
					}
					return
				}
				received.Add(1)
				if err := s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: claType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: []string{floorName(i % services)}}); err != nil {
					return
				}
				if first {
					first = false
					synced <- nil
				}
			}
		})
	}
	for range streams {
		select {
		case err := <-synced:
			if err != nil {
				return fmt.Errorf("%s floor stream: %w", api, err)
			}
		case <-time.After(2 * time.Minute):
			return fmt.Errorf("%s floor: streams not synced within 2 minutes", api)
		}
	}
	// Every stream has its first response; wait for the server to have
	// every first ACK (Get: every stream joined), then sample its memory.
	wantAcks := uint64(streams)
	live, err := waitAcks(p, wantAcks)
	if err != nil {
		return err
	}
	_, rss, err := procUsage(cmd.Process.Pid)
	if err != nil {
		return err
	}
	res.Set(api+"_floor_mem_per_stream_kib", (rss-baseRSS)/float64(streams)/1024)
	res.Set(api+"_floor_live_per_stream_kib", (live-baseLive)/float64(streams)/1024)

	// The changes, at the run's rate, one service after another.
	perSvc := func(svc int) uint64 { return uint64(streams/services + btoi(svc < streams%services)) }
	cpu0, _, err := procUsage(cmd.Process.Pid)
	if err != nil {
		return err
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	stop := time.After(d)
	changes, deliveries := 0, uint64(0)
	w := bufio.NewWriter(in)
loop:
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			break loop
		case <-tick.C:
			svc := changes % services
			changes++
			deliveries += perSvc(svc)
			fmt.Fprintln(w, svc)
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	// Every delivery received by its stream and ACKed back to the server.
	for deadline := time.Now().Add(time.Minute); received.Load() < uint64(streams)+deliveries; {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s floor: %d of %d deliveries received", api, received.Load()-uint64(streams), deliveries)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cpu1, _, err := procUsage(cmd.Process.Pid)
	if err != nil {
		return err
	}
	if api == floorXDS {
		// and every ACK back at the server.
		if _, err := waitAcks(p, wantAcks+deliveries); err != nil {
			return err
		}
	}
	res.Set(api+"_floor_changes", changes)
	res.Set(api+"_floor_deliveries", deliveries)
	res.Set(api+"_floor_cpu_us_per_delivery", (cpu1-cpu0)*1e6/float64(deliveries))
	return nil
}

// waitAcks waits until the floor server has received want ACKs and then
// reports its live Go memory.
func waitAcks(p *floorProc, want uint64) (live float64, err error) {
	deadline := time.Now().Add(time.Minute)
	for {
		live, acks, err := p.settle()
		if err != nil || acks >= want {
			return live, err
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("floor: %d of %d ACKs received", acks, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// getFloorFigures records the server's CPU per delivery and memory per
// stream over the Get floor's (already in res).
func getFloorFigures(res *Result) {
	for _, k := range [][2]string{{"server_cpu_us_per_delivery", "get_floor_cpu_us_per_delivery"}, {"live_per_stream_kib", "get_floor_live_per_stream_kib"}} {
		v, okV := res.values[k[0]].(float64)
		fl, okF := res.values[k[1]].(float64)
		if okV && okF && fl > 0 {
			res.Set(k[0]+"_vs_get_floor", v/fl)
		}
	}
}

// xdsFloorFigures records each server's CPU per delivery and memory per
// stream over the floor's (already in res): above 1 by what the server
// adds to the least a grpc-go ADS server pays here.
func xdsFloorFigures(res *Result) {
	for _, prefix := range []string{"", gcpPrefix} {
		for _, k := range [][2]string{{"server_cpu_us_per_delivery", "xds_floor_cpu_us_per_delivery"}, {"mem_per_stream_kib", "xds_floor_mem_per_stream_kib"}} {
			v, okV := res.values[prefix+k[0]].(float64)
			fl, okF := res.values[k[1]].(float64)
			if okV && okF && fl > 0 {
				res.Set(prefix+k[0]+"_vs_xds_floor", v/fl)
			}
		}
	}
}
