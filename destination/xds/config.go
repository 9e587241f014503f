package xds

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tributary-mesh/tributary/discovery"
)

// Config is the xds: section of the config file:
//
//	xds:
//	  listen: 127.0.0.1:18000      # the ADS port; the xDS server is off without it
//	  node_zones:                  # the zone of a node that does not say its own
//	    - node: "web-*"            # glob on the node's id (default: any)
//	      cluster: payments        # glob on the node's cluster (default: any)
//	      zone: zone-a
//	  upstream_tls:                # the clusters' transport socket (default: plaintext)
//	    mode: sds                  # sds (Envoy + SPIRE agent) or certificate_provider (gRPC)
//	    trust_domains: [prod.example.org]
//	    certificate: default       # SDS secret / provider instance of the client's own SVID
//	    validation: ROOTCA         # SDS secret / provider instance of the trust bundle
//	    sds_cluster: spire_agent   # sds: the bootstrap cluster of the SPIRE agent's SDS socket
type Config struct {
	Listen      string             `yaml:"listen"`
	NodeZones   []NodeZone         `yaml:"node_zones"`
	UpstreamTLS *UpstreamTLSConfig `yaml:"upstream_tls"`
}

// NodeZone is one node → zone rule; the first that matches applies.
type NodeZone struct {
	Node    string `yaml:"node"`
	Cluster string `yaml:"cluster"`
	Zone    string `yaml:"zone"`
}

// The upstream_tls modes.
const (
	TLSModeSDS                 = "sds"
	TLSModeCertificateProvider = "certificate_provider"
)

// UpstreamTLSConfig is xds.upstream_tls.
type UpstreamTLSConfig struct {
	Mode         string   `yaml:"mode"`
	TrustDomains []string `yaml:"trust_domains"`
	Certificate  string   `yaml:"certificate"`
	Validation   string   `yaml:"validation"`
	SDSCluster   string   `yaml:"sds_cluster"`
}

// Settings is the checked xds: section.
type Settings struct {
	Listen      netip.AddrPort
	NodeZones   []NodeZone
	UpstreamTLS *UpstreamTLSConfig
}

// Settings checks the section; every error is a *discovery.ConfigError
// whose Key is relative to the section.
func (c *Config) Settings() (*Settings, error) {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, &discovery.ConfigError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	set := &Settings{NodeZones: c.NodeZones}
	ap, err := netip.ParseAddrPort(c.Listen)
	if err != nil {
		fail("listen", "want ip:port, got %q", c.Listen)
	}
	set.Listen = ap
	for i, nz := range c.NodeZones {
		key := fmt.Sprintf("node_zones[%d]", i)
		if nz.Zone == "" {
			fail(key+".zone", "required")
		}
		for k, pat := range map[string]string{"node": nz.Node, "cluster": nz.Cluster} {
			if _, err := path.Match(pat, ""); err != nil {
				fail(key+"."+k, "bad glob %q", pat)
			}
		}
	}
	if t := c.UpstreamTLS; t != nil {
		tc := *t
		switch tc.Mode {
		case TLSModeSDS:
			if tc.Certificate == "" {
				tc.Certificate = "default" // the SPIRE agent's default SVID name
			}
			if tc.Validation == "" {
				tc.Validation = "ROOTCA" // its default bundle name
			}
			if tc.SDSCluster == "" {
				fail("upstream_tls.sds_cluster", "required with mode sds: the Envoy bootstrap cluster that reaches the SPIRE agent's SDS socket")
			}
		case TLSModeCertificateProvider:
			if tc.Certificate == "" || tc.Validation == "" {
				fail("upstream_tls", "mode certificate_provider needs certificate and validation: instance names of the gRPC bootstrap's certificate_providers")
			}
			if tc.SDSCluster != "" {
				fail("upstream_tls.sds_cluster", "only with mode sds")
			}
		default:
			fail("upstream_tls.mode", "want sds or certificate_provider, got %q", tc.Mode)
		}
		if len(tc.TrustDomains) == 0 {
			fail("upstream_tls.trust_domains", "required: the trust domains whose SPIFFE IDs a server may present")
		}
		for i, td := range tc.TrustDomains {
			if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "/") {
				fail(fmt.Sprintf("upstream_tls.trust_domains[%d]", i), "%q is not a trust domain name", td)
			}
		}
		set.UpstreamTLS = &tc
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return set, nil
}

// DecodeSection decodes and checks the xds: section; nil Settings when the
// section is absent or sets no listen (the xDS server is off). Errors read
// file:line: xds.key: problem.
func DecodeSection(s discovery.Section) (*Settings, error) {
	if !s.Written() {
		return nil, nil
	}
	var c Config
	if err := s.Decode(&c); err != nil {
		return nil, err
	}
	if c.Listen == "" && len(c.NodeZones) == 0 && c.UpstreamTLS == nil {
		return nil, nil
	}
	if c.Listen == "" {
		return nil, &discovery.ConfigError{File: s.File, Line: s.Line(), Key: s.Path + ".listen",
			Err: errors.New("required when the section sets anything else (the xDS server is off without it)")}
	}
	set, err := c.Settings()
	if err != nil {
		return nil, s.Place(err)
	}
	return set, nil
}

// zoneOf is the zone of a node: its own locality's zone, else the first
// node_zones rule that matches its id and cluster, else none.
func (set *Settings) zoneOf(id, cluster, localityZone string) string {
	if localityZone != "" {
		return localityZone
	}
	if set == nil {
		return ""
	}
	for _, nz := range set.NodeZones {
		if glob(nz.Node, id) && glob(nz.Cluster, cluster) {
			return nz.Zone
		}
	}
	return ""
}

func glob(pat, s string) bool {
	if pat == "" {
		return true
	}
	ok, _ := path.Match(pat, s)
	return ok
}
