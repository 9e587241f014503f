package dnssrv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

// Defaults of the kind's keys.
const (
	DefaultMinRefresh = 5 * time.Second
	DefaultMaxRefresh = 5 * time.Minute
	DefaultTimeout    = 2 * time.Second
	// DefaultUDPSize is the EDNS0 UDP payload size advertised: the DNS Flag
	// Day 2020 value, safe from IP fragmentation. Larger answers come over
	// TCP.
	DefaultUDPSize = 1232
)

// resolvConf is where resolvers come from when the config names none.
var resolvConf = "/etc/resolv.conf"

// Config is a dnssrv source's own configuration, validated.
type Config struct {
	Names []Name
	// Resolvers are ip:port, asked in order.
	Resolvers  []string
	MinRefresh time.Duration
	MaxRefresh time.Duration
	Timeout    time.Duration
	UDPSize    uint16
}

// Name is one SRV name and the authority its records serve.
type Name struct {
	// FQDN is the SRV name, lower case, with the trailing dot.
	FQDN string
	// Host is the authority's host. Port is its port; 0 takes the port of
	// each SRV record.
	Host string
	Port uint16
}

// Key is the group key of the name: the name without its trailing dot.
func (n Name) Key() string { return strings.TrimSuffix(n.FQDN, ".") }

type rawConfig struct {
	Names     []rawName           `yaml:"names"`
	Resolvers []string            `yaml:"resolvers"`
	Refresh   rawRefresh          `yaml:"refresh"`
	Timeout   *discovery.Duration `yaml:"timeout"`
	UDPSize   *int                `yaml:"udp_size"`
}

type rawRefresh struct {
	Min *discovery.Duration `yaml:"min"`
	Max *discovery.Duration `yaml:"max"`
}

// rawName is an entry of names: an SRV name, or a mapping with name and
// authority.
type rawName struct {
	Name      string `yaml:"name"`
	Authority string `yaml:"authority"`
	line      int
}

func (r *rawName) UnmarshalYAML(n *yaml.Node) error {
	r.line = n.Line
	if n.Kind == yaml.ScalarNode {
		r.Name = n.Value
		return nil
	}
	var m struct {
		Name      string `yaml:"name"`
		Authority string `yaml:"authority"`
	}
	if err := discovery.DecodeStrict(n, &m); err != nil {
		return err
	}
	r.Name, r.Authority = m.Name, m.Authority
	return nil
}

// newFromNode is the kind's constructor.
func newFromNode(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
	var raw rawConfig
	if err := discovery.DecodeStrict(node, &raw); err != nil {
		return nil, err
	}
	cfg, err := raw.config(node)
	if err != nil {
		return nil, err
	}
	return NewSource(cfg, bc)
}

func configErr(line int, key, format string, args ...any) error {
	return &discovery.ConfigError{Line: line, Key: key, Err: fmt.Errorf(format, args...)}
}

// config validates raw; node gives the lines.
func (raw rawConfig) config(node *yaml.Node) (Config, error) {
	var errs []error
	cfg := Config{MinRefresh: DefaultMinRefresh, MaxRefresh: DefaultMaxRefresh, Timeout: DefaultTimeout, UDPSize: DefaultUDPSize}
	if len(raw.Names) == 0 {
		errs = append(errs, configErr(discovery.KeyLine(node, "names"), "names", "required: at least one SRV name, such as _http._tcp.api.example.com"))
	}
	seen := map[string]int{}
	for i, rn := range raw.Names {
		key := "names[" + strconv.Itoa(i) + "]"
		n, err := parseName(rn)
		if err != nil {
			errs = append(errs, configErr(rn.line, key, "%v", err))
			continue
		}
		if first, dup := seen[n.FQDN]; dup {
			errs = append(errs, configErr(rn.line, key, "%s listed twice (first at line %d)", n.Key(), first))
			continue
		}
		seen[n.FQDN] = rn.line
		cfg.Names = append(cfg.Names, n)
	}
	resNodes := seqOf(node, "resolvers")
	for i, r := range raw.Resolvers {
		line := discovery.KeyLine(node, "resolvers")
		if i < len(resNodes) {
			line = resNodes[i].Line
		}
		addr, err := resolverAddr(r)
		if err != nil {
			errs = append(errs, configErr(line, "resolvers["+strconv.Itoa(i)+"]", "%v", err))
			continue
		}
		cfg.Resolvers = append(cfg.Resolvers, addr)
	}
	if raw.Refresh.Min != nil {
		cfg.MinRefresh = time.Duration(*raw.Refresh.Min)
	}
	if raw.Refresh.Max != nil {
		cfg.MaxRefresh = time.Duration(*raw.Refresh.Max)
	}
	refreshLine := discovery.KeyLine(node, "refresh")
	switch {
	case cfg.MinRefresh <= 0:
		errs = append(errs, configErr(refreshLine, "refresh.min", "must be positive"))
	case cfg.MaxRefresh < cfg.MinRefresh:
		errs = append(errs, configErr(refreshLine, "refresh.max", "%s is below refresh.min %s", cfg.MaxRefresh, cfg.MinRefresh))
	}
	if raw.Timeout != nil {
		cfg.Timeout = time.Duration(*raw.Timeout)
		if cfg.Timeout <= 0 {
			errs = append(errs, configErr(discovery.KeyLine(node, "timeout"), "timeout", "must be positive"))
		}
	}
	if raw.UDPSize != nil {
		if v := *raw.UDPSize; v < dns.MinMsgSize || v > dns.MaxMsgSize {
			errs = append(errs, configErr(discovery.KeyLine(node, "udp_size"), "udp_size", "must be from %d to %d, got %d", dns.MinMsgSize, dns.MaxMsgSize, v))
		} else {
			cfg.UDPSize = uint16(v)
		}
	}
	return cfg, errors.Join(errs...)
}

// parseName validates one names entry and derives its authority.
func parseName(rn rawName) (Name, error) {
	name := strings.ToLower(strings.TrimSpace(rn.Name))
	if name == "" {
		return Name{}, errors.New("empty SRV name")
	}
	fqdn := dns.Fqdn(name)
	if _, ok := dns.IsDomainName(fqdn); !ok || fqdn == "." {
		return Name{}, fmt.Errorf("%q is not a domain name", rn.Name)
	}
	n := Name{FQDN: fqdn}
	if rn.Authority != "" {
		a, err := discovery.ParseAuthority(rn.Authority, 0)
		if err != nil {
			return Name{}, fmt.Errorf("authority: %v", err)
		}
		n.Host, n.Port = a.Host, a.Port
		return n, nil
	}
	// _service._proto.host → host, as RFC 2782 spells SRV names.
	labels := dns.SplitDomainName(fqdn)
	i := 0
	for i < len(labels)-1 && strings.HasPrefix(labels[i], "_") {
		i++
	}
	host := strings.Join(labels[i:], ".")
	if strings.HasPrefix(host, "_") {
		return Name{}, fmt.Errorf("%q: no authority host can be derived from it; give one with authority", rn.Name)
	}
	if _, err := discovery.ParseAuthority(host, 0); err != nil {
		return Name{}, fmt.Errorf("%q: the authority derived from it is not valid (%v); give one with authority", rn.Name, err)
	}
	n.Host = host
	return n, nil
}

// resolverAddr reads "ip" or "ip:port" (port 53 by default).
func resolverAddr(s string) (string, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return "", fmt.Errorf("%q: port 0", s)
		}
		return ap.String(), nil
	}
	if a, ok := (discovery.Authority{Host: s}).Addr(); ok && a.Zone() == "" {
		return netip.AddrPortFrom(a, 53).String(), nil
	}
	return "", fmt.Errorf("%q: want an IP address with an optional port, such as 10.0.0.2:53 or [::1]:5353", s)
}

// systemResolvers reads the nameservers of resolvConf.
func systemResolvers() ([]string, error) {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range cc.Servers {
		if a, err := resolverAddr(net.JoinHostPort(s, cc.Port)); err == nil {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no usable nameserver", resolvConf)
	}
	return out, nil
}

// seqOf returns the items of the sequence under key.
func seqOf(node *yaml.Node, key string) []*yaml.Node {
	if node == nil {
		return nil
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		if node.Content[i].Value == key && node.Content[i+1].Kind == yaml.SequenceNode {
			return node.Content[i+1].Content
		}
	}
	return nil
}
