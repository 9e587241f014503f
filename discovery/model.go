// Package discovery holds Tributary's core model and the contracts every other
// package plugs into: what an endpoint is, how a source hands its state over,
// how the configuration is read, and the manager that runs the sources.
//
// It imports nothing else of Tributary's.
package discovery

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// MaxHostLen bounds the host part of an authority (the DNS limit).
const MaxHostLen = 255

// DefaultWeight is the weight of an endpoint that does not declare one. It is
// the weight Linkerd's destination controller gives every endpoint.
const DefaultWeight = 10000

// ErrInvalidAuthority is wrapped by every error ParseAuthority returns.
var ErrInvalidAuthority = errors.New("invalid authority")

// Authority is the name a client asks for: a host and a port. Port 0 stands
// for "any port" on the serving side: a service declared without a port
// answers for every port of its host.
type Authority struct {
	Host string
	Port uint16
}

// String formats the authority as host:port, or host alone when Port is 0.
func (a Authority) String() string {
	if a.Port == 0 {
		return a.Host
	}
	return a.Host + ":" + strconv.Itoa(int(a.Port))
}

// Addr is the IP address the host is when it is an IP literal: "10.0.0.1",
// or an IPv6 address in one pair of brackets ("[2001:db8::1]", "[fe80::1%eth0]").
// A zone may itself contain brackets, so exactly one bracket is cut from each
// end; strings.Trim would eat into the zone.
func (a Authority) Addr() (netip.Addr, bool) {
	host := a.Host
	if inner, ok := strings.CutPrefix(host, "["); ok {
		if host, ok = strings.CutSuffix(inner, "]"); !ok {
			return netip.Addr{}, false
		}
	}
	ip, err := netip.ParseAddr(host)
	return ip, err == nil
}

// ParseAuthority reads "host[:port]". A missing port is defaultPort. Hosts are
// lower-cased and a trailing dot is dropped, so "Web.Demo." and "web.demo"
// are one authority. It rejects an empty host, a host longer than MaxHostLen,
// control characters, spaces, non-ASCII bytes, and a port that is not a number in 1..65535.
// The error wraps ErrInvalidAuthority.
func ParseAuthority(s string, defaultPort uint16) (Authority, error) {
	if len(s) > MaxHostLen+6 {
		return Authority{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidAuthority, MaxHostLen+6)
	}
	host, port := s, defaultPort
	if i := strings.LastIndexByte(s, ':'); i >= 0 && !strings.HasSuffix(s, "]") {
		if strings.IndexByte(s[:i], ':') >= 0 && !strings.HasPrefix(s, "[") {
			return Authority{}, fmt.Errorf("%w: %q: an IPv6 address must be in brackets", ErrInvalidAuthority, s)
		}
		p, err := strconv.ParseUint(s[i+1:], 10, 16)
		if err != nil || p == 0 {
			return Authority{}, fmt.Errorf("%w: %q: port must be a number from 1 to 65535", ErrInvalidAuthority, s)
		}
		host, port = s[:i], uint16(p)
	}
	host = strings.TrimSuffix(host, ".")
	switch p, upper := hostProblem(host); p {
	case "":
		if upper {
			host = strings.ToLower(host)
		}
	case problemTooLong:
		return Authority{}, fmt.Errorf("%w: %s", ErrInvalidAuthority, p)
	default:
		return Authority{}, fmt.Errorf("%w: %q: %s", ErrInvalidAuthority, s, p)
	}
	return Authority{Host: host, Port: port}, nil
}

// The classes of a host's bytes, for hostProblem.
const (
	hostDot = 1 << iota
	hostBracket
	hostNotPrintable
	hostUpper
)

var hostBytes = func() (t [256]uint8) {
	for c := range t {
		switch {
		case c == '.':
			t[c] = hostDot
		case c == ':' || c == '[' || c == ']':
			t[c] = hostBracket
		case c <= ' ' || c >= 0x7f || c == '/' || c == '\\':
			t[c] = hostNotPrintable
		case 'A' <= c && c <= 'Z':
			t[c] = hostUpper
		}
	}
	return t
}()

// problemTooLong is hostProblem's answer for a host longer than MaxHostLen;
// the error does not quote such a host.
var problemTooLong = "host longer than " + strconv.Itoa(MaxHostLen) + " bytes"

// hostProblem says what is wrong with a host stripped of one trailing dot,
// or "" when nothing is, and whether it has upper-case letters. It is the one list of rules for hosts:
// ParseAuthority and CanonicalHost both apply it, before lower-casing, so
// that no non-ASCII letter can lower-case into an ASCII one (U+212A, the
// Kelvin sign, into "k") and pass.
func hostProblem(host string) (problem string, upper bool) {
	if host == "" {
		return "empty host", false
	}
	// One branch-free pass over the bytes (this is on the store's write
	// path, once per service of every group); the problems are then
	// reported in order.
	var seen, empty uint8
	prev := uint8(hostDot) // a leading dot ends an empty label
	for i := 0; i < len(host); i++ {
		k := hostBytes[host[i]]
		empty |= prev & k & hostDot
		prev = k
		seen |= k
	}
	upper = seen&hostUpper != 0
	emptyLabel, brackets, notPrintable := empty != 0, seen&hostBracket != 0, seen&hostNotPrintable != 0
	dot := prev&hostDot != 0 // a trailing dot left after the one cut
	if emptyLabel || dot {
		return "the host has an empty label", false
	}
	if brackets {
		inner, ok := strings.CutPrefix(host, "[")
		inner, ok2 := strings.CutSuffix(inner, "]")
		if ip, err := netip.ParseAddr(inner); !ok || !ok2 || err != nil || !ip.Is6() {
			return "a host with ':' must be an IPv6 address in brackets", false
		}
	}
	if len(host) > MaxHostLen {
		return problemTooLong, false
	}
	if notPrintable {
		return "host must be printable ASCII without spaces or slashes (use punycode for international names)", false
	}
	return "", upper
}

// CanonicalHost returns host as ParseAuthority returns the host of
// host+":1" — lower case, without one trailing dot — and rejects exactly
// the hosts ParseAuthority would reject there, with an error wrapping
// ErrInvalidAuthority. A host it rejects is one no client could ask for.
// It allocates only when host has upper-case letters.
func CanonicalHost(host string) (string, error) {
	h := strings.TrimSuffix(host, ".")
	switch p, upper := hostProblem(h); p {
	case "":
		if upper {
			h = strings.ToLower(h)
		}
		return h, nil
	case problemTooLong:
		return "", fmt.Errorf("%w: %s", ErrInvalidAuthority, p)
	default:
		return "", fmt.Errorf("%w: host %q: %s", ErrInvalidAuthority, host, p)
	}
}

// ValidateName checks a group key or a source name: not empty, and without
// a NUL byte. what names it in the error.
func ValidateName(what, s string) error {
	switch {
	case s == "":
		return errors.New("empty " + what)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%s %q contains a NUL byte", what, s)
	}
	return nil
}

// ValidateAddr checks an endpoint's address: valid, with a port, and no
// NUL byte in an IPv6 zone.
func ValidateAddr(a netip.AddrPort) error {
	switch {
	case !a.IsValid():
		return errors.New("invalid address")
	case a.Port() == 0:
		return fmt.Errorf("address %s has no port", a)
	case strings.IndexByte(a.Addr().Zone(), 0) >= 0:
		return fmt.Errorf("address %q has a NUL byte in its zone", a)
	}
	return nil
}

// ValidateGroup checks a group by the rules the registry applies to what a
// source hands over (cache.Store.Apply rejects exactly these groups): a key
// ValidateName accepts, hosts CanonicalHost accepts, endpoint addresses
// ValidateAddr accepts, profiles Service.ValidateProfiles accepts. Hosts need not
// be canonical: the registry makes them so.
func ValidateGroup(g *Group) error {
	if err := ValidateName("group key", g.Key); err != nil {
		return err
	}
	for si := range g.Services {
		svc := &g.Services[si]
		if _, err := CanonicalHost(svc.Authority.Host); err != nil {
			return fmt.Errorf("group %q: service %q: %w", g.Key, svc.Authority, err)
		}
		if err := svc.ValidateProfiles(); err != nil {
			return fmt.Errorf("group %q: service %q: %w", g.Key, svc.Authority, err)
		}
		for ei := range svc.Endpoints {
			if err := ValidateAddr(svc.Endpoints[ei].Addr); err != nil {
				return fmt.Errorf("group %q: service %q: endpoint %d: %w", g.Key, svc.Authority, ei, err)
			}
		}
	}
	return nil
}

// Health is the state of an endpoint as its source or the active checker sees it.
type Health uint8

const (
	// HealthUnknown: nothing says either way. Served.
	HealthUnknown Health = iota
	// HealthPassing: checks pass. Served.
	HealthPassing
	// HealthWarning: degraded but serving (a source that treats warning as
	// unhealthy maps it to HealthCritical itself). Served.
	HealthWarning
	// HealthCritical: failing. Evicted on read; the row stays, so recovery is instant.
	HealthCritical
)

var healthNames = [...]string{"unknown", "passing", "warning", "critical"}

func (h Health) String() string {
	if int(h) < len(healthNames) {
		return healthNames[h]
	}
	return "health(" + strconv.Itoa(int(h)) + ")"
}

// ParseHealth reads the names String returns.
func ParseHealth(s string) (Health, error) {
	for i, n := range healthNames {
		if s == n {
			return Health(i), nil
		}
	}
	return 0, fmt.Errorf("unknown health %q (want unknown, passing, warning or critical)", s)
}

// Serving reports whether an endpoint in this state receives traffic.
func (h Health) Serving() bool { return h != HealthCritical }

// IdentityKind says how an endpoint's TLS identity is named.
type IdentityKind uint8

const (
	// IdentityNone: not known. The proxy then does not attempt mTLS; an
	// identity is never guessed.
	IdentityNone IdentityKind = iota
	// IdentityDNS: a DNS-like name, as Linkerd's own identities
	// (web.demo.serviceaccount.identity.linkerd.cluster.local).
	IdentityDNS
	// IdentitySPIFFE: a SPIFFE URI (spiffe://trust-domain/path). It always
	// comes with a ServerName, the SNI the proxy sends.
	IdentitySPIFFE
)

// Identity is the workload identity a client should expect of an endpoint.
type Identity struct {
	Kind IdentityKind
	// Name is the DNS-like name or the SPIFFE URI.
	Name string
	// ServerName is the TLS server name; required with IdentitySPIFFE, and
	// the same as Name for IdentityDNS.
	ServerName string
}

// ParseIdentity classifies an identity string as written in configuration
// or by a backend: "spiffe://…" is a SPIFFE URI and then needs serverName;
// anything else non-empty is a DNS-like name.
func ParseIdentity(name, serverName string) (Identity, error) {
	switch {
	case name == "" && serverName == "":
		return Identity{}, nil
	case name == "":
		return Identity{}, errors.New("server_name given without identity")
	case strings.HasPrefix(name, "spiffe://"):
		if len(name) <= len("spiffe://") || strings.ContainsAny(name, " \t\r\n") {
			return Identity{}, fmt.Errorf("identity %q is not a valid SPIFFE ID", name)
		}
		if serverName == "" {
			return Identity{}, fmt.Errorf("identity %q is a SPIFFE ID and needs a server_name (the proxy rejects one without)", name)
		}
		return Identity{Kind: IdentitySPIFFE, Name: name, ServerName: serverName}, nil
	case strings.Contains(name, "://"):
		return Identity{}, fmt.Errorf("identity %q: only spiffe:// URIs and DNS-like names are supported", name)
	default:
		if serverName != "" && serverName != name {
			return Identity{}, fmt.Errorf("identity %q is DNS-like; its server name is the name itself (drop server_name)", name)
		}
		return Identity{Kind: IdentityDNS, Name: name, ServerName: name}, nil
	}
}

// Protocol is a hint of what an endpoint speaks, passed to the proxy.
type Protocol uint8

const (
	ProtocolUnknown Protocol = iota // the proxy detects
	ProtocolH2                      // the endpoint accepts HTTP/2 (the proxy may upgrade)
	ProtocolOpaque                  // forward bytes; no protocol detection
)

var protocolNames = [...]string{"", "h2", "opaque"}

func (p Protocol) String() string {
	if int(p) < len(protocolNames) {
		return protocolNames[p]
	}
	return "protocol(" + strconv.Itoa(int(p)) + ")"
}

// ParseProtocol reads "", "h2" or "opaque".
func ParseProtocol(s string) (Protocol, error) {
	for i, n := range protocolNames {
		if s == n {
			return Protocol(i), nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q (want h2 or opaque)", s)
}

// Endpoint is one address serving an authority. Endpoints are immutable once
// handed to a Sink: sources build new ones rather than editing old ones, and
// readers share them without copying.
type Endpoint struct {
	Addr     netip.AddrPort
	Weight   uint32 // 0 means DefaultWeight
	Zone     string
	Health   Health
	Identity Identity
	Protocol Protocol
	// OpaqueTransport is the inbound port of the proxy in front of the
	// endpoint, which accepts connections carrying Linkerd's transport
	// header (ProtocolHint.opaque_transport); 0 when there is none or it is
	// not known. Linkerd's controller sets it for opaque ports of meshed
	// pods and ExternalWorkloads, so that the client proxy tunnels their
	// traffic through the target proxy with mTLS.
	OpaqueTransport uint16
	// Labels become metric labels on the proxy side. Keys must not collide
	// with the ones Tributary sets itself (zone, source).
	Labels map[string]string
	// ForZones are topology hints (Kubernetes hints.forZones), sorted: a
	// client in one of these zones should prefer this endpoint. Not sent on
	// the wire; the destination server filters by them, as kube-proxy does.
	ForZones []string

	// Provenance, stamped by the store: the source instance and the key of
	// the group the endpoint came in. Sources leave them empty.
	Source string
	Key    string
}

// EffectiveWeight is Weight with DefaultWeight for 0.
func (e *Endpoint) EffectiveWeight() uint32 {
	if e.Weight == 0 {
		return DefaultWeight
	}
	return e.Weight
}

// Equal reports whether two endpoints carry the same content, provenance included.
func (e *Endpoint) Equal(o *Endpoint) bool {
	return e.Addr == o.Addr && e.Weight == o.Weight && e.Zone == o.Zone &&
		e.Health == o.Health && e.Identity == o.Identity && e.Protocol == o.Protocol &&
		e.OpaqueTransport == o.OpaqueTransport && e.Source == o.Source && e.Key == o.Key && sameLabels(e.Labels, o.Labels) &&
		slices.Equal(e.ForZones, o.ForZones)
}

// sameLabels is maps.Equal with a shortcut for a map compared with itself:
// the usual case when a source hands over again an endpoint it did not
// change, since endpoints, and so their label maps, are immutable once handed
// over and the store keeps them as they came.
func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() {
		return true
	}
	return maps.Equal(a, b)
}

// SameWire reports whether two endpoints look the same to a proxy: the
// fields that reach the wire, ignoring health and provenance key.
func (e *Endpoint) SameWire(o *Endpoint) bool {
	return e.Addr == o.Addr && e.EffectiveWeight() == o.EffectiveWeight() && e.Zone == o.Zone &&
		e.Identity == o.Identity && e.Protocol == o.Protocol && e.OpaqueTransport == o.OpaqueTransport &&
		e.Source == o.Source && sameLabels(e.Labels, o.Labels)
}

// Service is a source's assertion that an authority exists, with the
// endpoints it knows for it (possibly none: "exists, no endpoints").
type Service struct {
	Authority Authority
	// Opaque marks the service as opaque (no protocol detection), which
	// GetProfile reports as opaque_protocol.
	Opaque bool
	// Profile is the service's declared routes, retry budget and traffic
	// split (a Kubernetes ServiceProfile), which GetProfile sends; nil for
	// none. Immutable once handed over, like the endpoints.
	Profile *Profile
	// ClientProfiles are profiles declared for the service by its clients'
	// namespaces (Linkerd's ServiceProfile of the service's FQN in the
	// client's namespace): a client whose namespace, as its context token
	// names it, is a key gets that profile instead of Profile. Immutable
	// once handed over.
	ClientProfiles map[string]*Profile
	Endpoints      []Endpoint
}

// Group is the complete state a source knows under one key: a file, a Consul
// service, an EndpointSlice's Service, an SRV name. A group replaces
// everything the source said before under that key; a group with no services
// withdraws the key.
type Group struct {
	Key      string
	Services []Service
}
