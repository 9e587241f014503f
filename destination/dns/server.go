// Package dns is Tributary's DNS interface: an authoritative DNS server for
// configured zones that answers from the registry, so that applications
// without a proxy (and stock proxies that discover by the IP the
// application dialled) reach every federated service.
//
// # Names
//
// A zone maps its names to registry hosts (ZoneConfig.Hosts): by default a
// name is the host itself (web.demo. in zone demo. is the host web.demo);
// with hosts: "." the zone is cut off (web.demo.mesh. is web.demo); with
// hosts: service.dc1.consul the zone's part is replaced
// (web.service.consul. is web.service.dc1.consul). A name exists when a
// source declares its host, with any port, or a federation rule names it.
//
//   - A / AAAA <name>: the addresses of the endpoints Get would serve, for
//     every port of the host (failover tiers, health eviction and the panic
//     threshold applied per authority exactly as for Get), each address once,
//     zone-local first when the client's zone is known, shuffled. With
//     virtual IPs, the host's virtual IP instead.
//   - SRV <name>: one record per served endpoint (every port), target
//     <hex address>.addr.<zone> with its A/AAAA in the additional section.
//     SRV _<port>._tcp.<name> (RFC 2782 with the port number as service
//     label): the authority <host>:<port> only. Priority 0 is what Get
//     serves; later failover tiers' serving endpoints follow at priority
//     1, 2, … so a client that fails over itself has them. Weights are the
//     endpoints' (scaled into 16 bits). With virtual IPs: one record per
//     port, target the name itself (its A is the virtual IP).
//   - A / AAAA <hex>.addr.<zone>: the address spelt in hex (8 digits for
//     IPv4, 32 for IPv6), as Consul's SRV targets.
//   - Anything else on an existing name is NODATA; a name that does not
//     exist is NXDOMAIN, unless a longer existing name ends with it (an
//     empty non-terminal, RFC 8020), which is NODATA. Both carry the zone's
//     SOA, whose minimum is negative_ttl. Names outside every zone are
//     REFUSED.
//
// # Consistency
//
// Each answer reads one registry snapshot (a go-memdb read transaction), so
// it never mixes two states of a change, and resolves it with the same
// federation rules as Get. What it read for a name (a view) is reused until
// a commit changes one of the rows it came from (see Server.view).
//
// The list of every name (for empty non-terminals and virtual IPs) is an
// index derived from the registry whenever a service is added or removed:
// in the background, and before an answer that needs it, within a budget
// of a fifth of a core (see rebuildShare). Beyond the budget — services
// coming and going faster than the index can follow — those answers use
// the newest index built, at most a few rebuilds behind.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-memdb"
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination/internal/cowmap"
	"github.com/tributary-mesh/tributary/destination/vip"
	"github.com/tributary-mesh/tributary/discovery"
)

// Options configures a Server.
type Options struct {
	Store *cache.Store
	// Federation is the same rules the destination server applies; nil
	// means none.
	Federation *discovery.Federation
	// Authorities exist by configuration (the federation rules'
	// authorities): a name whose host is among them exists even when no
	// source declares it, and is answered through its rule's aliases.
	Authorities []discovery.Authority
	Settings    *Settings
	// Synced is closed when every source has synced; until then, and for
	// at most StartupTimeout, queries get SERVFAIL rather than an answer
	// that a resolver would cache from a half-built registry. nil: synced.
	Synced         <-chan struct{}
	StartupTimeout time.Duration
	Logger         *slog.Logger
	// Registerer, when set, gets the DNS metrics (tributary_dns_*).
	Registerer prometheus.Registerer
}

// Server answers DNS queries from the registry. Create it with New, start
// it with Start (or use it as a miekg/dns Handler), stop it with Shutdown.
type Server struct {
	store *cache.Store
	fed   *discovery.Federation
	set   *Settings
	log   *slog.Logger
	extra map[string][]uint16 // host → ports of configured authorities
	// extraHosts is extra's hosts, sorted.
	extraHosts []string
	synced     <-chan struct{}
	deadline   time.Time // answer anyway after this, synced or not
	ready      atomic.Bool
	metrics    *metrics
	views      *viewCache

	idx       atomic.Pointer[index]
	rebuildMu sync.Mutex // one rebuild at a time
	// rebuildAfter (Unix ns) is when the rebuild budget allows the next.
	rebuildAfter atomic.Int64
	// collisions is how many the last rebuild found (to log changes only);
	// guarded by rebuildMu.
	collisions int
	stop       context.CancelFunc
	wg         sync.WaitGroup
	udp        *mdns.Server
	tcp        *mdns.Server
	addr       net.Addr
	closed     bool
}

// New returns a server; nothing runs until Start.
func New(opts Options) (*Server, error) {
	if opts.Store == nil || opts.Settings == nil {
		return nil, errors.New("dns: Store and Settings are required")
	}
	s := &Server{store: opts.Store, fed: opts.Federation, set: opts.Settings, log: opts.Logger,
		extra: map[string][]uint16{}, synced: opts.Synced}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.fed == nil { // as the destination server: no rules, the default panic threshold
		s.fed, _ = discovery.NewFederation(nil, nil)
	}
	for _, a := range opts.Authorities {
		if _, seen := s.extra[a.Host]; !seen {
			s.extraHosts = append(s.extraHosts, a.Host)
		}
		s.extra[a.Host] = append(s.extra[a.Host], a.Port)
	}
	slices.Sort(s.extraHosts)
	if opts.StartupTimeout <= 0 {
		opts.StartupTimeout = 2 * time.Second
	}
	s.deadline = time.Now().Add(opts.StartupTimeout)
	if s.synced == nil {
		s.ready.Store(true)
	}
	s.idx.Store(s.buildIndex(context.Background(), nil, nil, nil))
	s.metrics = newMetrics(opts.Registerer, s)
	s.views = newViewCache(defaultViewCache)
	return s, nil
}

// Start builds the name index, starts following the registry, and listens
// on Settings.Listen over UDP and TCP (the same port; port 0 picks one,
// see Addr). It returns once both listeners are open.
func (s *Server) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.refresh(ctx) // the first index before the first answer
	s.wg.Go(func() { s.follow(ctx) })

	pc, ln, err := listenPair(s.set.Listen)
	if err != nil {
		cancel()
		s.wg.Wait()
		return fmt.Errorf("dns: %w", err)
	}
	s.addr = pc.LocalAddr()
	// UDPSize is the read buffer: a query of any size is read whole, so
	// that an oversized one gets FORMERR rather than a cut-off parse.
	s.udp = &mdns.Server{PacketConn: pc, Handler: s, UDPSize: mdns.MaxMsgSize}
	s.tcp = &mdns.Server{Listener: ln, Handler: s, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		IdleTimeout: func() time.Duration { return 8 * time.Second }}
	started := make(chan struct{}, 2)
	s.udp.NotifyStartedFunc = func() { started <- struct{}{} }
	s.tcp.NotifyStartedFunc = func() { started <- struct{}{} }
	for _, srv := range []*mdns.Server{s.udp, s.tcp} {
		s.wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Error("dns: server stopped", "error", err)
			}
		})
	}
	<-started
	<-started
	s.log.Info("dns interface listening", "addr", s.addr.String(), "zones", len(s.set.Zones))
	return nil
}

// Addr is the address the server listens on (UDP and TCP), once started.
func (s *Server) Addr() string {
	if s.addr == nil {
		return ""
	}
	return s.addr.String()
}

// Shutdown stops the listeners and the registry follower, and waits for them.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, srv := range []*mdns.Server{s.udp, s.tcp} {
		if srv != nil {
			errs = append(errs, srv.ShutdownContext(ctx))
		}
	}
	if s.stop != nil {
		s.stop()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// rebuildShare bounds the time spent rebuilding the index while services
// come and go: after a rebuild that took d, the next waits until
// rebuildShare×d has passed (at least minRebuildGap), so rebuilds take at
// most 1/rebuildShare of a core. At 1,000 names a rebuild takes well under
// a millisecond; at 100,000, about 200 ms (more with virtual IPs).
// A rebuild under cheapRebuild (any registry of a few thousand names)
// does not count against the budget.
const (
	rebuildShare  = 5
	minRebuildGap = 20 * time.Millisecond
	cheapRebuild  = 2 * time.Millisecond
)

// follow rebuilds the name index whenever a service is added to or removed
// from the registry, within the rebuild budget, until ctx ends.
func (s *Server) follow(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		if s.idx.Load().watch.WatchCtx(ctx) != nil {
			return
		}
		t.Reset(max(minRebuildGap, time.Until(s.nextRebuild()))) // a burst of changes is one rebuild
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.refreshIfStale(ctx)
	}
}

// nextRebuild is the earliest time the budget allows another rebuild.
func (s *Server) nextRebuild() time.Time {
	return time.Unix(0, s.rebuildAfter.Load())
}

// current returns the index, rebuilt first if a service was added or
// removed since it was built and the rebuild budget allows: then an
// answer that depends on the list of names (NXDOMAIN or NODATA, a
// virtual IP) does not lag the registry. Beyond the budget it is the
// newest index built, and the follower brings it up to date as soon as
// the budget allows.
func (s *Server) current() *index {
	idx := s.idx.Load()
	if !idx.stale() || time.Now().Before(s.nextRebuild()) {
		return idx
	}
	s.refreshIfStale(context.Background())
	return s.idx.Load()
}

// refreshIfStale rebuilds the index if it is stale (once, for every
// caller waiting meanwhile).
func (s *Server) refreshIfStale(ctx context.Context) {
	s.rebuildMu.Lock()
	defer s.rebuildMu.Unlock()
	if s.idx.Load().stale() {
		s.rebuild(ctx)
	}
}

// stale reports whether the registry's list of services changed since
// the index was built.
func (idx *index) stale() bool {
	for ch := range idx.watch {
		select {
		case <-ch:
			return true
		default:
		}
	}
	return false
}

// refresh rebuilds the index (see rebuild).
func (s *Server) refresh(ctx context.Context) {
	s.rebuildMu.Lock()
	defer s.rebuildMu.Unlock()
	s.rebuild(ctx)
}

// rebuild builds the index from the registry as it is now and publishes
// it, closing the previous index's changed channel if its virtual IP
// table changed. rebuildMu is held.
func (s *Server) rebuild(ctx context.Context) {
	start := time.Now()
	defer func() {
		d := time.Since(start)
		if d < cheapRebuild {
			s.rebuildAfter.Store(0) // never deferred: small registries are always exact
			return
		}
		s.rebuildAfter.Store(time.Now().Add(rebuildShare * d).UnixNano())
	}()
	ws := memdb.NewWatchSet()
	hosts := s.store.Snapshot().Hosts(ws)
	next := s.buildIndex(ctx, s.idx.Load(), hosts, ws)
	if old := s.idx.Swap(next); old != nil && old.changed != next.changed {
		close(old.changed)
	}
	if n := next.vips.Colliding(); n != s.collisions {
		s.collisions = n
		if c := next.vips.Collisions(); len(c) > 0 {
			s.log.Warn("dns: hosts without a virtual IP: another host has the same one (pin one of them in dns.virtual_ips.pins, or widen the range)",
				"hosts", n, "first", fmt.Sprint(c[0].Hosts), "addr", c[0].Addr.String())
		}
	}
}

// index is what the server knows of every name, rebuilt from the registry.
// Each rebuild derives it from the previous one: the host lists are
// compared, and only the names and virtual IPs of the hosts that came or
// went are touched (cowmap and vip.Table copy only what a change touches).
type index struct {
	// hosts is every host of the registry and of the configured
	// authorities, sorted.
	hosts []string
	// names counts, for every name some host makes exist in a zone and
	// every name between it and its zone (empty non-terminals), the hosts
	// that make it exist. Lower-case FQDNs.
	names cowmap.Map[string, int32]
	// vips is the virtual IP table, of the hosts vipHosts (sorted): the
	// hosts of the zones with virtual IPs, as of the last allocation that
	// succeeded.
	vips     *vip.Table
	vipHosts []string
	watch    memdb.WatchSet
	// changed is closed when a newer index has another virtual IP table
	// (indexes with the same table share it).
	changed chan struct{}
}

// has reports whether a name exists or is an empty non-terminal.
func (idx *index) has(name string) bool {
	n, _ := idx.names.Get(name)
	return n > 0
}

// knowsVIPHost reports whether host is one the virtual IP table holds
// (with or without an address).
func (idx *index) knowsVIPHost(host string) bool {
	_, ok := slices.BinarySearch(idx.vipHosts, host)
	return ok
}

// buildIndex derives the index for hosts (sorted, as Snapshot.Hosts
// returns them) from prev (nil: from nothing).
func (s *Server) buildIndex(ctx context.Context, prev *index, hosts []string, ws memdb.WatchSet) *index {
	if prev == nil {
		prev = &index{}
	}
	idx := &index{hosts: mergeSorted(hosts, s.extraHosts), watch: ws, changed: prev.changed}
	added, removed := diffSorted(prev.hosts, idx.hosts)
	e := prev.names.Edit()
	for _, h := range removed {
		s.countNames(e, h, -1)
	}
	for _, h := range added {
		s.countNames(e, h, +1)
	}
	idx.names = e.Done()
	idx.vips, idx.vipHosts = prev.vips, prev.vipHosts
	if idx.changed == nil {
		idx.changed = make(chan struct{})
	}
	if s.set.Allocator == nil {
		return idx
	}
	want := slices.DeleteFunc(slices.Clone(idx.hosts), func(h string) bool { return !s.inVIPZone(h) })
	va, vr := diffSorted(prev.vipHosts, want)
	if prev.vips != nil && len(va) == 0 && len(vr) == 0 {
		return idx
	}
	t, err := s.set.Allocator.Allocate(ctx, prev.vips, va, vr)
	if err != nil {
		s.log.Warn("dns: virtual IP allocation failed; keeping the previous one", "error", err)
		return idx
	}
	idx.vips, idx.vipHosts = t, want
	idx.changed = make(chan struct{}) // a new table: GetProfile streams look again
	return idx
}

// countNames adds delta to the count of every name host makes exist.
func (s *Server) countNames(e *cowmap.Edit[string, int32], host string, delta int32) {
	for i := range s.set.Zones {
		z := &s.set.Zones[i]
		name, ok := z.name(host)
		if !ok {
			continue
		}
		for n := name; n != z.Name && n != ""; {
			c, _ := e.Get(n)
			if c += delta; c > 0 {
				e.Set(n, c)
			} else {
				e.Del(n)
			}
			_, n, _ = cutLabel(n)
		}
	}
}

// inVIPZone reports whether host has a name in a zone with virtual IPs.
func (s *Server) inVIPZone(host string) bool {
	for i := range s.set.Zones {
		if z := &s.set.Zones[i]; z.VirtualIPs {
			if _, ok := z.name(host); ok {
				return true
			}
		}
	}
	return false
}

// diffSorted returns what is in b and not in a, and what is in a and not
// in b; both sorted and without repeats.
func diffSorted(a, b []string) (added, removed []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			removed = append(removed, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			added = append(added, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return added, removed
}

// mergeSorted is the sorted union of two sorted lists without repeats.
func mergeSorted(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	out := make([]string, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// LookupVIP returns the host a virtual IP stands for, and a channel that
// closes when the answer may change — when hosts of the zones with virtual
// IPs come or go (the destination server's GetProfile watches it). ok is false for an address that is no virtual IP of a host.
func (s *Server) LookupVIP(ip netip.Addr) (host string, changed <-chan struct{}, ok bool) {
	idx := s.current()
	host, ok = idx.vips.Host(ip)
	return host, idx.changed, ok
}

// VIP returns the virtual IP of a registry host, if it has one.
func (s *Server) VIP(host string) (netip.Addr, bool) {
	return s.current().vips.Lookup(host)
}

// listenPair opens UDP and TCP on one port. With port 0 the port UDP picks
// may be taken for TCP (by any connection's ephemeral port), so a few
// ports are tried; a fixed port is tried once.
func listenPair(addr string) (net.PacketConn, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	tries := 1
	if port == "0" {
		tries = 10
	}
	var err error
	for range tries {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return nil, nil, err
		}
		var ln net.Listener
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			return pc, ln, nil
		}
		pc.Close()
	}
	return nil, nil, err
}
