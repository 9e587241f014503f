package main

import (
	"reflect"
	"regexp"
	"strings"
	"testing"

	dnsedge "github.com/tributary-mesh/tributary/destination/dns"
	"github.com/tributary-mesh/tributary/discovery/configdoc"
)

// validKeys is the key list of an "unknown key (valid keys: …)" error:
// what the decoders of a section accept, whichever package owns them.
func validKeys(t *testing.T, err error) []string {
	t.Helper()
	m := regexp.MustCompile(`valid keys: ([^)]*)\)`).FindStringSubmatch(errString(err))
	if m == nil {
		t.Fatalf("no valid keys in %v", err)
	}
	return strings.Split(m[1], ", ")
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestConfigDocKeys: docs/configuration.md's tables and the sections this
// command loads list the same keys, both ways (discovery tests the core's).
func TestConfigDocKeys(t *testing.T) {
	doc, err := configdoc.Tables(configdoc.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := configdoc.Compare("server", doc["server"], configdoc.StructKeys(reflect.TypeFor[ServerConfig]())); err != nil {
		t.Error(err)
	}
	if err := configdoc.Compare("dns", doc["dns"], configdoc.StructKeys(reflect.TypeFor[dnsedge.Config]())); err != nil {
		t.Error(err)
	}
	// health: is read by the core and by discovery/health; an unknown key
	// there is refused with the keys of both.
	_, err = parseTestConfig([]byte("health:\n  zz_unknown: 1\n"), "c.yaml")
	if err := configdoc.Compare("health", doc["health"], validKeys(t, err)); err != nil {
		t.Error(err)
	}
	// kind: file's own keys, as the kind refuses an unknown one.
	c, err := parseTestConfig([]byte("sources:\n  - name: f\n    kind: file\n    paths: [x]\n    zz_unknown: 1\n"), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.BuildSources(nil)
	if err := configdoc.Compare("kind: file", doc["kind: file"], validKeys(t, err)); err != nil {
		t.Error(err)
	}
}
