// Package load runs tributary-bench's workloads against a real tributary
// server: it starts one (or attaches to one) whose `bench` source generates
// the services and the churn, opens Get streams over the upstream Linkerd
// stubs, measures, and checks that every stream ends with the exact state
// the source holds.
package load

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"

	"github.com/tributary-mesh/tributary/cmd/tributary-bench/internal/hist"
	"github.com/tributary-mesh/tributary/sources/bench"
)

// Workloads are the names Run accepts.
var Workloads = []string{"steady", "hotfanout", "ramp", "idle", "storm", "profile", "manystreams", "million"}

// Options configure a run. DefaultOptions gives each workload the sizes of
// the issue; a flag that is set overrides them.
type Options struct {
	Workload string

	// API is the streams' API: APIDestination (the default) or APIXDS,
	// which runs the steady workload over EDS on Tributary and on
	// go-control-plane in turn (xds_run.go). Impl, set by that run, is the
	// server of one turn; GCPBin the comparison server's binary (built
	// from tools/gcp-xds-v0.14.0 when empty); Rounds the turns of each.
	API    string
	Impl   string
	GCPBin string
	Rounds int
	// XDSDelta makes the xDS streams incremental (delta) instead of
	// state of the world.
	XDSDelta bool

	// Bin is the tributary binary to start. Addr, Admin and Control
	// instead attach to a running server whose config has a bench source
	// with `control:` (its services and endpoints then come from it).
	Bin                  string
	Addr, Admin, Control string
	// Keep leaves the started server's folder (config, log) in place.
	Keep bool

	Services  int    // S
	Endpoints int    // E per service
	Host      string // bench host pattern
	Seed      uint64
	Streams   int // W
	Conns     int // C
	Rate      float64
	Duration  time.Duration
	// NewStreams is how many extra streams are opened one by one, with W
	// open, to measure the first-message latency of a new stream.
	NewStreams int
	// SlowStreams (steady) opens this many more streams, on connections of
	// their own, that read their first message and then stop reading: slow
	// clients. They are not part of the fleet's checks; the figures show
	// whether they cost the readers anything.
	SlowStreams int
	// NewStreamsPerSecond, when not 0, sets the started server's
	// server.streams.new_per_second: with storm, the admission limit and
	// its RetryInfo hints at work.
	NewStreamsPerSecond float64
	NewStreamsBurst     int // the same for server.streams.new_burst
	// MemoryLimitMiB, when not 0, runs the started server in a memory
	// cgroup with this limit: a replica in a container with a memory limit,
	// which the server follows (server.memory_limit_ratio).
	MemoryLimitMiB int

	// Ramp: the rates tried, each for RampStep, stopping after the first
	// whose p99 exceeds RampLimit.
	RampRates []float64
	RampStep  time.Duration
	RampLimit time.Duration

	// Idle: stream counts measured on one server (Services x Endpoints),
	// endpoint counts measured on one server each, and the streams opened
	// on the largest endpoint count.
	IdleStreams    []int
	IdleEndpoints  []int
	IdleMaxStreams int

	// SyncTimeout bounds the wait for every stream's first message; 0 is
	// 30 s plus 1 s per 1,000 streams. Settle bounds the wait for every
	// stream to reach the final state after churn stops.
	SyncTimeout time.Duration
	Settle      time.Duration

	// CPUProfile, when set, is where a CPU profile of the server during
	// churn is written (pprof format; `go tool pprof -top FILE`).
	CPUProfile string
	// HeapProfile, when set, is where a heap profile of the server with
	// its streams open and idle is written (steady, hotfanout, storm).
	HeapProfile string
	// ClientCPUProfile, when set, is where a CPU profile of this tool
	// during churn is written: proof that the client is not the bottleneck.
	ClientCPUProfile string

	// Floor measures the machine's wake cost (the wakecost figures) once
	// the server has stopped, in the same run, and reports the server's
	// CPU against it (floor_… keys; see floorFigures).
	Floor bool

	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// DefaultOptions are the sizes for a workload; quick shrinks them
// to a few seconds (tests, smoke runs).
func DefaultOptions(workload string, quick bool) (Options, error) {
	o := Options{
		Workload:       workload,
		Services:       1000,
		Endpoints:      10,
		Host:           bench.DefaultHost,
		Seed:           1,
		Streams:        10000,
		Conns:          100,
		Rate:           200,
		Duration:       30 * time.Second,
		NewStreams:     200,
		RampRates:      []float64{200, 500, 1000, 2000, 3000, 4000, 5000},
		RampStep:       10 * time.Second,
		RampLimit:      100 * time.Millisecond,
		IdleStreams:    []int{1000, 10000, 50000},
		IdleEndpoints:  []int{0, 10000, 100000},
		IdleMaxStreams: 10000,
		Settle:         30 * time.Second,
		Rounds:         1,
	}
	switch workload {
	case "steady", "ramp", "idle", "storm", "profile", "wakecost":
	case "hotfanout":
		o.Services, o.Rate = 1, 1
	case "manystreams", "million":
		scaleDefaults(&o, quick)
	default:
		return o, fmt.Errorf("unknown workload %q (want %s)", workload, strings.Join(Workloads, ", "))
	}
	if quick {
		o.Services, o.Endpoints, o.Streams, o.Conns = 50, 4, 200, 4
		o.Rate, o.Duration, o.NewStreams = 100, 3*time.Second, 20
		o.RampRates, o.RampStep = []float64{100, 400}, 2*time.Second
		o.IdleStreams, o.IdleEndpoints, o.IdleMaxStreams = []int{100, 400}, []int{0, 1000, 4000}, 200
		o.Settle = 15 * time.Second
		if workload == "hotfanout" {
			o.Services, o.Endpoints, o.Rate = 1, 10, 5
		}
		scaleDefaults(&o, quick)
	}
	switch workload {
	case "steady", "manystreams", "million":
		o.Floor = !quick
	}
	return o, nil
}

func (o *Options) check() error {
	switch {
	case o.Streams < 0 || o.Conns < 1:
		return errors.New("--streams must be >= 0 and --conns >= 1")
	case o.Services < 0 || o.Endpoints < 0:
		return errors.New("--services and --endpoints must be >= 0")
	case o.Rate < 0 || o.Duration < 0:
		return errors.New("--rate and --duration must be >= 0")
	case o.Workload == "ramp" && len(o.RampRates) == 0:
		return errors.New("--ramp-rates is empty")
	}
	return o.checkXDS()
}

func (o *Options) attach() bool { return o.Addr != "" || o.Admin != "" || o.Control != "" }

func (o *Options) syncTimeout(streams int) time.Duration {
	if o.SyncTimeout > 0 {
		return o.SyncTimeout
	}
	return 30*time.Second + time.Duration(streams)*time.Millisecond
}

// Run runs one workload and returns its figures; a failed correctness
// check or setup marks the result not OK, with the reason in "errors".
func Run(ctx context.Context, o Options) *Result {
	r := &runner{o: o, res: newResult(o.Workload), log: o.Log}
	if r.log == nil {
		r.log = io.Discard
	}
	if err := o.check(); err != nil {
		r.res.Fail("%v", err)
		return r.res
	}
	env := r.environment()
	var err error
	switch o.Workload {
	case "steady", "hotfanout", "manystreams", "million":
		if o.API == APIXDS && o.Impl == "" {
			err = r.steadyXDS(ctx)
		} else {
			err = r.steady(ctx)
		}
	case "ramp":
		err = r.ramp(ctx)
	case "idle":
		err = r.idle(ctx)
	case "storm":
		err = r.storm(ctx)
	case "profile":
		err = r.profile(ctx)
	case "wakecost":
		err = measureWakeCost(r.res, 2000, 850, 5*time.Millisecond)
	default:
		err = fmt.Errorf("unknown workload %q", o.Workload)
	}
	if err != nil {
		r.res.Fail("%v", err)
	}
	r.closeServer()
	if o.Floor && err == nil && ctx.Err() == nil {
		// After the server stopped, so that it does not share the cores.
		r.logf("measuring the machine's wake cost (the floor)")
		if f, err := measureWakeFloor(floorRounds, floorWrites, 850, 5*time.Millisecond); err != nil {
			r.res.Fail("wakecost: %v", err)
		} else {
			floorFigures(r.res, f, o.Streams, o.Services)
		}
		if (o.Workload == "steady" || o.Workload == "manystreams") && o.API != APIXDS {
			// And the least a grpc-go Get server pays per delivery at this
			// shape: what of the server's CPU any such server pays here.
			r.logf("measuring the Get floor (a grpc-go server that only writes pre-encoded updates)")
			if err := measureServerFloor(ctx, r.res, floorGet, o.Streams, o.Conns, o.Services, o.Endpoints, o.Rate, min(o.Duration, 10*time.Second)); err != nil {
				r.res.Fail("Get floor: %v", err)
			} else {
				getFloorFigures(r.res)
			}
		}
	}
	if r.checked {
		r.res.Set("lost_final_states", r.lost)
		r.res.Set("contract_errors", r.contract)
		r.res.Set("stream_errors", r.streamErrs)
		r.res.Set("refusals_retried", r.refused)
		if r.refusedStreams > 0 {
			r.res.Set("streams_refused", r.refusedStreams)
			r.res.Set("refusals_per_refused_stream", float64(r.refused)/float64(r.refusedStreams))
			r.res.Set("refusals_max_per_stream", r.refusalsMax)
		}
	}
	for _, kv := range env {
		r.res.Set(kv.key, kv.value)
	}
	return r.res
}

type runner struct {
	o     Options
	res   *Result
	log   io.Writer
	srv   *Server
	fleet *Fleet

	// Correctness over every fleet of the run, reported last.
	checked                       bool
	lost                          int
	contract, streamErrs, refused uint64
	refusedStreams, refusalsMax   uint64 // streams refused at least once; most refusals of one stream
}

type keyValue struct {
	key   string
	value any
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "tributary-bench: %s: %s\n", r.o.Workload, fmt.Sprintf(format, args...))
}

// ClientGCPercent is the tool's own GC target (as GOGC) when the GOGC
// environment variable does not set one.
//
// The tool shares the machine with the server it measures. Decoding tens of
// thousands of messages a second, it collects its garbage every few
// seconds, and each mark phase takes a quarter of the cores for 100 ms or
// more: time taken from the server and added to the latencies measured. A
// larger target makes those phases rarer at the cost of the tool's memory,
// which is not under test. The server is started without it and keeps Go's
// default, so its own figures are what a user gets.
const ClientGCPercent = 400

var clientGOGC = os.Getenv("GOGC")

// SetClientGC applies ClientGCPercent unless GOGC is set (it then applies to
// both the tool and the server it starts). main calls it first thing.
func SetClientGC() {
	if clientGOGC == "" {
		debug.SetGCPercent(ClientGCPercent)
		clientGOGC = strconv.Itoa(ClientGCPercent)
	}
}

// environment is the machine and the load average at start: a run on a
// machine whose 1-minute load exceeds half its cores is marked busy.
func (r *runner) environment() []keyValue {
	cores := runtime.NumCPU()
	out := []keyValue{{"cores", cores}, {"client_gogc", cmp.Or(clientGOGC, "100")}}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return out
	}
	if la, err := fs.LoadAvg(); err == nil {
		out = append(out, keyValue{"load1", la.Load1}, keyValue{"busy", la.Load1 > 0.5*float64(cores)})
	}
	if ci, err := fs.CPUInfo(); err == nil && len(ci) > 0 {
		out = append(out, keyValue{"cpu", strings.Join(strings.Fields(ci[0].ModelName), " ")})
	}
	return out
}

// startServer starts (or attaches to) a server with S x E bench endpoints
// and records its version; in attach mode S and E come from the server.
func (r *runner) startServer(ctx context.Context, services, endpoints int) error {
	r.closeServer()
	var err error
	if r.o.attach() {
		r.srv, err = AttachServer(ctx, r.o.Addr, r.o.Admin, r.o.Control)
		if err != nil {
			return err
		}
		st, err := r.srv.Churn(ctx, 0)
		if err != nil {
			return err
		}
		r.res.Set("services", st.Services)
		r.res.Set("endpoints", st.Endpoints)
		return nil
	}
	r.srv, err = StartServer(ctx, ServerSpec{Bin: r.o.Bin, Services: services, Endpoints: endpoints, Host: r.o.Host, Seed: r.o.Seed, Keep: r.o.Keep,
		NewStreamsPerSecond: r.o.NewStreamsPerSecond, NewStreamsBurst: r.o.NewStreamsBurst, MemoryLimitMiB: r.o.MemoryLimitMiB,
		XDS: r.o.API == APIXDS, Impl: r.o.Impl, GCPBin: r.o.GCPBin})
	if err != nil {
		return err
	}
	if _, ok := r.res.Get("ready_s"); !ok {
		r.res.Set("ready_s", r.srv.Ready.Seconds())
	}
	if r.o.MemoryLimitMiB > 0 {
		r.res.Set("memory_limit_mib", r.o.MemoryLimitMiB)
	}
	if _, ok := r.res.Get("server_version"); !ok {
		if r.o.Impl == ImplGCP {
			r.res.Set("server_version", implName(ImplGCP))
		} else {
			r.res.Set("server_version", Version(r.o.Bin))
		}
	}
	return nil
}

// newFleet opens the connections to the server's services.
func (r *runner) newFleet(ctx context.Context) error {
	truth, err := r.srv.Truth(ctx)
	if err != nil {
		return err
	}
	paths := make([]string, len(truth.Services))
	for i, s := range truth.Services {
		paths[i] = s.Authority
	}
	if r.o.API == APIXDS {
		r.fleet, err = NewXDSFleet(r.srv.XDS, r.o.Conns, paths, r.o.XDSDelta)
	} else {
		r.fleet, err = NewFleet(r.srv.API, r.o.Conns, paths)
	}
	if err != nil {
		return err
	}
	return r.fleet.Connect(ctx, 30*time.Second)
}

// closeServer closes the fleet (adding its errors to the run's) and stops
// the server, keeping its log when the run failed or --keep was given.
func (r *runner) closeServer() {
	if r.fleet != nil {
		r.fleet.Close()
		contract, failed := r.fleet.contract.Load(), r.fleet.streamErrs.Load()
		if contract > 0 || failed > 0 {
			r.res.Fail("%d contract violations, %d failed streams: %s", contract, failed, strings.Join(r.fleet.Examples(), "; "))
		}
		r.contract += contract
		r.streamErrs += failed
		r.refused += r.fleet.refused.Load()
		streams, most := r.fleet.RefusedStreams()
		r.refusedStreams += streams
		r.refusalsMax = max(r.refusalsMax, most)
		r.fleet = nil
	}
	if r.srv != nil {
		if (r.o.Keep || !r.res.OK) && r.srv.LogPath() != "" {
			r.srv.Keep()
			r.res.Set("server_log", r.srv.LogPath())
		}
		r.srv.Stop()
		r.srv = nil
	}
}

// openAll opens n streams at once and waits for every first message; it
// records the time from the first Get to the last first message.
func (r *runner) openAll(ctx context.Context, n int, key string) error {
	if n == 0 {
		return nil
	}
	cpu0, _, _ := r.srv.Usage(context.Background())
	self0 := selfCPU()
	ws, start := r.fleet.OpenMany(n)
	synced, last := r.fleet.WaitFirst(ws, time.Now().Add(r.o.syncTimeout(n)))
	if last > 0 {
		r.res.Set(key, float64(last-start)/1e9)
	}
	if key == "sync_s" {
		r.res.Set("streams_synced", r.fleet.Len()-len(ws)+synced)
		// Who had the cores while the streams synced: the server, or
		// this tool opening and decoding them.
		if cpu1, _, err := r.srv.Usage(context.Background()); err == nil && cpu0 > 0 {
			r.res.Set("sync_server_cpu_s", cpu1-cpu0)
		}
		r.res.Set("sync_client_cpu_s", selfCPU()-self0)
	}
	if synced < n {
		return fmt.Errorf("%d of %d streams got no first message (%s)", n-synced, n, strings.Join(r.fleet.Examples(), "; "))
	}
	r.logf("%d streams synced in %.3fs", n, float64(last-start)/1e9)
	return r.srv.Alive()
}

// newStreams opens n streams one by one with the others open and records
// the percentiles of their first-message latency.
func (r *runner) newStreams(n int) error {
	if n == 0 {
		return nil
	}
	var h hist.Histogram
	for range n {
		d, err := r.fleet.OpenOne(10 * time.Second)
		if err != nil {
			return fmt.Errorf("new stream: %w", err)
		}
		h.Record(int64(d))
	}
	r.res.Set("new_stream_p50_ms", ms(h.Quantile(0.5)))
	r.res.Set("new_stream_p99_ms", ms(h.Quantile(0.99)))
	r.res.Set("new_stream_max_ms", ms(h.Max()))
	r.logf("%d new streams: first message p50 %.3fms p99 %.3fms", n, ms(h.Quantile(0.5)), ms(h.Quantile(0.99)))
	return nil
}

// verify waits (at most Settle) until every stream holds exactly the
// truth, and records the streams that never get there as lost final
// states; it also reports contract violations and failed streams.
func (r *runner) verify(ctx context.Context) error {
	truth, err := r.srv.Truth(ctx)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(r.o.Settle)
	var lost int
	var examples []string
	for {
		lost, examples, err = r.fleet.Verify(truth)
		if err != nil {
			return err
		}
		if lost == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	r.checked = true
	r.lost += lost
	if lost > 0 {
		r.res.Fail("%d of %d streams do not hold the final state (seq %d) after %v: %s", lost, r.fleet.Len(), truth.Seq, r.o.Settle, strings.Join(examples, "; "))
	}
	r.logf("final state of %d streams checked against seq %d: %d lost", r.fleet.Len(), truth.Seq, lost)
	return nil
}

// memPerStream records the server's memory figures per stream; base is
// the sample taken before the n streams were opened.
func (r *runner) memPerStream(base, now Sample, n int, suffix string) {
	if n <= 0 {
		return
	}
	r.res.Set("mem_per_stream_kib"+suffix, (now.RSS-base.RSS)/float64(n)/1024)
	r.res.Set("live_per_stream_kib"+suffix, (now.Live()-base.Live())/float64(n)/1024)
	r.res.Set("stack_per_stream_kib"+suffix, (now.StackInuse-base.StackInuse)/float64(n)/1024)
	r.res.Set("goroutines_per_stream"+suffix, (now.Goroutines-base.Goroutines)/float64(n))
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

func mib(b float64) float64 { return b / (1 << 20) }

// selfCPU is the user and system CPU seconds of this process so far, from
// getrusage: to the nanosecond, where /proc/self/stat counts clock ticks.
func selfCPU() float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// machineTimes is the machine's CPU time since boot, all CPUs: what the
// hypervisor took (steal) and the total.
type machineTimes struct{ steal, total float64 }

func machineCPU() machineTimes {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return machineTimes{}
	}
	st, err := fs.Stat()
	if err != nil {
		return machineTimes{}
	}
	t := st.CPUTotal
	return machineTimes{steal: t.Steal, total: t.User + t.Nice + t.System + t.Idle + t.Iowait + t.IRQ + t.SoftIRQ + t.Steal}
}

// stealPct is the share of the machine's CPU time the hypervisor took
// between since and m, in %.
func (m machineTimes) stealPct(since machineTimes) float64 {
	if d := m.total - since.total; d > 0 {
		return 100 * (m.steal - since.steal) / d
	}
	return 0
}

func rateKey(rate float64) string {
	return "r" + strconv.FormatFloat(rate, 'f', -1, 64)
}

func sortedInts(v []int) []int {
	out := slices.Clone(v)
	slices.Sort(out)
	return slices.Compact(out)
}
