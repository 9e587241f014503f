package xds

import (
	"strings"
	"testing"

	"github.com/tributary-mesh/tributary/discovery"
)

func parseXDS(t *testing.T, yaml string) (*Settings, error) {
	t.Helper()
	var set *Settings
	_, err := discovery.ParseConfig([]byte(yaml), "c.yaml", func(c *discovery.Config) error {
		var err error
		set, err = DecodeSection(c.XDS)
		return err
	})
	return set, err
}

func TestDecodeSection(t *testing.T) {
	set, err := parseXDS(t, "sources: []\n")
	if err != nil || set != nil {
		t.Fatalf("no xds: section: %v %v", set, err)
	}
	set, err = parseXDS(t, "xds:\n  listen: 127.0.0.1:18000\n  node_zones: [{node: \"east-*\", zone: east}]\n")
	if err != nil || set == nil || set.Listen.Port() != 18000 || set.zoneOf("east-1", "", "") != "east" || set.zoneOf("east-1", "", "own") != "own" {
		t.Fatalf("%+v %v", set, err)
	}
	set, err = parseXDS(t, "xds:\n  listen: 127.0.0.1:18000\n  upstream_tls: {mode: sds, trust_domains: [prod.test], sds_cluster: spire_agent}\n")
	if err != nil || set.UpstreamTLS.Certificate != "default" || set.UpstreamTLS.Validation != "ROOTCA" {
		t.Fatalf("sds defaults: %+v %v", set, err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"xds:\n  lissen: x\n", "c.yaml:2: xds.lissen: unknown key"},
		{"xds:\n  node_zones: [{zone: a}]\n", "c.yaml:2: xds.listen: required when the section sets anything else"},
		{"xds:\n  listen: nowhere\n", `c.yaml:2: xds.listen: want ip:port, got "nowhere"`},
		{"xds:\n  listen: 127.0.0.1:1\n  node_zones:\n    - {node: \"[\", zone: a}\n", `c.yaml:4: xds.node_zones[0].node: bad glob "["`},
		{"xds:\n  listen: 127.0.0.1:1\n  node_zones:\n    - {node: a}\n", "c.yaml:4: xds.node_zones[0].zone: required"},
		{"xds:\n  listen: 127.0.0.1:1\n  upstream_tls:\n    mode: magic\n    trust_domains: [a.test]\n", `c.yaml:4: xds.upstream_tls.mode: want sds or certificate_provider, got "magic"`},
		{"xds:\n  listen: 127.0.0.1:1\n  upstream_tls:\n    mode: sds\n    trust_domains: [a.test]\n", "xds.upstream_tls.sds_cluster: required with mode sds"},
		{"xds:\n  listen: 127.0.0.1:1\n  upstream_tls:\n    mode: certificate_provider\n    certificate: x\n    validation: y\n    trust_domains: [\"bad domain\"]\n", `c.yaml:7: xds.upstream_tls.trust_domains[0]: "bad domain" is not a trust domain name`},
	} {
		_, err := parseXDS(t, tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
