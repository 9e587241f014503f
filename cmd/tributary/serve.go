package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/hashicorp/go-memdb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination"
	"github.com/tributary-mesh/tributary/destination/admin"
	dnsedge "github.com/tributary-mesh/tributary/destination/dns"
	"github.com/tributary-mesh/tributary/destination/policy"
	"github.com/tributary-mesh/tributary/destination/served"
	"github.com/tributary-mesh/tributary/destination/tlsauth"
	"github.com/tributary-mesh/tributary/destination/xds"
	"github.com/tributary-mesh/tributary/discovery"
	activehealth "github.com/tributary-mesh/tributary/discovery/health"
	_ "github.com/tributary-mesh/tributary/sources/all"
)

func serveCmd(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "Tributary config file (YAML)")
	listen := fs.String("listen", "", "destination API address; overrides server.listen")
	adminAddr := fs.String("admin", "", "admin HTTP address; overrides server.admin")
	logLevel := fs.String("log-level", "", "debug|info|warn|error; overrides server.log_level")
	pprofOn := fs.Bool("pprof", false, "serve /debug/pprof/ on the admin port")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" {
		fmt.Fprintln(stderr, "tributary serve: --config is required (try examples/tributary.yaml)")
		return 2
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "tributary serve: invalid config:\n%v\n", err)
		return 1
	}
	if *listen != "" {
		cfg.Server.Listen = *listen
	}
	if *adminAddr != "" {
		cfg.Server.Admin = *adminAddr
	}
	if *logLevel != "" {
		cfg.Server.LogLevel = *logLevel
	}
	logger, err := newLogger(stderr, cfg.Server.LogLevel, cfg.Server.LogFormat)
	if err != nil {
		fmt.Fprintf(stderr, "tributary serve: %v\n", err)
		return 2
	}
	slog.SetDefault(logger)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := serve(ctx, cfg, logger, *pprofOn); err != nil {
		logger.Error("tributary stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// serve wires the registry, the sources, the gRPC API and the admin HTTP
// server, and runs them until ctx ends; then it drains: not ready, no new
// streams, open streams end, exit — bounded by server.shutdown_timeout.
func serve(ctx context.Context, cfg *config, logger *slog.Logger, pprofOn bool) error {
	setMemoryLimit(cfg.Server.MemoryLimitRatio, logger)
	instances, err := cfg.BuildSources(logger)
	if err != nil {
		return err
	}
	fed, err := cfg.BuildFederation()
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	store := cache.New()
	// Active health checks sit between the sources that ask for them and the manager.
	checker := activehealth.New(activehealth.Options{Workers: cfg.Checks.MaxConcurrentChecks, Sources: cfg.Checks.Sources, Logger: logger, Registerer: reg})
	mgr := discovery.NewManager(store, instances, discovery.ManagerOptions{Logger: logger, WrapSink: checker.WrapSink})
	reg.MustRegister(admin.NewSourceCollector(mgr.Status, store))
	// Panic mode and health evictions, logged and counted as the registry
	// changes (destination/served).
	sourceNames := make([]string, len(instances))
	for i, in := range instances {
		sourceNames[i] = in.Config.Name
	}
	tracker := served.New(served.Options{Store: store, Federation: fed, Logger: logger, Registerer: reg, Sources: sourceNames})

	var zoners nodeZoners
	for _, in := range instances {
		if z, ok := in.Source.(discovery.NodeZoner); ok {
			zoners = append(zoners, z)
		}
	}
	var streams StreamsConfig
	if cfg.Server.Streams != nil {
		streams = *cfg.Server.Streams
	}
	// GetProfile(VIP:port) turns a virtual IP back into its service's name:
	// first the DNS interface's virtual IPs (dns:), then the cluster IPs of
	// every source that knows some (the kubernetes sources' Services), in
	// config order.
	var dnsServer *dnsedge.Server
	var vips []destination.VirtualIPs
	if cfg.DNS != nil {
		if dnsServer, err = dnsedge.New(dnsedge.Options{Store: store, Federation: fed, Authorities: ruleAuthorities(cfg.Federation),
			Settings: cfg.DNS, Synced: mgr.Synced(), StartupTimeout: time.Duration(cfg.Server.StartupTimeout), Logger: logger, Registerer: reg}); err != nil {
			return err
		}
		vips = append(vips, dnsServer)
	}
	vips = append(vips, sourceVIPs(instances)...)
	dest := destination.NewServer(destination.Options{
		VirtualIPs:          vips,
		SendTimeout:         time.Duration(streams.SendTimeout),
		NewStreamsPerSecond: streams.NewPerSecond,
		NewStreamsBurst:     streams.NewBurst,
		MaxStreams:          streams.Max,
		NodeZones:           zoners,
		Store:               store,
		Federation:          fed,
		Synced:              mgr.Synced(),
		StartupTimeout:      time.Duration(cfg.Server.StartupTimeout),
		Logger:              logger,
		Metrics:             destination.NewMetrics(reg),
	})
	// server.tls: mTLS and per-API authorization (nil guard: plaintext).
	var guard *tlsauth.Guard
	if cfg.TLS != nil {
		if guard, err = tlsauth.New(ctx, tlsauth.Options{Config: cfg.TLS, BaseDir: cfg.BaseDir, Logger: logger, Registerer: reg}); err != nil {
			return fmt.Errorf("server.tls: %w", err)
		}
		defer guard.Close()
	}
	ka := cfg.Server.KeepaliveSettings()
	opts := append(destination.ServerOptions(),
		// Requests are tiny; a bound keeps a hostile one from costing more than this.
		grpc.MaxRecvMsgSize(128<<10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Duration(ka.MinPingInterval), PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Duration(ka.Time), Timeout: time.Duration(ka.Timeout)}),
	)
	// Header list size and streams per connection (server.streams).
	opts = append(opts, destination.ConnectionLimits(streams.MaxPerConnection, streams.MaxHeaderBytes)...)
	grpcServer := grpc.NewServer(append(opts, guard.ServerOptions()...)...)
	dest.Register(grpcServer)
	if err := attachRegistration(grpcServer, instances, logger); err != nil {
		return err
	}
	// linkerd2-proxy's policy API, for proxies without a Linkerd control
	// plane: the same virtual IPs as GetProfile (docs/policy.md).
	pol, err := policy.New(policy.Options{VirtualIPs: policyVIPs(vips), Port: policyPort(store, fed), Inbound: cfg.Server.InboundPolicy})
	if err != nil {
		return fmt.Errorf("server.inbound_policy: %w", err)
	}
	pol.Register(grpcServer)
	healthSrv := health.NewServer()
	healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(grpcServer, healthSrv)
	reflection.Register(grpcServer)

	adminHandler := admin.New(admin.Options{
		Store: store, Status: mgr.Status, Gatherer: reg, Synced: mgr.Synced(), Version: version, Pprof: pprofOn,
		Federation: fed, Panicking: tracker.Panicking, HealthCheck: checkType(cfg.Checks.Sources),
		Checks: checker,
	})

	grpcLn, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return fmt.Errorf("destination API: %w", err)
	}
	adminLn, err := net.Listen("tcp", cfg.Server.Admin)
	if err != nil {
		grpcLn.Close()
		return fmt.Errorf("admin: %w", err)
	}
	// xds: the ADS server for Envoy and proxyless gRPC, on its own port
	// with the same mTLS and keepalive settings (docs/xds.md).
	var xdsServer *xds.Server
	var xdsGRPC *grpc.Server
	var xdsLn net.Listener
	if cfg.XDS != nil {
		xdsServer = xds.New(xds.Options{Store: store, Federation: fed, Settings: cfg.XDS, Synced: mgr.Synced(),
			StartupTimeout: time.Duration(cfg.Server.StartupTimeout), SendTimeout: time.Duration(streams.SendTimeout),
			MaxStreams: streams.Max, NewStreamsPerSecond: streams.NewPerSecond, NewStreamsBurst: streams.NewBurst,
			Logger: logger, Registerer: reg})
		xdsGRPC = grpc.NewServer(append(append(xds.ServerOptions(),
			grpc.MaxRecvMsgSize(4<<20), // an ADS request names every resource it subscribes to
			grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Duration(ka.MinPingInterval), PermitWithoutStream: true}),
			grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Duration(ka.Time), Timeout: time.Duration(ka.Timeout)}),
		), guard.ServerOptions()...)...)
		xdsServer.Register(xdsGRPC)
		if xdsLn, err = net.Listen("tcp", cfg.XDS.Listen.String()); err != nil {
			grpcLn.Close()
			adminLn.Close()
			return fmt.Errorf("xds: %w", err)
		}
		logger.Info("xds serving", "addr", xdsLn.Addr().String())
	}
	if dnsServer != nil {
		if err := dnsServer.Start(); err != nil {
			grpcLn.Close()
			adminLn.Close()
			if xdsLn != nil {
				xdsLn.Close()
			}
			return err
		}
	}
	adminServer := &http.Server{Handler: guard.AdminHandler(adminHandler), ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: guard.AdminTLSConfig(), ErrorLog: guard.AdminErrorLog()}
	logger.Info("tributary serving", "version", version, "api", grpcLn.Addr().String(), "admin", adminLn.Addr().String(),
		"sources", len(instances), "kinds", strings.Join(discovery.KindNames(), ","))

	srcCtx, stopSources := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() { mgr.Run(srcCtx) })
	wg.Go(func() { checker.Run(srcCtx) })
	wg.Go(func() { tracker.Run(srcCtx) })
	wg.Go(func() {
		if err := grpcServer.Serve(dest.Listener(grpcLn)); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("destination API: %w", err)
		}
	})
	if xdsGRPC != nil {
		wg.Go(func() {
			if err := xdsGRPC.Serve(xdsServer.Listener(xdsLn)); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errc <- fmt.Errorf("xds: %w", err)
			}
		})
	}
	wg.Go(func() {
		serveAdmin := adminServer.Serve
		if adminServer.TLSConfig != nil { // server.tls.admin: the certificate comes from TLSConfig
			serveAdmin = func(ln net.Listener) error { return adminServer.ServeTLS(ln, "", "") }
		}
		if err := serveAdmin(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin: %w", err)
		}
	})
	go func() {
		select {
		case <-mgr.Synced():
			healthSrv.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		case <-srcCtx.Done():
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down", "timeout", time.Duration(cfg.Server.ShutdownTimeout))
	case runErr = <-errc:
	}

	// Drain: not ready, no new streams, open streams end, then exit.
	deadline := time.Now().Add(time.Duration(cfg.Server.ShutdownTimeout))
	adminHandler.SetDraining()
	healthSrv.Shutdown()
	dest.Drain()
	if xdsServer != nil {
		// ADS streams never end by themselves: closing them is the drain,
		// and their clients reconnect to another replica.
		xdsServer.Drain()
		xdsGRPC.Stop()
	}
	stopped := make(chan struct{})
	go func() {
		grpcServer.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(time.Until(deadline)):
		logger.Warn("graceful stop timed out; closing connections")
		grpcServer.Stop()
		<-stopped
	}
	dest.Wait()
	if xdsServer != nil {
		xdsServer.Wait()
	}
	stopSources()
	shutCtx, cancel := context.WithDeadline(context.Background(), deadline.Add(time.Second))
	defer cancel()
	_ = adminServer.Shutdown(shutCtx)
	if dnsServer != nil {
		_ = dnsServer.Shutdown(shutCtx)
	}
	wg.Wait()
	logger.Info("stopped")
	return runErr
}

// ruleAuthorities are the authorities the federation rules name: names
// the DNS interface answers even when no source declares them.
func ruleAuthorities(rules []discovery.FederationRule) []discovery.Authority {
	out := make([]discovery.Authority, 0, len(rules))
	for _, r := range rules {
		out = append(out, r.Authority)
	}
	return out
}

// sourceVIPs are the sources that map virtual IPs to names (a kubernetes
// source's LookupVIP: its Services' cluster IPs), in config order.
// policyVIPs gives the policy API the virtual IPs GetProfile uses.
func policyVIPs(vips []destination.VirtualIPs) []policy.VirtualIPs {
	out := make([]policy.VirtualIPs, len(vips))
	for i, v := range vips {
		out[i] = v
	}
	return out
}

// policyPort tells the policy API what the registry says of host:port,
// from the same rows as GetProfile: opaque when some member of its
// federation marks it so (opaque_protocol); undefined when the members'
// hosts have service rows, none for this port nor for any port. Changed
// holds the watch channels of those rows, so a Watch wakes when they do.
func policyPort(store *cache.Store, fed *discovery.Federation) func(host string, port uint16) policy.Port {
	return func(host string, port uint16) policy.Port {
		a := discovery.Authority{Host: host, Port: port}
		snap := store.Snapshot()
		ws := memdb.NewWatchSet()
		var pt policy.Port
		declared, served := false, false
		for _, m := range fed.Members(a) {
			if snap.Service(ws, m).Opaque {
				pt.Opaque = true
			}
			for _, p := range snap.Ports(ws, m.Host) {
				declared = true
				if p == 0 || p == m.Port {
					served = true
				}
			}
		}
		pt.Undefined = declared && !served
		for ch := range ws {
			pt.Changed = append(pt.Changed, ch)
		}
		return pt
	}
}

func sourceVIPs(instances []discovery.Instance) []destination.VirtualIPs {
	var out []destination.VirtualIPs
	for _, in := range instances {
		if v, ok := in.Source.(destination.VirtualIPs); ok {
			out = append(out, v)
		}
	}
	return out
}

// nodeZoners asks each source that knows node zones, in config order.
type nodeZoners []discovery.NodeZoner

func (zs nodeZoners) NodeZone(node string) (string, bool) {
	for _, z := range zs {
		if zone, ok := z.NodeZone(node); ok {
			return zone, true
		}
	}
	return "", false
}

// checkType names the active check that sets the health of a source's
// endpoints of an authority, for the admin API ("" for none).
func checkType(sources map[string]*activehealth.Checks) func(string, discovery.Authority) string {
	return func(source string, a discovery.Authority) string {
		cs := sources[source]
		if cs == nil {
			return ""
		}
		if hc := cs.For(a); hc != nil && hc.Type != activehealth.CheckNone {
			return hc.Type
		}
		return ""
	}
}

// setMemoryLimit gives the Go runtime a soft memory limit of ratio times the
// container's memory limit (the cgroup's, v2 or v1), as Prometheus's
// auto-gomemlimit does, unless the GOMEMLIMIT or AUTOMEMLIMIT environment
// variables say otherwise (automemlimit's rules). The registry's heap grows
// with the estate and Go collects at twice the live heap by default: a
// replica holding more than about half its container's limit would be
// killed by the kernel before the collector ran. Outside a container with
// a limit nothing changes.
func setMemoryLimit(ratio float64, logger *slog.Logger) {
	if ratio == 0 {
		return
	}
	before := debug.SetMemoryLimit(-1)
	limit, err := memlimit.Set(memlimit.WithRatio(ratio), memlimit.WithProvider(memlimit.FromCgroup))
	switch {
	case err != nil:
		logger.Debug("no memory limit from a container", "err", err)
	case limit != before:
		logger.Info("Go memory limit set from the container's", "gomemlimit_bytes", limit, "ratio", ratio)
	}
}
