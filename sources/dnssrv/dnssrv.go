// Package dnssrv is the `dnssrv` source kind: services published as DNS
// SRV records, as bare-metal and legacy estates do.
//
//	sources:
//	  - name: legacy
//	    kind: dnssrv
//	    names:
//	      - _http._tcp.api.example.com          # → api.example.com:<SRV port>
//	      - name: _grpc._tcp.billing.example.com
//	        authority: billing.internal:9000    # a bare host takes the SRV port
//	    resolvers: [10.0.0.2:53]                # default: /etc/resolv.conf
//	    refresh: {min: 5s, max: 5m}             # TTLs are honoured within these
//	    timeout: 2s                             # per query
//	    udp_size: 1232                          # EDNS0 buffer; larger answers use TCP
//
// Each name is one group keyed by the name. Its SRV targets are resolved
// to addresses from the additional section, or by A and AAAA queries; each
// address with the record's port is an endpoint, weighted by the record's
// weight and labelled with its priority (discovery.PriorityLabel), so that
// only the lowest priority with serving endpoints is served.
//
// NXDOMAIN and an empty NOERROR answer are authoritative: the name is
// withdrawn after two in a row (the second asked at refresh.min). SERVFAIL,
// REFUSED, timeouts and unreadable answers keep the name's last state and
// mark the source stale.
package dnssrv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/refresh"
	"github.com/tributary-mesh/tributary/discovery/retry"
)

// KindName is the value of `kind:` for this source.
const KindName = "dnssrv"

// maxParallel bounds the names looked up at once.
const maxParallel = 8

func init() {
	discovery.Register(discovery.Kind{Name: KindName, New: newFromNode})
}

// Source is a dnssrv source; build it with NewSource.
type Source struct {
	cfg Config
	log *slog.Logger
}

var _ discovery.Source = (*Source)(nil)

// NewSource validates the resolvers (reading /etc/resolv.conf when cfg
// names none) and returns a source ready to Run. It starts nothing.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	if len(cfg.Names) == 0 {
		return nil, &discovery.ConfigError{Key: "names", Err: errors.New("required: at least one SRV name")}
	}
	if len(cfg.Resolvers) == 0 {
		rs, err := systemResolvers()
		if err != nil {
			return nil, &discovery.ConfigError{Key: "resolvers", Err: fmt.Errorf("none given and none from the system: %v", err)}
		}
		cfg.Resolvers = rs
	}
	if cfg.MinRefresh <= 0 || cfg.MaxRefresh < cfg.MinRefresh || cfg.Timeout <= 0 || cfg.UDPSize < dns.MinMsgSize {
		return nil, &discovery.ConfigError{Key: "refresh", Err: errors.New("refresh.min, refresh.max, timeout and udp_size must be set (see Config)")}
	}
	log := bc.Log()
	return &Source{cfg: cfg, log: log}, nil
}

// Resolvers returns the resolvers the source asks, in order.
func (s *Source) Resolvers() []string { return slices.Clone(s.cfg.Resolvers) }

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) {
	r := &run{Source: s, names: make([]*nameState, len(s.cfg.Names))}
	for i, n := range s.cfg.Names {
		r.names[i] = &nameState{Name: n}
	}
	refresh.New(r.poll, refresh.Options{Interval: s.cfg.MaxRefresh, Logger: s.log}).Run(ctx, sink)
}

// nameState is what a run knows of one name.
type nameState struct {
	Name
	next     time.Time       // when to look it up again
	last     discovery.Group // as last handed over
	known    bool            // last has services
	empties  int             // authoritative empty answers in a row
	failures int             // failed lookups in a row
	bo       retry.Backoff   // the wait after each of them
	err      error           // the last lookup's error while failing
}

// run is the state of one Run.
type run struct {
	*Source
	names []*nameState
}

// outcome is what one lookup of a name found.
type outcome struct {
	group discovery.Group // the name's state, when records were found
	ttl   uint32
	empty bool // authoritative empty: NXDOMAIN or no SRV records
	err   error
}

// poll looks up the names that are due and reports their state.
func (r *run) poll(ctx context.Context) refresh.Result {
	now := time.Now()
	var due []*nameState
	for _, n := range r.names {
		if !n.next.After(now) {
			due = append(due, n)
		}
	}
	outcomes := make([]outcome, len(due))
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallel)
	for i, n := range due {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			outcomes[i] = r.lookup(ctx, n.Name)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return refresh.Result{Err: ctx.Err()}
	}

	var res refresh.Result
	now = time.Now()
	silent := false // a lookup got no answer at all (timeout, network)
	polled := make(map[*nameState]bool, len(due))
	for i, n := range due {
		o := outcomes[i]
		polled[n] = true
		switch {
		case o.err != nil:
			var rc *errRcode
			silent = silent || !errors.As(o.err, &rc)
			n.failures++
			n.err = o.err
			n.next = now.Add(r.backoff(n))
			level := slog.LevelWarn // the first failure of a run; the retries at debug
			if n.failures > 1 {
				level = slog.LevelDebug
			}
			r.log.Log(ctx, level, "SRV lookup failed; keeping the name's last state", "name", n.Key(), "err", o.err, "failures", n.failures, "retry_in", n.next.Sub(now))
		case o.empty:
			n.failures, n.err = 0, nil
			n.bo.Reset()
			n.empties++
			if n.known && n.empties < 2 {
				// Once could be a glitch: keep the state, ask again soon.
				res.Groups = append(res.Groups, n.last)
				n.next = now.Add(r.cfg.MinRefresh)
				r.log.Info("SRV name answered empty (NXDOMAIN or no records); withdrawing it if the next answer agrees", "name", n.Key())
				break
			}
			if n.known {
				r.log.Info("SRV name answered empty twice; withdrawing it", "name", n.Key())
			}
			n.known = false
			n.last = discovery.Group{Key: n.Key()}
			res.Groups = append(res.Groups, n.last)
			n.next = now.Add(r.clamp(o.ttl))
		default:
			n.failures, n.err, n.empties = 0, nil, 0
			n.bo.Reset()
			n.known, n.last = true, o.group
			res.Groups = append(res.Groups, o.group)
			n.next = now.Add(r.clamp(o.ttl))
			r.log.Debug("SRV name resolved", "name", n.Key(), "endpoints", countEndpoints(o.group), "ttl", o.ttl, "next_refresh", n.next.Sub(now))
		}
	}
	// A server that answered every lookup of this round, if only with an
	// error code, is still in contact: the names it resolved earlier stand
	// (unchanged, so nothing is handed over), which counts for stale_after.
	if !silent {
		for _, n := range r.names {
			if !polled[n] && n.err == nil && n.known {
				res.Groups = append(res.Groups, n.last)
			}
		}
	}
	var errs []error
	next := time.Time{}
	for _, n := range r.names {
		if n.err != nil {
			errs = append(errs, n.err)
		}
		if next.IsZero() || n.next.Before(next) {
			next = n.next
		}
	}
	res.Err = errors.Join(errs...)
	res.Next = max(time.Until(next), time.Millisecond)
	return res
}

// clamp bounds a TTL by the refresh floor and ceiling.
func (r *run) clamp(ttl uint32) time.Duration {
	d := time.Duration(ttl) * time.Second
	return min(max(d, r.cfg.MinRefresh), r.cfg.MaxRefresh)
}

// backoff is the jittered wait after one more failed lookup of name n:
// refresh.min doubling up to refresh.max, ±20% (retry.Backoff).
func (r *run) backoff(n *nameState) time.Duration {
	n.bo.Min, n.bo.Max = r.cfg.MinRefresh, r.cfg.MaxRefresh
	return n.bo.Next()
}

func countEndpoints(g discovery.Group) int {
	n := 0
	for _, s := range g.Services {
		n += len(s.Endpoints)
	}
	return n
}

// lookup resolves one name to its group.
func (s *Source) lookup(ctx context.Context, n Name) outcome {
	resp, err := s.query(ctx, n.FQDN, dns.TypeSRV)
	if err != nil {
		return outcome{err: err}
	}
	var srvs []*dns.SRV
	for _, rr := range resp.Answer {
		if srv, ok := rr.(*dns.SRV); ok {
			srvs = append(srvs, srv)
		}
	}
	if resp.Rcode == dns.RcodeNameError || len(srvs) == 0 {
		return outcome{empty: true, ttl: negativeTTL(resp)}
	}

	ttl := srvs[0].Hdr.Ttl
	// Addresses the answer carries in its additional section, by owner.
	extra := map[string][]netip.Addr{}
	extraTTL := map[string]uint32{}
	for _, rr := range resp.Extra {
		a, ok := addrOf(rr)
		if !ok {
			continue
		}
		owner := strings.ToLower(rr.Header().Name)
		extra[owner] = append(extra[owner], a)
		if t, ok := extraTTL[owner]; !ok || rr.Header().Ttl < t {
			extraTTL[owner] = rr.Header().Ttl
		}
	}

	type level struct{ allZero bool }
	levels := map[uint16]*level{}
	for _, srv := range srvs {
		l := levels[srv.Priority]
		if l == nil {
			l = &level{allZero: true}
			levels[srv.Priority] = l
		}
		l.allZero = l.allZero && srv.Weight == 0
	}

	type epKey struct {
		auth discovery.Authority
		addr netip.AddrPort
	}
	eps := map[epKey]discovery.Endpoint{}
	resolved := map[string][]netip.Addr{} // targets looked up in this lookup
	for _, srv := range srvs {
		ttl = min(ttl, srv.Hdr.Ttl)
		target := strings.ToLower(srv.Target)
		if target == "." || srv.Port == 0 {
			continue // "decidedly not available here" (RFC 2782)
		}
		addrs, ok := extra[target]
		if ok {
			ttl = min(ttl, extraTTL[target])
		} else if addrs, ok = resolved[target]; !ok {
			var t uint32
			addrs, t, err = s.resolveTarget(ctx, target)
			if err != nil {
				return outcome{err: fmt.Errorf("%s: target %s: %w", n.Key(), strings.TrimSuffix(target, "."), err)}
			}
			resolved[target] = addrs
			if len(addrs) > 0 {
				ttl = min(ttl, t)
			} else {
				s.log.Warn("SRV target has no address; skipping its record", "name", n.Key(), "target", target)
			}
		}
		auth := discovery.Authority{Host: n.Host, Port: n.Port}
		if auth.Port == 0 {
			auth.Port = srv.Port
		}
		weight := uint32(srv.Weight)
		switch {
		case levels[srv.Priority].allZero:
			weight = 0 // all equal: the default weight
		case weight == 0:
			weight = 1 // "a very small chance" (RFC 2782)
		}
		for _, a := range addrs {
			ep := discovery.Endpoint{
				Addr:   netip.AddrPortFrom(a, srv.Port),
				Weight: weight,
				Labels: map[string]string{discovery.PriorityLabel: strconv.Itoa(int(srv.Priority))},
			}
			k := epKey{auth, ep.Addr}
			if prev, dup := eps[k]; dup && !better(ep, prev) {
				continue
			}
			eps[k] = ep
		}
	}

	byAuth := map[discovery.Authority][]discovery.Endpoint{}
	for k, ep := range eps {
		byAuth[k.auth] = append(byAuth[k.auth], ep)
	}
	g := discovery.Group{Key: n.Key()}
	for auth, list := range byAuth {
		slices.SortFunc(list, func(a, b discovery.Endpoint) int { return a.Addr.Compare(b.Addr) })
		g.Services = append(g.Services, discovery.Service{Authority: auth, Endpoints: list})
	}
	slices.SortFunc(g.Services, func(a, b discovery.Service) int {
		if c := strings.Compare(a.Authority.Host, b.Authority.Host); c != 0 {
			return c
		}
		return int(a.Authority.Port) - int(b.Authority.Port)
	})
	if len(g.Services) == 0 {
		return outcome{empty: true, ttl: ttl}
	}
	return outcome{group: g, ttl: ttl}
}

// better reports whether a should win over b for one address: the lower
// priority, then the higher weight.
func better(a, b discovery.Endpoint) bool {
	pa, _ := strconv.Atoi(a.Labels[discovery.PriorityLabel])
	pb, _ := strconv.Atoi(b.Labels[discovery.PriorityLabel])
	if pa != pb {
		return pa < pb
	}
	return a.EffectiveWeight() > b.EffectiveWeight()
}

// resolveTarget looks up the A and AAAA records of an SRV target. An
// authoritative empty answer is no address, not an error.
func (s *Source) resolveTarget(ctx context.Context, target string) ([]netip.Addr, uint32, error) {
	var addrs []netip.Addr
	ttl := uint32(0)
	first := true
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		resp, err := s.query(ctx, target, qtype)
		if err != nil {
			return nil, 0, err
		}
		for _, rr := range resp.Answer {
			a, ok := addrOf(rr)
			if !ok {
				continue
			}
			addrs = append(addrs, a)
			if first || rr.Header().Ttl < ttl {
				ttl, first = rr.Header().Ttl, false
			}
		}
	}
	return addrs, ttl, nil
}

// negativeTTL is how long an empty answer may be cached (RFC 2308): the
// smaller of the SOA record's TTL and its minimum field; 0 without one.
func negativeTTL(resp *dns.Msg) uint32 {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return 0
}

// errRcode is an answer that says nothing about the name.
type errRcode struct {
	rcode  int
	server string
}

func (e *errRcode) Error() string {
	return dns.RcodeToString[e.rcode] + " from " + e.server
}

// query asks the resolvers in order until one answers NOERROR or
// NXDOMAIN; a truncated UDP answer is asked again over TCP.
func (s *Source) query(ctx context.Context, qname string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(qname, qtype)
	m.RecursionDesired = true
	m.SetEdns0(s.cfg.UDPSize, false)
	var errs []error
	for _, server := range s.cfg.Resolvers {
		resp, err := s.exchange(ctx, m, server, "udp")
		if err == nil && resp.Truncated {
			resp, err = s.exchange(ctx, m, server, "tcp")
		}
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			errs = append(errs, fmt.Errorf("%s %s: %w", dns.TypeToString[qtype], server, err))
		case resp.Rcode == dns.RcodeSuccess || resp.Rcode == dns.RcodeNameError:
			return resp, nil
		default:
			errs = append(errs, fmt.Errorf("%s: %w", dns.TypeToString[qtype], &errRcode{resp.Rcode, server}))
		}
	}
	return nil, fmt.Errorf("%s: %w", strings.TrimSuffix(qname, "."), errors.Join(errs...))
}

func (s *Source) exchange(ctx context.Context, m *dns.Msg, server, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	c := &dns.Client{Net: network, UDPSize: s.cfg.UDPSize, Timeout: s.cfg.Timeout}
	resp, _, err := c.ExchangeContext(ctx, m, server)
	return resp, err
}

// addrOf is the address of an A or AAAA record (ok false for any other
// record, or a malformed one). An IPv4-mapped AAAA is the A record's
// backend, not another one.
func addrOf(rr dns.RR) (a netip.Addr, ok bool) {
	switch v := rr.(type) {
	case *dns.A:
		a, _ = netip.AddrFromSlice(v.A.To4())
	case *dns.AAAA:
		a, _ = netip.AddrFromSlice(v.AAAA.To16())
		a = a.Unmap()
	}
	return a, a.IsValid()
}
