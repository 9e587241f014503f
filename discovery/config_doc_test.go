package discovery

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/tributary-mesh/tributary/discovery/configdoc"
)

// TestConfigDocKeys: docs/configuration.md's tables and the core's config
// structs list the same keys (the other sections' owners test theirs).
func TestConfigDocKeys(t *testing.T) {
	doc, err := configdoc.Tables(configdoc.Path())
	if err != nil {
		t.Fatal(err)
	}
	// Every top-level key has its section; every section of keys is one.
	var sections []string
	for h := range doc {
		if !strings.ContainsAny(h, " :") {
			sections = append(sections, h)
		}
	}
	slices.Sort(sections)
	if err := configdoc.Compare("top level", sections, configdoc.StructKeys(reflect.TypeFor[rawConfig]())); err != nil {
		t.Error(err)
	}
	for _, tc := range []struct {
		section string
		config  []string
	}{
		{"sources", configdoc.StructKeys(reflect.TypeFor[rawSource]())},
		{"federation", configdoc.StructKeys(reflect.TypeFor[rawRule]())},
	} {
		if err := configdoc.Compare(tc.section, doc[tc.section], tc.config); err != nil {
			t.Error(err)
		}
	}
	// health: is shared with discovery/health, which tests the whole section.
	if !slices.Contains(doc["health"], "panic_threshold") {
		t.Error("health: docs/configuration.md does not list panic_threshold")
	}
}
