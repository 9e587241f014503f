package load

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/sources/bench"
)

func TestMain(m *testing.M) {
	// WakeCost's reader is this binary re-run.
	if len(os.Args) == 3 && os.Args[1] == ReaderArg {
		if err := RunWakeReader(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// So is the xDS floor's server.
	if len(os.Args) >= 2 && os.Args[1] == FloorArg {
		if err := RunFloorServer(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// TestWakeCost runs the measurement small: it must report every figure,
// positive (this checks that it measures, never what it measures).
func TestWakeCost(t *testing.T) {
	r, err := WakeCost(20, 850, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"write_to_sleeping_reader_us", "write_to_busy_reader_us", "idle_wake_us", "isolated_change_floor_us"} {
		v, ok := r.Get(k)
		if f, isF := v.(float64); !ok || !isF || f <= 0 {
			t.Errorf("%s = %v", k, v)
		}
	}
}

func tcp(ip uint32, port uint32) *pbnet.TcpAddress {
	return &pbnet.TcpAddress{Ip: &pbnet.IPAddress{Ip: &pbnet.IPAddress_Ipv4{Ipv4: ip}}, Port: port}
}

// ep is a wire endpoint 10.0.0.n:10000 with its bench labels.
func ep(n uint32, weight uint32, seq uint64, ts int64) *pb.WeightedAddr {
	return &pb.WeightedAddr{
		Addr:   tcp(10<<24|n, 10000),
		Weight: weight,
		MetricLabels: map[string]string{
			bench.LabelSeq: strconv.FormatUint(seq, 10),
			bench.LabelTS:  strconv.FormatInt(ts, 10),
			"source":       "bench",
		},
	}
}

func add(eps ...*pb.WeightedAddr) *pb.Update {
	return &pb.Update{Update: &pb.Update_Add{Add: &pb.WeightedAddrSet{Addrs: eps}}}
}

func remove(ns ...uint32) *pb.Update {
	var addrs []*pbnet.TcpAddress
	for _, n := range ns {
		addrs = append(addrs, tcp(10<<24|n, 10000))
	}
	return &pb.Update{Update: &pb.Update_Remove{Remove: &pb.AddrSet{Addrs: addrs}}}
}

func truthOf(eps ...bench.TruthEndpoint) bench.Truth {
	return bench.Truth{Services: []bench.TruthService{{Authority: "svc-0.bench:8080", Endpoints: eps}}}
}

func te(n uint32, weight uint32, seq uint64) bench.TruthEndpoint {
	return bench.TruthEndpoint{Addr: "10.0.0." + strconv.Itoa(int(n)) + ":10000", Weight: weight, Seq: seq}
}

func testFleet() (*Fleet, *watcher) {
	f := &Fleet{paths: []string{"svc-0.bench:8080"}}
	ws, _ := f.add(1)
	return f, ws[0]
}

func TestApplyReplaysAndRecordsLatency(t *testing.T) {
	f, w := testFleet()
	h := f.rec.begin(1000)
	if !f.apply(w, add(ep(1, 10000, 0, 500), ep(2, 10000, 4, 1500)), 2000) {
		t.Fatal("the first message was not reported as first")
	}
	if h.Count() != 0 {
		t.Error("a first message is not a propagated change, yet a latency was recorded")
	}
	// A replacement: add of the new address, then remove of the old.
	if f.apply(w, add(ep(3, 10000, 7, 3000)), 3500) {
		t.Fatal("a later message reported as first")
	}
	f.apply(w, remove(1), 3600)
	// A weight change, and the same seq sent again (redundant: no delivery).
	f.apply(w, add(ep(2, 77, 8, 4000)), 4100)
	f.apply(w, add(ep(2, 77, 8, 4000)), 4200)
	if h.Count() != 2 || h.Min() != 100 || h.Max() != 500 {
		t.Errorf("latencies: count %d min %d max %d, want 2 deliveries of 500ns and 100ns", h.Count(), h.Min(), h.Max())
	}
	if f.deliveries.Load() != 2 || f.contract.Load() != 0 {
		t.Errorf("deliveries %d, contract violations %d", f.deliveries.Load(), f.contract.Load())
	}
	if lost, ex, err := f.Verify(truthOf(te(2, 77, 8), te(3, 10000, 7))); err != nil || lost != 0 {
		t.Errorf("Verify: %d lost %v %v", lost, ex, err)
	}
	// no_endpoints{exists: true} empties the set: a service with no endpoints.
	f.apply(w, &pb.Update{Update: &pb.Update_NoEndpoints{NoEndpoints: &pb.NoEndpoints{Exists: true}}}, 5000)
	if lost, _, _ := f.Verify(truthOf()); lost != 0 {
		t.Error("an emptied stream does not match an empty truth")
	}
}

func TestApplyContractViolations(t *testing.T) {
	for name, u := range map[string]*pb.Update{
		"remove first": remove(1),
		"empty add":    add(),
		"no content":   {},
		"ipv6": add(&pb.WeightedAddr{Addr: &pbnet.TcpAddress{Ip: &pbnet.IPAddress{Ip: &pbnet.IPAddress_Ipv6{Ipv6: &pbnet.IPv6{First: 1}}}, Port: 80},
			MetricLabels: map[string]string{bench.LabelSeq: "0"}}),
		"no bench_seq": add(&pb.WeightedAddr{Addr: tcp(1, 80)}),
	} {
		t.Run(name, func(t *testing.T) {
			f, w := testFleet()
			f.apply(w, u, 1)
			if f.contract.Load() != 1 || len(f.Examples()) != 1 || !strings.Contains(f.Examples()[0], "contract") {
				t.Errorf("violations %d, examples %q", f.contract.Load(), f.Examples())
			}
		})
	}
	t.Run("empty remove", func(t *testing.T) {
		f, w := testFleet()
		f.apply(w, add(ep(1, 1, 0, 0)), 1)
		f.apply(w, remove(), 2)
		if f.contract.Load() != 1 {
			t.Errorf("violations %d", f.contract.Load())
		}
	})
}

func TestVerifyFindsEveryDifference(t *testing.T) {
	truth := truthOf(te(1, 10000, 0), te(2, 500, 3))
	for name, tc := range map[string]struct {
		updates []*pb.Update
		want    string
	}{
		"equal":          {[]*pb.Update{add(ep(1, 10000, 0, 0), ep(2, 500, 3, 0))}, ""},
		"nothing yet":    {nil, "no message received"},
		"stale seq":      {[]*pb.Update{add(ep(1, 10000, 0, 0), ep(2, 500, 2, 0))}, "holds seq 2 weight 500, truth seq 3 weight 500"},
		"stale weight":   {[]*pb.Update{add(ep(1, 10000, 0, 0), ep(2, 400, 3, 0))}, "weight 400"},
		"missing":        {[]*pb.Update{add(ep(1, 10000, 0, 0))}, "holds 1 endpoints, truth has 2"},
		"extra":          {[]*pb.Update{add(ep(1, 10000, 0, 0), ep(9, 500, 3, 0))}, "holds 10.0.0.9:10000, which the truth does not have"},
		"does not exist": {[]*pb.Update{{Update: &pb.Update_NoEndpoints{NoEndpoints: &pb.NoEndpoints{}}}}, "does not exist"},
	} {
		t.Run(name, func(t *testing.T) {
			f, w := testFleet()
			for i, u := range tc.updates {
				f.apply(w, u, int64(i))
			}
			lost, ex, err := f.Verify(truth)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if lost != 0 {
					t.Errorf("lost %d: %v", lost, ex)
				}
				return
			}
			if lost != 1 || len(ex) != 1 || !strings.Contains(ex[0], tc.want) {
				t.Errorf("lost %d, examples %q; want one naming %q", lost, ex, tc.want)
			}
		})
	}
}

func TestVerifyRejectsBadTruth(t *testing.T) {
	f, _ := testFleet()
	if _, _, err := f.Verify(truthOf(bench.TruthEndpoint{Addr: "nonsense"})); err == nil {
		t.Error("a truth with an unreadable address was accepted")
	}
	if _, _, err := f.Verify(bench.Truth{}); err == nil {
		t.Error("a truth without the watched service was accepted")
	}
}

func TestRecorderAttributesByChangeTime(t *testing.T) {
	var r recorder
	r.record(50, 60) // before any phase: dropped
	h1 := r.begin(100)
	h2 := r.begin(200)
	r.record(150, 260) // made in phase 1, received in phase 2
	r.record(250, 270)
	r.record(90, 300) // before phase 1
	r.end()
	r.record(300, 310)
	if h1.Count() != 1 || h1.Max() != 110 || h2.Count() != 1 || h2.Max() != 20 {
		t.Errorf("phase 1: %d (max %d), phase 2: %d (max %d)", h1.Count(), h1.Max(), h2.Count(), h2.Max())
	}
}

func TestResultLineAndJSON(t *testing.T) {
	r := newResult("steady")
	r.Set("streams", 10000)
	r.Set("p99_ms", 1.23456)
	r.Set("small", 0.000123456)
	r.Set("cpu", "Intel Xeon @ 2.80GHz")
	r.Set("busy", true)
	r.Set("streams", 5) // replaced in place
	r.Fail("one")
	r.Fail("two")
	want := `workload=steady streams=5 p99_ms=1.235 small=0.000123 cpu="Intel Xeon @ 2.80GHz" busy=true errors="one; two" ok=false`
	if got := r.Line(); got != want {
		t.Errorf("line\n got %s\nwant %s", got, want)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	wantJSON := `{"workload":"steady","streams":5,"p99_ms":1.235,"small":0.000123,"cpu":"Intel Xeon @ 2.80GHz","busy":true,"errors":"one; two","ok":false}`
	if string(b) != wantJSON {
		t.Errorf("json\n got %s\nwant %s", b, wantJSON)
	}
}

func TestPropagationQuantile(t *testing.T) {
	mk := func(counts ...float64) Sample {
		bounds := []float64{0.001, 0.01, 0.1, math.Inf(1)}
		s := Sample{}
		for i, c := range counts {
			s.Propagation = append(s.Propagation, Bucket{UpperBound: bounds[i], Count: c})
		}
		return s
	}
	from := mk(10, 10, 10, 10)
	to := mk(10, 110, 110, 110) // 100 observations in (1ms, 10ms]
	if got, ok := PropagationQuantile(from, to, 0.5); !ok || math.Abs(got-0.0055) > 1e-9 {
		t.Errorf("p50 = %v %v, want 5.5ms (linear inside the bucket)", got, ok)
	}
	if _, ok := PropagationQuantile(from, from, 0.5); ok {
		t.Error("a quantile without observations")
	}
	over := mk(10, 10, 10, 20) // all beyond the last finite bound
	if got, _ := PropagationQuantile(from, over, 0.99); got != 0.1 {
		t.Errorf("beyond the buckets: %v, want the last finite bound", got)
	}
	if _, ok := PropagationQuantile(Sample{}, to, 0.5); ok {
		t.Error("a quantile from mismatched samples")
	}
}

func TestDefaultOptions(t *testing.T) {
	o, err := DefaultOptions("steady", false)
	if err != nil || o.Services != 1000 || o.Endpoints != 10 || o.Streams != 10000 || o.Conns != 100 || o.Rate != 200 || o.Duration.Seconds() != 30 {
		t.Errorf("steady defaults %+v %v", o, err)
	}
	o, _ = DefaultOptions("hotfanout", false)
	if o.Services != 1 || o.Rate != 1 || o.Streams != 10000 {
		t.Errorf("hotfanout defaults %+v", o)
	}
	o, _ = DefaultOptions("steady", true)
	if o.Streams > 1000 || o.Duration.Seconds() > 5 {
		t.Errorf("quick is not quick: %+v", o)
	}
	if _, err := DefaultOptions("fast", false); err == nil || !strings.Contains(err.Error(), "steady, hotfanout, ramp, idle, storm") {
		t.Errorf("unknown workload: %v", err)
	}
}

func TestRetryDelay(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "too many new streams").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(250 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if got := retryDelay(st.Err()); got != 250*time.Millisecond {
		t.Errorf("delay %v, want the server's 250ms", got)
	}
	if got := retryDelay(status.Error(codes.ResourceExhausted, "no detail")); got != 100*time.Millisecond {
		t.Errorf("delay without RetryInfo %v, want 100ms", got)
	}
	long, _ := status.New(codes.ResourceExhausted, "x").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Hour)})
	if got := retryDelay(long.Err()); got != 5*time.Second {
		t.Errorf("delay %v, want the 5s cap", got)
	}
}

func TestWarnings(t *testing.T) {
	r := newResult("steady")
	r.Warn("a")
	r.Warn("b %d", 2)
	if !r.OK || !strings.HasSuffix(r.Line(), `warnings="a; b 2" ok=true`) {
		t.Errorf("line %s", r.Line())
	}
}

func TestSharedDecoder(t *testing.T) {
	c := newSharedDecoder()
	wire := func(u *pb.Update) mem.BufferSlice {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		// Split in two buffers, as gRPC may hand them over.
		return mem.BufferSlice{mem.SliceBuffer(b[:3]), mem.SliceBuffer(b[3:])}
	}
	first, second := add(ep(1, 10, 0, 0)), add(ep(2, 10, 5, 9))
	var a, b, d pb.Update
	if err := c.Unmarshal(wire(first), &a); err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(wire(first), &b); err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(wire(second), &d); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&a, first) || !proto.Equal(&b, first) || !proto.Equal(&d, second) {
		t.Errorf("decoded %v %v %v", &a, &b, &d)
	}
	if c.hits.Load() != 1 || c.misses.Load() != 2 {
		t.Errorf("hits %d misses %d, want 1 and 2", c.hits.Load(), c.misses.Load())
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer([]byte{0xff})}, &a); err == nil {
		t.Error("garbage decoded")
	}
	// Other messages (none on a Get stream) go to the proto codec.
	var req pb.GetDestination
	out, err := c.Marshal(&pb.GetDestination{Path: "svc-0.bench:8080"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(out, &req); err != nil || req.GetPath() != "svc-0.bench:8080" {
		t.Errorf("request round trip: %v %v", &req, err)
	}
}

// TestStealPct: the share of the machine's CPU time the hypervisor took
// between two readings, and a reading taken from this machine's /proc.
func TestStealPct(t *testing.T) {
	a := machineTimes{steal: 10, total: 1000}
	b := machineTimes{steal: 30, total: 2000}
	if got := b.stealPct(a); got != 2 {
		t.Errorf("stealPct = %v, want 2", got)
	}
	if got := a.stealPct(a); got != 0 {
		t.Errorf("no time passed: stealPct = %v, want 0", got)
	}
	if m := machineCPU(); m.total <= 0 || m.steal < 0 || m.steal > m.total {
		t.Errorf("machineCPU() = %+v", m)
	}
}

func TestScaleDefaults(t *testing.T) {
	o, err := DefaultOptions("manystreams", false)
	if err != nil || o.Streams != 100000 || o.Conns != 1000 || o.Services != 1000 || o.Endpoints != 10 || !o.Floor {
		t.Errorf("manystreams defaults %+v %v", o, err)
	}
	o, err = DefaultOptions("million", false)
	if err != nil || o.Services*o.Endpoints != 1000000 || o.Streams != 10000 || o.Rate != 5000 || !o.Floor {
		t.Errorf("million defaults %+v %v", o, err)
	}
	if o, _ := DefaultOptions("steady", false); !o.Floor {
		t.Error("steady does not measure the floor in the same run")
	}
	for _, w := range []string{"steady", "manystreams", "million"} {
		o, _ := DefaultOptions(w, true)
		if o.Floor || o.Streams > 1000 || o.Services*o.Endpoints > 20000 || o.Duration > 5*time.Second {
			t.Errorf("%s --quick is not quick: %+v", w, o)
		}
	}
	if readyBound(1000000) < 100*time.Second || readyBound(10) != 30*time.Second {
		t.Errorf("readyBound: %v, %v", readyBound(1000000), readyBound(10))
	}
}

func TestFloorFigures(t *testing.T) {
	f := newResult("wakecost")
	f.Set("isolated_change_floor_us", 150.0)
	f.Set("idle_wake_us", 100.0)
	f.Set("write_to_sleeping_reader_us", 50.0)
	f.Set("write_to_busy_reader_us", 2.0)

	res := newResult("steady")
	res.Set("server_cpu_us_per_delivery", 30.0)
	res.Set("server_cpu_us_per_change", 300.0)
	floorFigures(res, f, 10000, 1000)
	want := map[string]float64{
		"floor_isolated_change_floor_us": 150, "floor_idle_wake_us": 100,
		"floor_deliveries_per_change": 10, "floor_us_per_delivery": 15,
		"cpu_per_delivery_vs_floor": 2, "cpu_per_change_vs_floor": 2,
	}
	for k, v := range want {
		if got, ok := res.Get(k); !ok || got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}

	// Fewer streams than services: no per-delivery floor, the per-change one stays.
	res = newResult("million")
	res.Set("server_cpu_us_per_delivery", 900.0)
	res.Set("server_cpu_us_per_change", 75.0)
	floorFigures(res, f, 10000, 100000)
	if _, ok := res.Get("cpu_per_delivery_vs_floor"); ok {
		t.Error("a per-delivery floor with most services unwatched")
	}
	if got, _ := res.Get("cpu_per_change_vs_floor"); got != 0.5 {
		t.Errorf("cpu_per_change_vs_floor = %v, want 0.5", got)
	}
}

// The floor beside a workload is the median of its windows, with their
// spread, under the floor_ keys.
func TestWakeFloorIsTheMedianOfItsRounds(t *testing.T) {
	f, err := measureWakeFloor(3, 20, 850, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	lo, _ := f.Get("isolated_change_floor_us_min")
	mid, _ := f.Get("isolated_change_floor_us")
	hi, _ := f.Get("isolated_change_floor_us_max")
	if !(lo.(float64) <= mid.(float64) && mid.(float64) <= hi.(float64)) || lo.(float64) <= 0 {
		t.Fatalf("floor min %v, median %v, max %v", lo, mid, hi)
	}
	res := newResult("steady")
	res.Set("server_cpu_us_per_change", 300.0)
	floorFigures(res, f, 10000, 1000)
	for _, k := range []string{"floor_isolated_change_floor_us", "floor_isolated_change_floor_us_min", "floor_isolated_change_floor_us_max", "floor_rounds"} {
		if _, ok := res.Get(k); !ok {
			t.Errorf("no %s in the result", k)
		}
	}
}
