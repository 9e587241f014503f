package etcd

import (
	"fmt"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/sources/etcd/etcdtest"
)

// waitFor bounds every wait: a hang guard, never a latency claim.
const waitFor = etcdtest.WaitFor

// render lists a call's groups as "key authority addr,addr…" lines.
func render(gs []discovery.Group) []string {
	var out []string
	for _, g := range gs {
		line := g.Key
		for _, s := range g.Services {
			line += " " + s.Authority.String()
			for i, e := range s.Endpoints {
				sep := " "
				if i > 0 {
					sep = ","
				}
				line += sep + e.Addr.String()
			}
		}
		out = append(out, line)
	}
	return out
}

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

// parseYAML returns the mapping node of a document.
func parseYAML(t testing.TB, s string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}
