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

// The xDS floor: what any gRPC ADS server pays on this machine per
// delivery and per stream, measured with the least server there can be.
// It is this executable re-run with XDSFloorArg: a grpc-go server whose
// ADS handler takes a stream's subscription, sends it one pre-marshalled
// DiscoveryResponse (a CLA of the run's size, the bench labels in its
// endpoints' metadata) and then only decodes the ACKs that come back, in
// the handler goroutine blocked in Recv that every grpc-go bidi stream
// has. A change is a line on its standard input naming a service: the
// server writes that service's pre-marshalled response on each of its
// streams, from the goroutine that read the line (no per-stream wake-up,
// no per-change marshalling, no bookkeeping). The tool opens the run's
// streams on the run's connections, feeds changes at the run's rate and
// reads the server process's CPU and RSS from /proc, as it does the real
// servers': xds_floor_cpu_us_per_delivery and xds_floor_mem_per_stream_kib
// are the least those figures can be here, for grpc-go.

// XDSFloorArg is the argument that makes this executable the xDS floor's
// server; main must call RunXDSFloorServer with the arguments after it.
const XDSFloorArg = "__xds-floor-server"

// floorCodec sends a *floorRaw as it is and anything else as protobuf.
type floorCodec struct{ encoding.CodecV2 }

type floorRaw struct{ bufs mem.BufferSlice }

func (c floorCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*floorRaw); ok {
		return r.bufs, nil
	}
	return c.CodecV2.Marshal(v)
}

// floorServer is the floor's ADS server: per service, its streams and
// its pre-marshalled response.
type floorServer struct {
	discoverygrpc.UnimplementedAggregatedDiscoveryServiceServer
	index map[string]int // service by CLA name
	resp  [][]byte       // pre-marshalled DiscoveryResponse by service
	acks  atomic.Uint64

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
	fs := &floorStream{s: s}
	fs.send(f.resp[svc])
	f.mu.Lock()
	f.streams[svc] = append(f.streams[svc], fs)
	f.mu.Unlock()
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
		f.acks.Add(1)
	}
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

// RunXDSFloorServer is the floor's server: args are the services and the
// endpoints per service. It prints its address, then reads commands on
// standard input until it closes: a service number (a change: send its
// response on its streams), or "gc" (collect garbage, then print the Go
// heap and stacks in use, and the ACKs received).
func RunXDSFloorServer(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: " + XDSFloorArg + " SERVICES ENDPOINTS")
	}
	services, err1 := strconv.Atoi(args[0])
	endpoints, err2 := strconv.Atoi(args[1])
	if err := errors.Join(err1, err2); err != nil || services <= 0 || endpoints <= 0 {
		return fmt.Errorf("%s: bad sizes %q", XDSFloorArg, args)
	}
	f := &floorServer{index: map[string]int{}, resp: make([][]byte, services), streams: make([][]*floorStream, services)}
	for svc := range services {
		name := floorName(svc)
		f.index[name] = svc
		cla, err := anypb.New(floorCLA(name, svc, endpoints))
		if err != nil {
			return err
		}
		b, err := proto.Marshal(&discoverygrpc.DiscoveryResponse{VersionInfo: "1", Resources: []*anypb.Any{cla}, TypeUrl: claType, Nonce: "1"})
		if err != nil {
			return err
		}
		f.resp[svc] = b
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(floorCodec{encoding.GetCodecV2("proto")}))
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, f)
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
			return fmt.Errorf("%s: bad command %q", XDSFloorArg, line)
		}
		f.mu.Lock()
		ss := f.streams[svc]
		f.mu.Unlock()
		for _, s := range ss {
			s.send(f.resp[svc])
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

// measureXDSFloor runs the floor's server with the run's sizes (streams on
// conns connections over services of endpoints each, stream i on service
// i mod services), feeds it changes at rate for d, one service after
// another, and records the xds_floor_ figures in res.
func measureXDSFloor(ctx context.Context, res *Result, streams, conns, services, endpoints int, rate float64, d time.Duration) error {
	if streams <= 0 || services <= 0 || rate <= 0 || d <= 0 {
		return errors.New("xDS floor: no streams or no changes")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.Command(exe, XDSFloorArg, strconv.Itoa(services), strconv.Itoa(endpoints))
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
		return fmt.Errorf("xDS floor server did not start: %v", p.out.Err())
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
	for i := range streams {
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
				return fmt.Errorf("xDS floor stream: %w", err)
			}
		case <-time.After(2 * time.Minute):
			return errors.New("xDS floor: streams not synced within 2 minutes")
		}
	}
	// Every stream has its first response; wait for the server to have
	// every first ACK, then sample its memory.
	wantAcks := uint64(streams)
	live, err := waitAcks(p, wantAcks)
	if err != nil {
		return err
	}
	_, rss, err := procUsage(cmd.Process.Pid)
	if err != nil {
		return err
	}
	res.Set("xds_floor_mem_per_stream_kib", (rss-baseRSS)/float64(streams)/1024)
	res.Set("xds_floor_live_per_stream_kib", (live-baseLive)/float64(streams)/1024)

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
			return fmt.Errorf("xDS floor: %d of %d deliveries received", received.Load()-uint64(streams), deliveries)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cpu1, _, err := procUsage(cmd.Process.Pid)
	if err != nil {
		return err
	}
	if _, err := waitAcks(p, wantAcks+deliveries); err != nil {
		return err
	}
	res.Set("xds_floor_changes", changes)
	res.Set("xds_floor_deliveries", deliveries)
	res.Set("xds_floor_cpu_us_per_delivery", (cpu1-cpu0)*1e6/float64(deliveries))
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
			return 0, fmt.Errorf("xDS floor: %d of %d ACKs received", acks, want)
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
