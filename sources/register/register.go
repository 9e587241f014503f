// Package register is the `register` source kind: endpoints that workloads
// register themselves, through the registration API
// (proto/tributary/registration/v1, served by destination/registration),
// each bound to a lease that the workload keeps alive.
//
//	sources:
//	  - name: vms
//	    kind: register
//	    backend: memory             # or etcd (below)
//	    ttl: {min: 1s, max: 5m}     # the TTLs a registration may ask for
//	    insecure_networks: [127.0.0.0/8, "::1/128"]  # without mTLS: who may register
//	    allow:                      # with mTLS: who may register what
//	      - ids: [spiffe://example.org/vm/*]
//	        authorities: ["*.vm.internal:*"]
//	    etcd:                       # backend: etcd
//	      endpoints: [10.0.0.10:2379]
//	      prefix: /tributary/registrations/
//
// Registrations are a source like any other: federation rules, active
// health checks and stale_after apply, and each endpoint's provenance is
// source=<name>. Each registration is one group, keyed by its authority
// and address, so that registering the same endpoint again replaces it in
// place (no remove and add) and a change touches nothing else.
//
// # Backends
//
// memory (the default) keeps registrations in this process: one replica,
// and a restart forgets them — a workload's next keepalive is answered
// "unknown" and it registers again (tributary register does so at once).
// Leases expire here: a lease not renewed within its TTL is withdrawn.
//
// etcd keeps each registration as a key <prefix><authority>/<address>
// bound to an etcd lease of the registration's TTL. Every replica watches
// the prefix (the etcd source's Follower: listing, watch from the next
// revision, re-listing after a compaction) and serves every registration,
// whichever replica took it; etcd expires the leases, so replicas keep no
// state of their own. A keepalive is one etcd lease renewal.
package register

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tributary-mesh/tributary/discovery"
)

// KindName is the value of `kind:` for this source.
const KindName = "register"

func init() {
	discovery.Register(discovery.Kind{Name: KindName, New: newFromNode})
}

// Registration is one endpoint a workload registers.
type Registration struct {
	Authority discovery.Authority
	// Endpoint: Addr, and optionally Weight, Zone, Labels, Identity and
	// Protocol. Health and provenance are not set.
	Endpoint discovery.Endpoint
	// TTL of the lease.
	TTL time.Duration
	// By names the caller: its SPIFFE ID with mTLS, else its IP address.
	By string
	// Exclusive: replace a live registration of the same key only if By
	// made it too (ErrTaken otherwise). The API sets it for mTLS callers,
	// so that one workload cannot take over, and then end, another's.
	Exclusive bool
}

// Key is the registration's group key: its authority and address. A
// registration with the key of a live one replaces it.
func (r Registration) Key() string { return r.Authority.String() + "/" + r.Endpoint.Addr.String() }

// Lease is a live registration.
type Lease struct {
	ID string
	Registration
	// Expires is when the lease ends unless renewed (memory backend; the
	// etcd backend leaves it zero).
	Expires time.Time
}

// Errors of the registry's methods; the API maps them to gRPC codes.
var (
	// ErrUnknownLease: the lease expired, was ended, or is not known to
	// this backend (memory, after a restart).
	ErrUnknownLease = errors.New("unknown or expired lease")
	// ErrInvalid wraps every rejection of a registration's content.
	ErrInvalid = errors.New("invalid registration")
	// ErrNotRunning: the backend is not running (yet, or any more).
	ErrNotRunning = errors.New("the registration source is not running")
	// ErrTaken: an Exclusive registration found the endpoint registered,
	// and alive, by another caller.
	ErrTaken = errors.New("the endpoint is registered by another caller")
)

// Limits on a registration's content.
const (
	MaxLabels        = 32
	MaxLabelKeyLen   = 63
	MaxLabelValueLen = 255
	MaxZoneLen       = 63
)

// reservedLabels are set by Tributary itself.
var reservedLabels = []string{"zone", "source"}

// Check validates r against the source's bounds; its errors wrap
// ErrInvalid and say what is wrong.
func (s *Source) Check(r Registration) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if r.Authority.Host == "" {
		return bad("authority is required (host:port, such as web.vm.internal:8080)")
	}
	if r.Authority.Port == 0 {
		return bad("authority %q has no port", r.Authority.Host)
	}
	if err := discovery.ValidateAddr(r.Endpoint.Addr); err != nil {
		return bad("address: %v", err)
	}
	if a := r.Endpoint.Addr.Addr(); a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
		return bad("address %s is not a unicast address without a zone", a)
	}
	if r.TTL < s.cfg.MinTTL || r.TTL > s.cfg.MaxTTL {
		return bad("ttl %s is out of range: from %s to %s", r.TTL, s.cfg.MinTTL, s.cfg.MaxTTL)
	}
	if len(r.Endpoint.Zone) > MaxZoneLen {
		return bad("zone is longer than %d bytes", MaxZoneLen)
	}
	if len(r.Endpoint.Labels) > MaxLabels {
		return bad("%d labels; at most %d", len(r.Endpoint.Labels), MaxLabels)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range r.Endpoint.Labels {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		v := r.Endpoint.Labels[k]
		switch {
		case k == "" || len(k) > MaxLabelKeyLen:
			return bad("label key %q: want 1 to %d bytes", k, MaxLabelKeyLen)
		case !labelKey(k):
			return bad("label key %q: want letters, digits, '_', '-', '.' and '/'", k)
		case slices.Contains(reservedLabels, k):
			return bad("label %q is set by Tributary itself", k)
		case len(v) > MaxLabelValueLen:
			return bad("label %q: value longer than %d bytes", k, MaxLabelValueLen)
		case strings.ContainsFunc(v, func(c rune) bool { return c < ' ' || c == 0x7f }):
			return bad("label %q: value has control characters", k)
		}
	}
	return nil
}

func labelKey(k string) bool {
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("_-./", c)) {
			return false
		}
	}
	return true
}

// group is the group a live registration hands over.
func group(r Registration) discovery.Group {
	return discovery.Group{Key: r.Key(), Services: []discovery.Service{{Authority: r.Authority, Endpoints: []discovery.Endpoint{r.Endpoint}}}}
}

// backend stores registrations and hands them to a sink.
type backend interface {
	run(ctx context.Context, sink discovery.Sink)
	register(ctx context.Context, r Registration) (Lease, error)
	keepAlive(ctx context.Context, id string) (time.Duration, error)
	deregister(ctx context.Context, id string) error
	list(ctx context.Context) ([]Lease, error)
	lease(ctx context.Context, id string) (Lease, error)
}

// Source is a register source; build it with NewSource. Besides Run, its
// methods are the registry the registration API calls; they are safe for
// concurrent use.
type Source struct {
	name string
	cfg  settings
	b    backend
}

var _ discovery.Source = (*Source)(nil)

// Name is the source's name (its provenance).
func (s *Source) Name() string { return s.name }

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) { s.b.run(ctx, sink) }

// Register checks r and stores it with a new lease.
func (s *Source) Register(ctx context.Context, r Registration) (Lease, error) {
	if err := s.Check(r); err != nil {
		return Lease{}, err
	}
	return s.b.register(ctx, r)
}

// KeepAlive renews a lease for its TTL and returns the TTL.
func (s *Source) KeepAlive(ctx context.Context, id string) (time.Duration, error) {
	return s.b.keepAlive(ctx, id)
}

// Deregister ends a lease and withdraws its endpoint.
func (s *Source) Deregister(ctx context.Context, id string) error { return s.b.deregister(ctx, id) }

// Lease returns a live lease: who registered it, and what. The API checks
// with it that a caller renews or ends only its own leases.
func (s *Source) Lease(ctx context.Context, id string) (Lease, error) { return s.b.lease(ctx, id) }

// List returns the live registrations, sorted by key.
func (s *Source) List(ctx context.Context) ([]Lease, error) {
	ls, err := s.b.list(ctx)
	slices.SortFunc(ls, func(a, b Lease) int { return strings.Compare(a.Key(), b.Key()) })
	return ls, err
}

// Policy is who may register what.
func (s *Source) Policy() Policy { return s.cfg.policy }

// Policy is the source's access rules for the registration API.
type Policy struct {
	// Networks: without mTLS, a caller whose address is in one of these
	// may register anything. Empty: without mTLS the API is off.
	Networks []netip.Prefix
	// Allow: with mTLS, the authorities each caller may register under
	// (the first rule whose IDs match the caller decides). A caller may
	// only register endpoints whose identity is its own SPIFFE ID.
	Allow []Rule
}

// Rule lets the callers whose SPIFFE ID matches one of IDs register under
// the authorities matching one of Authorities.
type Rule struct {
	// IDs are SPIFFE ID patterns: a path segment "*" matches one segment,
	// a last segment "**" one or more.
	IDs []string
	// Authorities are host:port patterns (path.Match: "*" matches any run
	// of characters, "?" one): "*.vm.internal:*", "web.vm:8080".
	Authorities []string
}
