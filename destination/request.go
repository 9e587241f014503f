package destination

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"unicode/utf8"

	"github.com/tributary-mesh/tributary/discovery"
)

// MaxContextTokenLen bounds the context token a client may send. Linkerd's
// tokens are well under 200 bytes.
const MaxContextTokenLen = 4096

// ErrBadRequest is wrapped by every request validation error; the server
// maps it to InvalidArgument.
var ErrBadRequest = errors.New("bad request")

// parseGetPath reads a Get path: "host:port" with port 80 when absent. IP
// literals are refused: endpoints of an address are not a service.
func parseGetPath(path string) (discovery.Authority, error) {
	a, err := parsePath(path)
	if err != nil {
		return a, err
	}
	if _, isIP := a.Addr(); isIP {
		return discovery.Authority{}, fmt.Errorf("%w: %q is an IP address; Get resolves service names (use GetProfile for an IP:port)", ErrBadRequest, path)
	}
	return a, nil
}

// parseProfileTarget reads a GetProfile path: a service authority or an
// IP:port. Exactly one of the results is set.
func parseProfileTarget(path string) (discovery.Authority, netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(path); err == nil {
		return discovery.Authority{}, registryAddr(ap.Addr(), ap.Port()), nil
	}
	a, err := parsePath(path)
	if err != nil {
		return a, netip.AddrPort{}, err
	}
	if ip, isIP := a.Addr(); isIP {
		return discovery.Authority{}, registryAddr(ip, a.Port), nil
	}
	return a, netip.AddrPort{}, nil
}

// registryAddr is an address in the form sources store endpoints in and
// the wire carries (tcpAddress): an IPv4-mapped IPv6 address as IPv4, no
// zone. "[::ffff:10.0.0.1]:80" finds the endpoint 10.0.0.1:80.
func registryAddr(ip netip.Addr, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(ip.Unmap().WithZone(""), port)
}

func parsePath(path string) (discovery.Authority, error) {
	if !utf8.ValidString(path) {
		return discovery.Authority{}, fmt.Errorf("%w: path is not valid UTF-8", ErrBadRequest)
	}
	a, err := discovery.ParseAuthority(path, 80)
	if err != nil {
		return a, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	// Likewise a host such as ":]" (no port is split off a path ending in
	// "]"): only an authority that reads back as itself is served, so that
	// what a stream is keyed and labelled by is a valid authority.
	if again, err := discovery.ParseAuthority(a.String(), 80); err != nil || again != a {
		return discovery.Authority{}, fmt.Errorf("%w: %q is not a host[:port] authority", ErrBadRequest, path)
	}
	return a, nil
}

// contextToken is what Linkerd proxies send in GetDestination.context_token:
// JSON set at injection time. "zone" is Tributary's own addition for clients
// outside Kubernetes, which have no node to look the zone up by.
type contextToken struct {
	NS       string `json:"ns"`
	NodeName string `json:"nodeName"`
	Pod      string `json:"pod"`
	Zone     string `json:"zone"`
}

// ContextTokenZone is the zone a context token names in its "zone" field,
// read as Get reads it; "" when it names none (Get may still find the
// zone from the token's nodeName, which only the server can look up).
func ContextTokenZone(token string) string {
	t, _ := parseContextToken(token)
	return t.Zone
}

// parseContextToken decodes a token. Empty is fine; a token that is not
// JSON is ignored (old proxies sent a bare namespace string), but an
// oversized one is refused.
func parseContextToken(s string) (contextToken, error) {
	var t contextToken
	if len(s) > MaxContextTokenLen {
		return t, fmt.Errorf("%w: context token is %d bytes; at most %d are accepted", ErrBadRequest, len(s), MaxContextTokenLen)
	}
	if s == "" || s[0] != '{' {
		return t, nil
	}
	if err := json.Unmarshal([]byte(s), &t); err != nil {
		return contextToken{}, nil
	}
	return t, nil
}
