package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/procfs"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// Server is the tributary process under test: one this tool started
// (Pid > 0), or an existing one it attached to.
type Server struct {
	API, Admin, Control string
	// XDS is the xDS (ADS) address when the server serves xDS.
	XDS string
	// Pid of the process when this tool started it; 0 when attached.
	Pid int
	// Ready is the time from the process's start to its /readyz answering
	// 200 (every source synced) and the bench control API answering.
	Ready time.Duration

	cmd       *exec.Cmd
	dir       string
	keep      bool
	afterExit func() // when the process has exited
	exited    chan struct{}
	http      *http.Client
}

// ServerSpec is the bench source workload of a server this tool starts.
type ServerSpec struct {
	Bin       string
	Services  int
	Endpoints int
	Host      string
	Seed      uint64
	// NewStreamsPerSecond, when not 0, is the server's
	// server.streams.new_per_second (the storm workload's admission rate).
	NewStreamsPerSecond float64
	NewStreamsBurst     int // server.streams.new_burst, when not 0
	// XDS adds an xds: section (listen on a free port); Impl ImplGCP
	// starts go-control-plane's comparison server (GCPBin) instead.
	XDS          bool
	Impl, GCPBin string
	// Keep leaves the folder with the config and the server's log.
	Keep bool
	// MemoryLimitMiB, when not 0, runs the server in a memory cgroup with
	// this limit (integration/harness.MemoryCgroup).
	MemoryLimitMiB int
}

var errServerExited = errors.New("tributary exited")

// StartServer writes a config with a paused bench source and starts
// `tributary serve --pprof` on free loopback ports; it returns once the
// server is ready and the bench control API answers.
func StartServer(ctx context.Context, spec ServerSpec) (*Server, error) {
	if spec.Impl == ImplGCP {
		return startGCP(ctx, spec)
	}
	if spec.Bin == "" {
		return nil, errors.New("no tributary binary: give --bin (or --addr, --admin and --control for a running server)")
	}
	bin, err := exec.LookPath(spec.Bin)
	if err != nil {
		return nil, fmt.Errorf("tributary binary: %w", err)
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tributary-bench-")
	if err != nil {
		return nil, err
	}
	s := &Server{API: ports[0], Admin: ports[1], Control: ports[2], dir: dir, keep: spec.Keep, exited: make(chan struct{}), http: newHTTPClient()}
	cfg := fmt.Sprintf(`# Written by tributary-bench: a benchmark server, not for production.
server:
  listen: %s
  admin: %s
  startup_timeout: 2s
  shutdown_timeout: 5s
  log_level: info
sources:
  - name: bench
    kind: bench
    services: %d
    endpoints: %d
    host: %q
    seed: %d
    paused: true
    control: %s
`, s.API, s.Admin, spec.Services, spec.Endpoints, spec.Host, spec.Seed, s.Control)
	if spec.XDS {
		s.XDS = ports[3]
		cfg += xdsConfig(s.XDS)
	}
	if spec.NewStreamsPerSecond != 0 || spec.NewStreamsBurst != 0 {
		cfg = strings.Replace(cfg, "  log_level: info\n", fmt.Sprintf("  log_level: info\n  streams:\n    new_per_second: %g\n    new_burst: %d\n",
			spec.NewStreamsPerSecond, spec.NewStreamsBurst), 1)
	}
	cfgPath := filepath.Join(dir, "tributary.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--config", cfgPath, "--pprof")
	if spec.MemoryLimitMiB > 0 {
		procs, remove, err := harness.MemoryCgroup("tributary-bench", int64(spec.MemoryLimitMiB)<<20)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("--memory-limit-mib: %w", err)
		}
		harness.InCgroup(cmd, procs)
		s.afterExit = func() {
			if err := remove(); err != nil {
				fmt.Fprintf(os.Stderr, "tributary-bench: removing the server's cgroup: %v\n", err)
			}
		}
	}
	if err := s.launch(ctx, spec, "config and log", cmd); err != nil {
		return nil, err
	}
	return s, nil
}

// launch runs cmd as s's server process, its output in s's folder's
// server.log, and waits until it is ready: what it serves is fully read
// (readyBound for the spec's size). On failure the folder is kept (the
// error names it, as what) or removed if nothing ran.
func (s *Server) launch(ctx context.Context, spec ServerSpec, what string, cmd *exec.Cmd) error {
	logf, err := os.Create(filepath.Join(s.dir, "server.log"))
	if err != nil {
		os.RemoveAll(s.dir)
		return err
	}
	s.cmd = cmd
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	start := time.Now()
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(s.dir)
		return err
	}
	s.Pid = s.cmd.Process.Pid
	go func() {
		_ = s.cmd.Wait()
		logf.Close()
		if s.afterExit != nil {
			s.afterExit()
		}
		close(s.exited)
	}()
	if err := s.waitReady(ctx, readyBound(spec.Services*spec.Endpoints)); err != nil {
		s.keep = true
		s.Stop()
		return fmt.Errorf("%w (%s in %s)", err, what, s.dir)
	}
	s.Ready = time.Since(start)
	return nil
}

// AttachServer uses a running server; its config must have a bench source
// whose control API listens on control.
func AttachServer(ctx context.Context, api, admin, control string) (*Server, error) {
	if api == "" || admin == "" || control == "" {
		return nil, errors.New("attaching to a running server needs --addr, --admin and --control")
	}
	s := &Server{API: api, Admin: admin, Control: control, http: newHTTPClient()}
	if err := s.waitReady(ctx, 10*time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

func newHTTPClient() *http.Client {
	return &http.Client{Timeout: 2 * time.Minute}
}

// LogPath is the server's log file when this tool started it.
func (s *Server) LogPath() string {
	if s.dir == "" {
		return ""
	}
	return filepath.Join(s.dir, "server.log")
}

// Keep leaves the server's folder (config and log) in place after Stop.
func (s *Server) Keep() { s.keep = true }

func (s *Server) waitReady(ctx context.Context, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	var last error
	for {
		code, _, err := s.get(ctx, "http://"+s.Admin+"/readyz")
		if err == nil && code == http.StatusOK {
			if code, body, err := s.get(ctx, "http://"+s.Control+"/status"); err == nil && code == http.StatusOK {
				return nil
			} else if err == nil {
				last = fmt.Errorf("bench control API: %d %s", code, body)
			} else {
				last = fmt.Errorf("bench control API: %w", err)
			}
		} else if err != nil {
			last = err
		} else {
			last = fmt.Errorf("/readyz: %d", code)
		}
		if s.exited != nil {
			select {
			case <-s.exited:
				return errServerExited
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not ready after %v: %v", bound, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *Server) get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// Alive reports an error once a started server has exited.
func (s *Server) Alive() error {
	if s.exited == nil {
		return nil
	}
	select {
	case <-s.exited:
		return fmt.Errorf("%w unexpectedly (log: %s)", errServerExited, s.LogPath())
	default:
		return nil
	}
}

// Stop ends a started server (SIGTERM, then SIGKILL after 15 s) and removes
// its folder unless kept. An attached server is left running.
func (s *Server) Stop() {
	s.http.CloseIdleConnections()
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
	default:
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.exited
		}
	}
	if !s.keep {
		os.RemoveAll(s.dir)
	}
}

// Sample is the server's resource use at one moment.
type Sample struct {
	At  time.Time
	CPU float64 // seconds of CPU (user+system) since the process started
	RSS float64 // bytes
	// From the server's /metrics (Go runtime): heap and stacks in use,
	// goroutines, Get streams open, messages sent on streams.
	HeapInuse, StackInuse float64
	Goroutines            float64
	Streams               float64
	UpdatesSent           float64
	// Propagation is the server's own histogram of the time from a change
	// entering its registry to its send on a stream
	// (tributary_update_propagation_seconds), when it has one.
	Propagation []Bucket
}

// Bucket is one cumulative bucket of a Prometheus histogram.
type Bucket struct {
	UpperBound float64 // seconds
	Count      float64 // observations <= UpperBound
}

// PropagationQuantile estimates quantile q of the observations made
// between from and to, interpolating linearly inside a bucket as
// Prometheus' histogram_quantile does; ok is false without observations.
func PropagationQuantile(from, to Sample, q float64) (seconds float64, ok bool) {
	if len(to.Propagation) == 0 || len(from.Propagation) != len(to.Propagation) {
		return 0, false
	}
	delta := make([]Bucket, len(to.Propagation))
	for i, b := range to.Propagation {
		delta[i] = Bucket{UpperBound: b.UpperBound, Count: b.Count - from.Propagation[i].Count}
	}
	total := delta[len(delta)-1].Count
	if total <= 0 {
		return 0, false
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range delta {
		if b.Count >= rank {
			if math.IsInf(b.UpperBound, 1) {
				return lower, true // beyond the last finite bound: report that bound
			}
			if b.Count == below {
				return b.UpperBound, true
			}
			return lower + (b.UpperBound-lower)*(rank-below)/(b.Count-below), true
		}
		lower, below = b.UpperBound, b.Count
	}
	return lower, true
}

// Live is the Go memory in use: heap spans plus goroutine stacks.
func (s Sample) Live() float64 { return s.HeapInuse + s.StackInuse }

// Sample reads CPU and RSS from /proc when this tool started the process
// (no scrape perturbs it), else from its /metrics; the Go runtime figures
// always come from /metrics.
func (s *Server) Sample(ctx context.Context) (Sample, error) {
	out := Sample{At: time.Now()}
	fams, err := s.metrics(ctx)
	if err != nil {
		return out, err
	}
	val := func(name string) float64 {
		f := fams[name]
		if f == nil {
			return 0
		}
		var sum float64
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				sum += m.GetUntyped().GetValue()
			}
		}
		return sum
	}
	out.HeapInuse = val("go_memstats_heap_inuse_bytes")
	out.StackInuse = val("go_memstats_stack_inuse_bytes")
	out.Goroutines = val("go_goroutines")
	out.UpdatesSent = val("tributary_updates_sent_total")
	if f := fams["tributary_update_propagation_seconds"]; f != nil && len(f.GetMetric()) == 1 {
		if h := f.GetMetric()[0].GetHistogram(); h != nil {
			for _, b := range h.GetBucket() {
				out.Propagation = append(out.Propagation, Bucket{UpperBound: b.GetUpperBound(), Count: float64(b.GetCumulativeCount())})
			}
			out.Propagation = append(out.Propagation, Bucket{UpperBound: math.Inf(1), Count: float64(h.GetSampleCount())})
		}
	}
	if f := fams["tributary_streams"]; f != nil {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == "Get" {
					out.Streams = m.GetGauge().GetValue()
				}
			}
		}
	}
	if s.Pid > 0 {
		cpu, rss, err := procUsage(s.Pid)
		if err != nil {
			return out, err
		}
		out.CPU, out.RSS = cpu, rss
	} else {
		out.CPU = val("process_cpu_seconds_total")
		out.RSS = val("process_resident_memory_bytes")
	}
	return out, nil
}

// Usage is the server's CPU seconds and RSS bytes, cheaply (no scrape when
// the process is ours).
func (s *Server) Usage(ctx context.Context) (cpu, rss float64, err error) {
	if s.Pid > 0 {
		return procUsage(s.Pid)
	}
	smp, err := s.Sample(ctx)
	return smp.CPU, smp.RSS, err
}

func procUsage(pid int) (cpu, rss float64, err error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, 0, err
	}
	return st.CPUTime(), float64(st.ResidentMemory()), nil
}

func (s *Server) metrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Admin+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("/metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

// Settle forces a garbage collection in the server (through
// /debug/pprof/heap?gc=1, available with --pprof), so that a memory sample
// holds live data only; without pprof it waits for the runtime's own.
func (s *Server) Settle(ctx context.Context) (Sample, error) {
	code, _, err := s.get(ctx, "http://"+s.Admin+"/debug/pprof/heap?gc=1")
	if err != nil || code != http.StatusOK {
		select {
		case <-ctx.Done():
			return Sample{}, ctx.Err()
		case <-time.After(3 * time.Second):
		}
	}
	return s.Sample(ctx)
}

// CPUProfile fetches a CPU profile of the given length into path.
func (s *Server) CPUProfile(ctx context.Context, d time.Duration, path string) error {
	return s.profile(ctx, fmt.Sprintf("profile?seconds=%d", max(1, int(d.Seconds()))), path)
}

// HeapProfile fetches a heap profile, after a garbage collection, into path.
func (s *Server) HeapProfile(ctx context.Context, path string) error {
	return s.profile(ctx, "heap?gc=1", path)
}

func (s *Server) profile(ctx context.Context, which, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Admin+"/debug/pprof/"+which, nil)
	if err != nil {
		return err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("profile: %s %s (is the server running with --pprof?)", resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Version asks the binary for its version ("" when attached or unknown).
func Version(bin string) string {
	if bin == "" {
		return ""
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "tributary"))
}

// freePorts returns n distinct loopback addresses that were free a moment ago.
func freePorts(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var out []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}
