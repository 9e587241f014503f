// Command tributary-bench measures how fast and how cheaply a tributary
// server pushes endpoint changes to many Get streams. It starts a real
// `tributary serve` whose synthetic `bench` source generates the services
// and the churn (or attaches to a running one), opens Get streams over the
// upstream Linkerd stubs, and prints one line of figures per workload. See
// docs/performance.md.
//
//	tributary-bench steady --bin bin/tributary
//	tributary-bench hotfanout --bin bin/tributary --cpuprofile hot.pprof
//	tributary-bench all --bin bin/tributary --json results.json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tributary-mesh/tributary/cmd/tributary-bench/internal/load"
)

const usage = `usage: tributary-bench WORKLOAD [flags]

Runs a workload against a tributary server and prints one line of
key=value figures (stdout); progress goes to stderr. Exits 1 when a
correctness check fails (a stream that never synced, a lost final state,
a contract violation), 2 on a usage error.

workloads (defaults from the performance issue):
  steady     S=1000 services x 10 endpoints, W=10000 streams on C=100
             connections, R=200 changes/s for 30s
  hotfanout  W=10000 streams on one service, 1 change/s for 30s
  ramp       R from 200 to 5000/s, 10s per step: the rate where p99 passes 100ms
  idle       memory per idle stream (W=1k/10k/50k) and per endpoint (0/10k/100k)
  storm      10000 streams connect at once
  profile    memory per open GetProfile stream (W=10000 on C=100)
  manystreams  steady with W=100000 streams on C=1000 connections
  million    S=100000 x 10 endpoints, W=10000 streams, R=5000/s: RSS,
             ready from start, p99
             (steady, manystreams and million also measure wakecost after
             the server stops, and report the server's CPU against it)
             (--api xds: steady over EDS with ACKs, on tributary and on
             go-control-plane v0.14.0's LinearCache in turn: gcp_ keys)
  all        every workload in turn (but wakecost), one line each
  wakecost   not a workload: the CPU one 850-byte loopback write costs the
             writer when the reader is asleep (a wake) and when it is busy,
             and what waking on an idle timer costs this process; their sum
             is the floor under the server's CPU per isolated change here

flags:
`

func main() {
	load.SetClientGC()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// flags holds the command line; only the flags given (flag.FlagSet.Visit)
// override a workload's defaults.
type flags struct {
	fs *flag.FlagSet

	bin, addr, admin, control  string
	api, gcpBin                string
	rounds                     int
	quick, keep, quiet         bool
	xdsDelta                   bool
	jsonPath, cpuprofile       string
	clientProfile, heapProfile string

	services, endpoints, streams, conns, newStreams, slowStreams int
	host                                                         string
	seed                                                         uint64
	rate, newPerSecond                                           float64
	duration, rampStep, rampLimit, syncTimeout                   time.Duration
	settle                                                       time.Duration
	rampRates, idleStreams, idleEndpoints                        string
	newBurst, idleMaxStreams, memoryLimitMiB                     int
}

func newFlags(stderr io.Writer) *flags {
	f := &flags{fs: flag.NewFlagSet("tributary-bench", flag.ContinueOnError)}
	fs := f.fs
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.bin, "bin", "", "tributary binary to start (default bin/tributary if present, else tributary on PATH)")
	fs.StringVar(&f.addr, "addr", "", "attach to a running server: its destination API host:port")
	fs.StringVar(&f.admin, "admin", "", "attach: the server's admin host:port (/metrics, /debug/pprof)")
	fs.StringVar(&f.control, "control", "", "attach: the bench source's control API host:port")
	fs.BoolVar(&f.quick, "quick", false, "small sizes and a few seconds (tests, smoke runs)")
	fs.BoolVar(&f.keep, "keep", false, "keep the started server's folder (config and log)")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress on stderr")
	fs.StringVar(&f.jsonPath, "json", "", "also write the result(s) as JSON to this file")
	fs.StringVar(&f.cpuprofile, "cpuprofile", "", "write a CPU profile of the server during churn to this file")
	fs.StringVar(&f.heapProfile, "heapprofile", "", "write a heap profile of the server with its streams open and idle to this file")
	fs.StringVar(&f.clientProfile, "client-cpuprofile", "", "write a CPU profile of this tool during churn to this file")
	fs.IntVar(&f.services, "services", 0, "S: bench services")
	fs.IntVar(&f.endpoints, "endpoints", 0, "E: endpoints per service")
	fs.StringVar(&f.api, "api", "destination", "steady: the streams' API, destination (Get) or xds (ADS/EDS, against go-control-plane too)")
	fs.StringVar(&f.gcpBin, "gcp-bin", "", "--api xds: go-control-plane comparison server (default: built from tools/gcp-xds-v0.14.0)")
	fs.BoolVar(&f.xdsDelta, "xds-delta", false, "--api xds: incremental (delta) ADS streams instead of state of the world")
	fs.IntVar(&f.rounds, "rounds", 0, "--api xds: turns of each server, alternated (default 1); figures are medians")
	fs.StringVar(&f.host, "host", "", "bench authority pattern with one %d (default svc-%d.bench:8080)")
	fs.Uint64Var(&f.seed, "seed", 0, "seed of the bench source's changes")
	fs.IntVar(&f.streams, "streams", 0, "W: Get streams (watcher i watches service i mod S)")
	fs.IntVar(&f.conns, "conns", 0, "C: gRPC connections the streams share")
	fs.Float64Var(&f.rate, "rate", 0, "R: endpoint changes per second")
	fs.DurationVar(&f.duration, "duration", 0, "D: how long the churn runs")
	fs.IntVar(&f.newStreams, "new-streams", 0, "extra streams opened one by one with W open, for the new-stream latency")
	fs.Float64Var(&f.newPerSecond, "new-per-second", 0, "started server: its server.streams.new_per_second (storm: the admission limit and its retry hints at work)")
	fs.IntVar(&f.newBurst, "new-burst", 0, "started server: its server.streams.new_burst")
	fs.IntVar(&f.memoryLimitMiB, "memory-limit-mib", 0, "started server: run it in a memory cgroup with this limit (MiB), as a container with a memory limit (needs root or a delegated cgroup)")
	fs.IntVar(&f.slowStreams, "slow-streams", 0, "steady: extra streams, on their own connections, that stop reading after their first message (slow clients)")
	fs.StringVar(&f.rampRates, "ramp-rates", "", "ramp: comma-separated rates (default 200,500,1000,2000,3000,4000,5000)")
	fs.DurationVar(&f.rampStep, "ramp-step", 0, "ramp: time per rate (default 10s)")
	fs.DurationVar(&f.rampLimit, "ramp-limit", 0, "ramp: the p99 bound (default 100ms)")
	fs.StringVar(&f.idleStreams, "idle-streams", "", "idle: comma-separated stream counts (default 1000,10000,50000)")
	fs.StringVar(&f.idleEndpoints, "idle-endpoints", "", "idle: comma-separated endpoint counts (default 0,10000,100000)")
	fs.IntVar(&f.idleMaxStreams, "idle-max-streams", 0, "idle: streams opened on the largest endpoint count (default 10000)")
	fs.DurationVar(&f.syncTimeout, "sync-timeout", 0, "bound of the wait for every first message (default 30s + 1s per 1000 streams)")
	fs.DurationVar(&f.settle, "settle", 0, "bound of the wait for every stream to reach the final state (default 30s)")
	return f
}

// options are the workload's defaults with the flags that were set.
func (f *flags) options(workload string) (load.Options, error) {
	o, err := load.DefaultOptions(workload, f.quick)
	if err != nil {
		return o, err
	}
	o.Bin, o.Addr, o.Admin, o.Control, o.Keep, o.CPUProfile = f.bin, f.addr, f.admin, f.control, f.keep, f.cpuprofile
	o.ClientCPUProfile, o.HeapProfile = f.clientProfile, f.heapProfile
	ints := func(s string) ([]int, error) {
		var out []int
		for _, p := range strings.Split(s, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || v < 0 {
				return nil, fmt.Errorf("%q: want comma-separated counts", s)
			}
			out = append(out, v)
		}
		return out, nil
	}
	var errs []error
	f.fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "services":
			o.Services = f.services
		case "endpoints":
			o.Endpoints = f.endpoints
		case "host":
			o.Host = f.host
		case "seed":
			o.Seed = f.seed
		case "streams":
			o.Streams = f.streams
		case "conns":
			o.Conns = f.conns
		case "rate":
			o.Rate = f.rate
		case "duration":
			o.Duration = f.duration
		case "new-streams":
			o.NewStreams = f.newStreams
		case "slow-streams":
			o.SlowStreams = f.slowStreams
		case "new-burst":
			o.NewStreamsBurst = f.newBurst
		case "memory-limit-mib":
			o.MemoryLimitMiB = f.memoryLimitMiB
		case "new-per-second":
			o.NewStreamsPerSecond = f.newPerSecond
		case "ramp-rates":
			o.RampRates = nil
			for _, p := range strings.Split(f.rampRates, ",") {
				v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
				if err != nil || v <= 0 {
					errs = append(errs, fmt.Errorf("--ramp-rates %q: want comma-separated positive rates", f.rampRates))
					return
				}
				o.RampRates = append(o.RampRates, v)
			}
		case "ramp-step":
			o.RampStep = f.rampStep
		case "ramp-limit":
			o.RampLimit = f.rampLimit
		case "idle-streams":
			v, err := ints(f.idleStreams)
			if err != nil {
				errs = append(errs, fmt.Errorf("--idle-streams %w", err))
			}
			o.IdleStreams = v
		case "idle-endpoints":
			v, err := ints(f.idleEndpoints)
			if err != nil {
				errs = append(errs, fmt.Errorf("--idle-endpoints %w", err))
			}
			o.IdleEndpoints = v
		case "idle-max-streams":
			o.IdleMaxStreams = f.idleMaxStreams
		case "sync-timeout":
			o.SyncTimeout = f.syncTimeout
		case "settle":
			o.Settle = f.settle
		case "api":
			o.API = f.api
		case "gcp-bin":
			o.GCPBin = f.gcpBin
		case "rounds":
			o.Rounds = f.rounds
		case "xds-delta":
			o.XDSDelta = f.xdsDelta
		}
	})
	return o, errors.Join(errs...)
}

func defaultBin() string {
	if fi, err := os.Stat("bin/tributary"); err == nil && !fi.IsDir() {
		return "bin/tributary"
	}
	if p, err := exec.LookPath("tributary"); err == nil {
		return p
	}
	return ""
}

func run(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 2 && args[0] == load.ReaderArg:
		if err := load.RunWakeReader(args[1]); err != nil {
			fmt.Fprintf(stderr, "tributary-bench: %v\n", err)
			return 1
		}
		return 0
	case len(args) >= 1 && args[0] == load.FloorArg:
		if err := load.RunFloorServer(args[1:]); err != nil {
			fmt.Fprintf(stderr, "tributary-bench: %v\n", err)
			return 1
		}
		return 0
	}
	f := newFlags(stderr)
	var workload string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		workload, args = args[0], args[1:]
	}
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if workload == "" && f.fs.NArg() > 0 {
		workload = f.fs.Arg(0)
	} else if f.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tributary-bench: unexpected arguments %q\n", f.fs.Args())
		return 2
	}
	if workload == "" {
		f.fs.Usage()
		return 2
	}
	if f.bin == "" && f.addr == "" {
		f.bin = defaultBin()
	}
	workloads := []string{workload}
	if workload == "all" {
		workloads = load.Workloads
	}
	var opts []load.Options
	for _, w := range workloads {
		o, err := f.options(w)
		if err != nil {
			fmt.Fprintf(stderr, "tributary-bench: %v\n", err)
			return 2
		}
		if !f.quiet {
			o.Log = stderr
		}
		if len(workloads) > 1 {
			if o.CPUProfile != "" {
				o.CPUProfile = w + "-" + o.CPUProfile
			}
			if o.ClientCPUProfile != "" {
				o.ClientCPUProfile = w + "-" + o.ClientCPUProfile
			}
			if o.HeapProfile != "" {
				o.HeapProfile = w + "-" + o.HeapProfile
			}
		}
		opts = append(opts, o)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := 0
	var results []*load.Result
	for _, o := range opts {
		res := load.Run(ctx, o)
		fmt.Fprintln(stdout, res.Line())
		results = append(results, res)
		if !res.OK {
			code = 1
		}
		if ctx.Err() != nil {
			break
		}
	}
	if f.jsonPath != "" {
		var v any = results
		if len(results) == 1 {
			v = results[0]
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err == nil {
			err = os.WriteFile(f.jsonPath, append(b, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "tributary-bench: --json: %v\n", err)
			code = 1
		}
	}
	return code
}
