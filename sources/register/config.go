package register

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/sources/etcd"
)

// Defaults of the kind's keys.
const (
	DefaultMinTTL = time.Second
	DefaultMaxTTL = 5 * time.Minute
	// DefaultPrefix is where the etcd backend keeps registrations.
	DefaultPrefix = "/tributary/registrations/"
)

// Config is a register source's own configuration, as decoded from YAML.
type Config struct {
	// Backend is "memory" (default) or "etcd".
	Backend string `yaml:"backend"`
	TTL     struct {
		Min discovery.Duration `yaml:"min"`
		Max discovery.Duration `yaml:"max"`
	} `yaml:"ttl"`
	// InsecureNetworks are CIDRs (or single addresses) whose callers may
	// use the API without mTLS.
	InsecureNetworks []string `yaml:"insecure_networks"`
	// Allow are the rules of who may register what with mTLS (Rule).
	Allow []AllowConfig `yaml:"allow"`
	// Etcd is the etcd backend's cluster and prefix.
	Etcd *EtcdConfig `yaml:"etcd"`
}

// AllowConfig is one rule of allow:.
type AllowConfig struct {
	IDs         []string `yaml:"ids"`
	Authorities []string `yaml:"authorities"`
}

// EtcdConfig is the etcd: block.
type EtcdConfig struct {
	etcd.ClientConfig `yaml:",inline"`
	// Prefix under which registrations are kept; DefaultPrefix when empty.
	Prefix string `yaml:"prefix"`
}

// settings is a validated Config.
type settings struct {
	MinTTL, MaxTTL time.Duration
	policy         Policy
	etcd           *etcd.Conn
	prefix         string
}

func configErr(key, format string, args ...any) error {
	return &discovery.ConfigError{Key: key, Err: fmt.Errorf(format, args...)}
}

func (c Config) validate(baseDir string) (settings, error) {
	s := settings{MinTTL: DefaultMinTTL, MaxTTL: DefaultMaxTTL}
	var errs []error
	if c.TTL.Min != 0 {
		s.MinTTL = time.Duration(c.TTL.Min)
	}
	if c.TTL.Max != 0 {
		s.MaxTTL = time.Duration(c.TTL.Max)
	}
	if s.MaxTTL < s.MinTTL {
		errs = append(errs, configErr("ttl.max", "%s is below ttl.min %s", s.MaxTTL, s.MinTTL))
	}
	for i, n := range c.InsecureNetworks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			a, aerr := netip.ParseAddr(n)
			if aerr != nil {
				errs = append(errs, configErr(fmt.Sprintf("insecure_networks[%d]", i), "%q: want a CIDR such as 127.0.0.0/8 or an address", n))
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		s.policy.Networks = append(s.policy.Networks, p.Masked())
	}
	for i, r := range c.Allow {
		key := fmt.Sprintf("allow[%d]", i)
		if len(r.IDs) == 0 || len(r.Authorities) == 0 {
			errs = append(errs, configErr(key, "a rule needs ids and authorities"))
		}
		for _, p := range r.IDs {
			if err := checkIDPattern(p); err != nil {
				errs = append(errs, configErr(key+".ids", "%v", err))
			}
		}
		for _, p := range r.Authorities {
			if err := checkAuthorityPattern(p); err != nil {
				errs = append(errs, configErr(key+".authorities", "%v", err))
			}
		}
		s.policy.Allow = append(s.policy.Allow, Rule(r))
	}
	switch c.Backend {
	case "", "memory":
		if c.Etcd != nil {
			errs = append(errs, configErr("etcd", "set, but backend is memory (say backend: etcd)"))
		}
	case "etcd":
		if c.Etcd == nil {
			errs = append(errs, configErr("etcd", "required with backend: etcd (endpoints, prefix)"))
			break
		}
		conn, err := c.Etcd.ClientConfig.Validate(baseDir)
		if err != nil {
			errs = append(errs, prefixKeys("etcd.", err))
		}
		s.etcd = &conn
		s.prefix = c.Etcd.Prefix
		if s.prefix == "" {
			s.prefix = DefaultPrefix
		}
		if !strings.HasSuffix(s.prefix, "/") {
			s.prefix += "/"
		}
	default:
		errs = append(errs, configErr("backend", "%q: want memory or etcd", c.Backend))
	}
	return s, errors.Join(errs...)
}

// prefixKeys puts p before the key of every ConfigError in err.
func prefixKeys(p string, err error) error {
	var out []error
	for _, e := range flatten(err) {
		var ce *discovery.ConfigError
		if errors.As(e, &ce) {
			c := *ce
			c.Key = p + c.Key
			e = &c
		}
		out = append(out, e)
	}
	return errors.Join(out...)
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// NewSource validates cfg and returns a source ready to Run. It starts
// nothing.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	s, err := cfg.validate(bc.BaseDir)
	if err != nil {
		return nil, err
	}
	src := &Source{name: bc.Name, cfg: s}
	if s.etcd != nil {
		src.b = newEtcdBackend(*s.etcd, s.prefix, bc.Log())
	} else {
		src.b = newMemory(time.Now)
	}
	return src, nil
}

// newFromNode is the kind's constructor.
func newFromNode(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
	var cfg Config
	if err := discovery.DecodeStrict(node, &cfg); err != nil {
		return nil, err
	}
	src, err := NewSource(cfg, bc)
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return src, nil
}
