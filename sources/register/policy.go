package register

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strings"
)

// InNetworks reports whether addr may use the API without mTLS.
func (p Policy) InNetworks(addr netip.Addr) bool {
	addr = addr.Unmap().WithZone("")
	for _, n := range p.Networks {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// AuthorityAllowed reports whether the caller id (a SPIFFE ID) may
// register under authority (host:port): the first rule whose IDs match id
// decides.
func (p Policy) AuthorityAllowed(id, authority string) bool {
	for _, r := range p.Allow {
		if !matchAny(r.IDs, id, MatchID) {
			continue
		}
		return matchAny(r.Authorities, authority, func(pat, s string) bool {
			ok, err := path.Match(pat, s)
			return ok && err == nil
		})
	}
	return false
}

func matchAny(pats []string, s string, match func(pat, s string) bool) bool {
	for _, p := range pats {
		if match(p, s) {
			return true
		}
	}
	return false
}

// MatchID matches a SPIFFE ID against a pattern: spiffe://td/a/*/c, where
// "*" is exactly one path segment and a last "**" one or more.
func MatchID(pattern, id string) bool {
	pt, pp, ok1 := splitID(pattern)
	it, ip, ok2 := splitID(id)
	if !ok1 || !ok2 || pt != it {
		return false
	}
	for i, seg := range pp {
		if seg == "**" && i == len(pp)-1 {
			return len(ip) > i
		}
		if i >= len(ip) || seg != "*" && seg != ip[i] {
			return false
		}
	}
	return len(ip) == len(pp)
}

func splitID(s string) (td string, segs []string, ok bool) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return "", nil, false
	}
	td, p, _ := strings.Cut(rest, "/")
	if td == "" {
		return "", nil, false
	}
	if p != "" {
		segs = strings.Split(p, "/")
	}
	return td, segs, true
}

// checkIDPattern validates a pattern of Rule.IDs.
func checkIDPattern(p string) error {
	td, segs, ok := splitID(p)
	if !ok {
		return fmt.Errorf("%q: want spiffe://trust-domain/path", p)
	}
	if strings.ContainsAny(td, "*") {
		return fmt.Errorf("%q: the trust domain cannot be a pattern", p)
	}
	for i, s := range segs {
		switch {
		case s == "":
			return fmt.Errorf("%q: empty path segment", p)
		case s == "**" && i != len(segs)-1:
			return fmt.Errorf("%q: \"**\" only as the last segment", p)
		case s != "*" && s != "**" && strings.Contains(s, "*"):
			return fmt.Errorf("%q: \"*\" only as a whole segment", p)
		}
	}
	return nil
}

// checkAuthorityPattern validates a pattern of Rule.Authorities.
func checkAuthorityPattern(p string) error {
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("%q: %v", p, err)
	}
	if !strings.Contains(p, ":") {
		return errors.New(p + ": want host:port (the port may be *)")
	}
	return nil
}
