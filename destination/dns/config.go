package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/destination/vip"
	"github.com/tributary-mesh/tributary/discovery"
)

// Defaults of the dns: section.
const (
	DefaultListen      = "127.0.0.1:8053"
	DefaultTTL         = 5 * time.Second
	DefaultNegativeTTL = 5 * time.Second
	// DefaultUDPSize is the largest UDP answer sent to a client that
	// advertises more with EDNS0: 1232 bytes fits any path's MTU without
	// fragmentation (DNS flag day 2020).
	DefaultUDPSize = 1232
)

// Config is the dns: section of the config file:
//
//	dns:
//	  listen: 127.0.0.1:8053       # UDP and TCP; loopback unless you say otherwise
//	  ttl: 5s                      # of every answer
//	  negative_ttl: 5s             # SOA minimum: how long NXDOMAIN / NODATA is cached
//	  max_answers: 0               # at most this many A/AAAA/SRV records per answer (0: all)
//	  udp_size: 1232               # the largest UDP answer, whatever the client advertises
//	  client_zones:                # client subnet → zone, for zone-local answers first
//	    10.1.0.0/16: zone-a
//	  virtual_ips:                 # for the zones with virtual_ips: true
//	    cidr: 240.0.0.0/4
//	    pins: {web.demo: 240.0.0.10}
//	  zones:
//	    - zone: demo.              # authoritative for demo. and below
//	      hosts: demo.             # registry hosts are <name below the zone>.<hosts> (default: the zone itself)
//	      virtual_ips: false
type Config struct {
	Listen      string             `yaml:"listen"`
	TTL         discovery.Duration `yaml:"ttl"`
	NegativeTTL discovery.Duration `yaml:"negative_ttl"`
	MaxAnswers  int                `yaml:"max_answers"`
	UDPSize     int                `yaml:"udp_size"`
	ClientZones map[string]string  `yaml:"client_zones"`
	VirtualIPs  *VIPConfig         `yaml:"virtual_ips"`
	Zones       []ZoneConfig       `yaml:"zones"`
}

// ZoneConfig is one zone the DNS interface is authoritative for.
type ZoneConfig struct {
	// Zone is the DNS zone, "demo." (the final dot may be left out).
	Zone string `yaml:"zone"`
	// Hosts is the domain the zone's names stand for in the registry: the
	// name web.<zone> is the host web.<hosts>. Empty: the zone itself, so
	// that names are hosts as they are; "." (the root): the zone is cut
	// off (web.demo.mesh. is the host web.demo with zone mesh.).
	Hosts string `yaml:"hosts"`
	// VirtualIPs answers each name's virtual IP instead of its endpoints'
	// addresses (the dns.virtual_ips range must be set).
	VirtualIPs bool `yaml:"virtual_ips"`
}

// VIPConfig is dns.virtual_ips.
type VIPConfig struct {
	// CIDR is the range virtual IPs are taken from: IPv4 (A answers) or
	// IPv6 (AAAA answers).
	CIDR string `yaml:"cidr"`
	// Pins fixes the virtual IP of some hosts (registry host → address in
	// CIDR): they resolve collisions by hand.
	Pins map[string]string `yaml:"pins"`
}

// Settings is a validated Config, defaults applied.
type Settings struct {
	Listen      string
	TTL         uint32 // seconds
	NegativeTTL uint32
	MaxAnswers  int
	UDPSize     uint16
	ClientZones []SubnetZone // longest prefix first
	Zones       []Zone       // longest zone first
	// Allocator gives virtual IPs; nil when no zone has them.
	Allocator vip.Allocator
}

// SubnetZone maps a client subnet to a zone.
type SubnetZone struct {
	Prefix netip.Prefix
	Zone   string
}

// Zone is a validated ZoneConfig.
type Zone struct {
	// Name is the zone, lower case, with its final dot: "demo.".
	Name string
	// Hosts is the registry domain of its names, lower case, without a
	// final dot; "" for the root.
	Hosts      string
	VirtualIPs bool
}

// Decode reads the dns: section from its YAML node (nil: not configured),
// with the same key checks as the rest of the config, and validates it.
// Errors are discovery.ConfigErrors where the node places them.
func Decode(node *yaml.Node) (*Settings, error) {
	var c Config
	if node != nil {
		if err := discovery.DecodeStrict(node, &c); err != nil {
			return nil, err
		}
	}
	s, err := c.Settings()
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return s, nil
}

// keyError is a problem with one key, for discovery.PlaceErrors.
func keyError(key string, format string, args ...any) error {
	return &discovery.ConfigError{Key: key, Err: fmt.Errorf(format, args...)}
}

// Settings validates c and applies the defaults.
func (c Config) Settings() (*Settings, error) {
	s := &Settings{
		Listen:      c.Listen,
		TTL:         seconds(time.Duration(c.TTL), DefaultTTL),
		NegativeTTL: seconds(time.Duration(c.NegativeTTL), DefaultNegativeTTL),
		MaxAnswers:  c.MaxAnswers,
	}
	var errs []error
	if s.Listen == "" {
		s.Listen = DefaultListen
	} else if _, err := netip.ParseAddrPort(s.Listen); err != nil {
		errs = append(errs, keyError("listen", "want ip:port, got %q", s.Listen))
	}
	if c.MaxAnswers < 0 {
		errs = append(errs, keyError("max_answers", "must not be negative"))
	}
	switch {
	case c.UDPSize == 0:
		s.UDPSize = DefaultUDPSize
	case c.UDPSize < mdns.MinMsgSize || c.UDPSize > mdns.MaxMsgSize:
		errs = append(errs, keyError("udp_size", "want %d to %d bytes", mdns.MinMsgSize, mdns.MaxMsgSize))
	default:
		s.UDPSize = uint16(c.UDPSize)
	}
	for cidr, zone := range c.ClientZones {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			errs = append(errs, keyError("client_zones", "%q is not a CIDR", cidr))
			continue
		}
		if zone == "" {
			errs = append(errs, keyError("client_zones", "%s: empty zone", cidr))
		}
		s.ClientZones = append(s.ClientZones, SubnetZone{Prefix: p.Masked(), Zone: zone})
	}
	slices.SortFunc(s.ClientZones, func(x, y SubnetZone) int {
		if x.Prefix.Bits() != y.Prefix.Bits() {
			return y.Prefix.Bits() - x.Prefix.Bits()
		}
		return x.Prefix.Addr().Compare(y.Prefix.Addr())
	})
	if len(c.Zones) == 0 {
		errs = append(errs, keyError("zones", "at least one zone is needed"))
	}
	anyVIP := false
	for i, zc := range c.Zones {
		key := fmt.Sprintf("zones[%d]", i)
		z, field, err := zc.zone()
		if err != nil {
			errs = append(errs, keyError(key+"."+field, "%v", err))
			continue
		}
		if slices.ContainsFunc(s.Zones, func(o Zone) bool { return o.Name == z.Name }) {
			errs = append(errs, keyError(key+".zone", "zone %s is listed twice", z.Name))
			continue
		}
		anyVIP = anyVIP || z.VirtualIPs
		s.Zones = append(s.Zones, z)
	}
	slices.SortStableFunc(s.Zones, func(x, y Zone) int { return mdns.CountLabel(y.Name) - mdns.CountLabel(x.Name) })
	switch {
	case anyVIP && c.VirtualIPs == nil:
		errs = append(errs, keyError("virtual_ips", "a zone has virtual_ips: true, but dns.virtual_ips (the range) is not set"))
	case c.VirtualIPs != nil:
		a, field, err := c.VirtualIPs.allocator()
		if err != nil {
			errs = append(errs, keyError("virtual_ips."+field, "%s", strings.TrimPrefix(err.Error(), vip.ErrConfig.Error()+": ")))
		}
		if anyVIP {
			s.Allocator = a
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

func seconds(d, def time.Duration) uint32 {
	if d == 0 {
		d = def
	}
	return uint32(min(d, time.Duration(1<<31-1)*time.Second) / time.Second)
}

// zone validates zc; an error names the field at fault.
func (zc ZoneConfig) zone() (Zone, string, error) {
	name, err := domain(zc.Zone)
	if err != nil {
		return Zone{}, "zone", err
	}
	if name == "." {
		return Zone{}, "zone", errors.New("the root cannot be a zone")
	}
	z := Zone{Name: name, Hosts: strings.TrimSuffix(name, "."), VirtualIPs: zc.VirtualIPs}
	if zc.Hosts != "" {
		h, err := domain(zc.Hosts)
		if err != nil {
			return Zone{}, "hosts", err
		}
		z.Hosts = strings.TrimSuffix(h, ".")
	}
	return z, "", nil
}

// domain returns s as a lower-case fully qualified domain name.
func domain(s string) (string, error) {
	if s == "" {
		return "", errors.New("empty")
	}
	if _, ok := mdns.IsDomainName(s); !ok || strings.ContainsAny(s, " \t\\") {
		return "", fmt.Errorf("%q is not a domain name", s)
	}
	return strings.ToLower(mdns.Fqdn(s)), nil
}

// allocator builds the range's allocator; an error names the field at fault.
func (v *VIPConfig) allocator() (vip.Allocator, string, error) {
	p, err := netip.ParsePrefix(v.CIDR)
	if err != nil {
		return nil, "cidr", fmt.Errorf("%q is not a CIDR", v.CIDR)
	}
	pins := make(map[string]netip.Addr, len(v.Pins))
	for host, a := range v.Pins {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return nil, "pins", fmt.Errorf("%s: %q is not an IP address", host, a)
		}
		h, err := discovery.CanonicalHost(host)
		if err != nil {
			return nil, "pins", err
		}
		pins[h] = ip
	}
	if _, err := vip.NewHash(p, nil); err != nil {
		return nil, "cidr", err
	}
	a, err := vip.NewHash(p, pins)
	if err != nil {
		return nil, "pins", err
	}
	return a, "", nil
}
