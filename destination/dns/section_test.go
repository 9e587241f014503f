package dns

import (
	"strings"
	"testing"

	"github.com/tributary-mesh/tributary/discovery"
)

func parseDNS(t *testing.T, yaml string) (*Settings, error) {
	t.Helper()
	var set *Settings
	_, err := discovery.ParseConfig([]byte(yaml), "c.yaml", func(c *discovery.Config) error {
		var err error
		set, err = DecodeSection(c.DNS)
		return err
	})
	return set, err
}

func TestDecodeSection(t *testing.T) {
	set, err := parseDNS(t, "sources: []\n")
	if err != nil || set != nil {
		t.Fatalf("no dns: section: %v %v", set, err)
	}
	set, err = parseDNS(t, "dns:\n  zones: [{zone: demo.}]\n  ttl: 30s\n")
	if err != nil || set == nil || set.TTL != 30 || set.Listen != DefaultListen {
		t.Fatalf("%+v %v", set, err)
	}
	_, err = parseDNS(t, `dns:
  listen: nowhere
  zonez: []
  zones:
    - zone: demo.
    - zone: "bad zone"
  virtual_ips: {cidr: 240.0.0.0/16, pins: {web.demo: 10.0.0.1}}
`)
	for _, want := range []string{
		"c.yaml:3: dns.zonez: unknown key",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want %q", err, want)
		}
	}
	_, err = parseDNS(t, `dns:
  listen: nowhere
  zones:
    - zone: demo.
    - zone: "bad zone"
  virtual_ips: {cidr: 240.0.0.0/16, pins: {web.demo: 10.0.0.1}}
`)
	for _, want := range []string{
		`c.yaml:2: dns.listen: want ip:port, got "nowhere"`,
		`c.yaml:5: dns.zones[1].zone: "bad zone" is not a domain name`,
		"c.yaml:6: dns.virtual_ips.pins: pin web.demo: 10.0.0.1 is not a usable address of 240.0.0.0/16",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want %q", err, want)
		}
	}
}
