package load

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The APIs --api accepts: Linkerd's destination API (Get streams) and xDS
// (ADS streams subscribed to EDS).
const (
	APIDestination = "destination"
	APIXDS         = "xds"
)

// The servers an xDS run measures: Tributary, and go-control-plane
// v0.14.0's LinearCache (tools/gcp-xds-v0.14.0) fed by the same bench
// source.
const (
	ImplTributary = "tributary"
	ImplGCP       = "gcp"
)

// gcpModule is the comparison server's module, relative to the repository.
const gcpModule = "tools/gcp-xds-v0.14.0"

// gcpPrefix prefixes go-control-plane's figures in an xDS run's result.
const gcpPrefix = "gcp_"

// compareKeys are the figures an xDS run compares, Tributary's over
// go-control-plane's, as vs_gcp_KEY (below 1: Tributary uses less).
var compareKeys = []string{"p50_ms", "p99_ms", "server_cpu_us_per_delivery", "mem_per_stream_kib", "live_per_stream_kib", "sync_s"}

// steadyXDS is `steady --api xds`: the steady workload over EDS, on
// Tributary and on go-control-plane in turn (Rounds times each, Tributary
// first), each on a fresh server with the same seed, so both get the
// identical stream of changes at the same rate. Tributary's figures keep
// the workload's keys; go-control-plane's have the prefix gcp_; with more
// than one round each figure is the median of the rounds.
func (r *runner) steadyXDS(ctx context.Context) error {
	rounds := max(r.o.Rounds, 1)
	r.res.Set("api", APIXDS)
	r.res.Set("xds_protocol", map[bool]string{false: "sotw", true: "delta"}[r.o.XDSDelta])
	r.res.Set("rounds", rounds)
	if r.o.attach() {
		return errors.New("--api xds starts both servers itself: --addr/--admin/--control are not supported")
	}
	var err error
	if r.o.GCPBin == "" {
		if r.o.GCPBin, err = buildGCP(r.logf); err != nil {
			return err
		}
	}
	runs := map[string][]*Result{}
	for round := range rounds {
		for _, impl := range []string{ImplTributary, ImplGCP} {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			o := r.o
			o.Impl = impl
			o.Floor = false // the caller's run measures it once, after both
			for _, f := range []*string{&o.CPUProfile, &o.HeapProfile, &o.ClientCPUProfile} {
				if *f != "" { // one file per server and round
					*f = filepath.Join(filepath.Dir(*f), fmt.Sprintf("%s-%d-%s", impl, round+1, filepath.Base(*f)))
				}
			}
			o.Log = prefixWriter{r.log, impl}
			r.logf("round %d of %d: %s", round+1, rounds, impl)
			res := Run(ctx, o)
			runs[impl] = append(runs[impl], res)
			r.logf("round %d, %s: %s", round+1, impl, res.summary())
			if !res.OK {
				r.res.Fail("%s (round %d): %v", impl, round+1, res.values["errors"])
			}
			if d, _ := number(res.values["deliveries"]); d == 0 && o.Rate > 0 && o.Duration > 0 {
				r.res.Fail("%s (round %d): no change delivery measured: its EDS endpoints carry no bench_ts/bench_seq labels in their metadata", impl, round+1)
			}
		}
	}
	merge(r.res, runs[ImplTributary], "")
	merge(r.res, runs[ImplGCP], gcpPrefix)
	if r.o.Floor && ctx.Err() == nil {
		// After both servers stopped, so that it does not share the cores.
		r.logf("measuring the xDS floor (a minimal grpc-go ADS server, xds_floor.go)")
		if err := measureServerFloor(ctx, r.res, floorXDS, r.o.Streams, r.o.Conns, r.o.Services, r.o.Endpoints, r.o.Rate, min(r.o.Duration, 10*time.Second)); err != nil {
			r.res.Fail("xDS floor: %v", err)
		} else {
			xdsFloorFigures(r.res)
		}
	}
	for _, k := range compareKeys {
		t, okT := r.res.values[k].(float64)
		g, okG := r.res.values[gcpPrefix+k].(float64)
		if okT && okG && g > 0 && t > 0 {
			r.res.Set("vs_gcp_"+k, t/g)
		}
	}
	return nil
}

// merge copies the figures of runs into res under prefix: numbers as the
// median over the runs, anything else from the first run. Warnings and
// errors are handled by the caller and the environment keys by Run.
func merge(res *Result, runs []*Result, prefix string) {
	if len(runs) == 0 {
		return
	}
	skip := map[string]bool{"workload": true, "errors": true, "cores": true, "client_gogc": true, "load1": true, "busy": true, "cpu": true}
	for _, k := range runs[0].keys {
		if skip[k] {
			continue
		}
		if _, ok := number(runs[0].values[k]); ok {
			var vs []float64
			for _, r := range runs {
				if v, ok := number(r.values[k]); ok {
					vs = append(vs, v)
				}
			}
			slices.Sort(vs)
			switch n := len(vs); {
			case worst[k]:
				res.Set(prefix+k, vs[n-1])
			case n%2 == 0:
				res.Set(prefix+k, (vs[n/2-1]+vs[n/2])/2)
			default:
				res.Set(prefix+k, vs[n/2])
			}
			continue
		}
		if k == "warnings" {
			for _, r := range runs {
				if w, ok := r.values[k].(string); ok {
					res.Warn("%s%s", prefix, w)
				}
			}
			continue
		}
		res.Set(prefix+k, runs[0].values[k])
	}
}

// summary is a run's main figures, for the log of a run of several.
func (res *Result) summary() string {
	var parts []string
	for _, k := range append([]string{"sync_s"}, "p50_ms", "p99_ms", "server_cpu_us_per_delivery", "mem_per_stream_kib", "lost_final_states") {
		if v, ok := res.values[k]; ok {
			parts = append(parts, k+"="+format(v))
		}
	}
	return strings.Join(parts, " ")
}

// worst are the correctness counts: a run reports the worst round's.
var worst = map[string]bool{"lost_final_states": true, "contract_errors": true, "stream_errors": true, "skipped": true}

// number reads a figure that is a number of any Go type Result holds.
func number(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case uint32:
		return float64(x), true
	}
	return 0, false
}

// prefixWriter prefixes each progress line with the server measured.
type prefixWriter struct {
	w    interface{ Write([]byte) (int, error) }
	impl string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := fmt.Fprintf(p.w, "[%s] %s", p.impl, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

var gcpBuild struct {
	once sync.Once
	bin  string
	err  error
}

// buildGCP builds the comparison server from its module in the repository
// this tool runs in (the current folder or one above it), once per process.
func buildGCP(logf func(string, ...any)) (string, error) {
	gcpBuild.once.Do(func() {
		dir, err := findModule()
		if err != nil {
			gcpBuild.err = err
			return
		}
		out, err := os.MkdirTemp("", "tributary-bench-gcp-")
		if err != nil {
			gcpBuild.err = err
			return
		}
		bin := filepath.Join(out, "gcp-xds")
		logf("building the go-control-plane comparison server (%s)", dir)
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			gcpBuild.err = fmt.Errorf("building %s: %v\n%s (or give --gcp-bin)", dir, err, b)
			return
		}
		logf("built in %v", time.Since(start).Round(time.Millisecond))
		gcpBuild.bin = bin
	})
	return gcpBuild.bin, gcpBuild.err
}

func findModule() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, gcpModule)
		if fi, err := os.Stat(filepath.Join(p, "go.mod")); err == nil && !fi.IsDir() {
			return p, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", fmt.Errorf("%s not found in the current folder or above: run from the repository, or give --gcp-bin", gcpModule)
		}
		dir = up
	}
}

// startGCP starts the comparison server on free loopback ports, with the
// bench source's services paused, and returns once it is ready. API and
// XDS are both its xDS address.
func startGCP(ctx context.Context, spec ServerSpec) (*Server, error) {
	bin, err := exec.LookPath(spec.GCPBin)
	if err != nil {
		return nil, fmt.Errorf("go-control-plane comparison server: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tributary-bench-")
	if err != nil {
		return nil, err
	}
	s := &Server{API: ports[0], XDS: ports[0], Admin: ports[1], Control: ports[2], dir: dir, keep: spec.Keep, exited: make(chan struct{}), http: newHTTPClient()}
	cmd := exec.Command(bin, "--xds", s.XDS, "--admin", s.Admin, "--control", s.Control,
		"--services", fmt.Sprint(spec.Services), "--endpoints", fmt.Sprint(spec.Endpoints),
		"--host", spec.Host, "--seed", fmt.Sprint(spec.Seed))
	if err := s.launch(ctx, spec, "log", cmd); err != nil {
		return nil, err
	}
	return s, nil
}

// xdsConfig is the xds: section of a started Tributary's config.
func xdsConfig(addr string) string {
	return fmt.Sprintf("xds:\n  listen: %s\n", addr)
}

// checkXDS vets the options of an xDS run.
func (o *Options) checkXDS() error {
	switch o.API {
	case "", APIDestination:
		return nil
	case APIXDS:
		if o.Workload != "steady" {
			return fmt.Errorf("--api xds runs the steady workload only (got %s)", o.Workload)
		}
		if o.SlowStreams > 0 {
			return errors.New("--slow-streams is not supported with --api xds")
		}
		return nil
	}
	return fmt.Errorf("--api %q: want %s or %s", o.API, APIDestination, APIXDS)
}

// implName is the server a result measured, for the log.
func implName(impl string) string {
	return strings.NewReplacer(ImplGCP, "go-control-plane v0.14.0 LinearCache", ImplTributary, "tributary").Replace(impl)
}
