package discovery

import (
	"reflect"
	"testing"
)

// FuzzParseConfig: the core's config loader never panics; a refusal is a
// list of file:line errors and no config; an accepted config keeps every
// promise the loader makes (known kinds, unique source names, federation
// tiers over known sources); and parsing is deterministic. The sections
// other packages own have their fuzz target in cmd/tributary.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"", "server: {}\n",
		"server:\n  listen: 127.0.0.1:8086\n  admin: 127.0.0.1:9996\n  startup_timeout: 2s\n  keepalive: {time: 1s, timeout: 1s, min_ping_interval: 1s}\n",
		"server:\n  tls:\n    workload_api: unix:///run/spire/agent.sock\n    authorize:\n      registration: {ids: ['spiffe://a.example/x/**']}\n",
		"sources:\n  - name: east\n    kind: " + testKind + "\n    paths: [a]\n  - name: west\n    kind: " + testKind + "\n    paths: [b]\n" +
			"federation:\n  - authority: web:80\n    aliases: [web.consul:80]\n    failover:\n      - sources: [east]\n        min_healthy: 2\n      - sources: [west]\n",
		"base: &b {listen: ':1'}\nserver:\n  <<: *b\n",
		"sources:\n  - &s {name: a, kind: " + testKind + ", paths: [x]}\n  - *s\n",
		"server: [1, 2]\n", "--- \n...\n", "a: &a [*a]\n", "server:\n  tls:\n  keepalive:\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data, "fuzz.yaml")
		if err != nil {
			if c != nil {
				t.Fatal("a config with an error")
			}
			for _, ce := range flattenConfigErrors(err, nil) {
				if ce.File != "fuzz.yaml" || ce.Line < 0 || ce.Err == nil || ce.Err.Error() == "" {
					t.Fatalf("error without its place or message: %#v", ce)
				}
			}
			return
		}
		checkConfig(t, c)
		again, err := ParseConfig(data, "fuzz.yaml")
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("parsing twice differs: %v", err)
		}
	})
}

func checkConfig(t *testing.T, c *Config) {
	t.Helper()
	names := map[string]bool{}
	for _, sc := range c.Sources {
		if !isSourceName(sc.Name) || names[sc.Name] {
			t.Fatalf("source name %q accepted", sc.Name)
		}
		names[sc.Name] = true
		if _, ok := LookupKind(sc.Kind); !ok || sc.Node == nil {
			t.Fatalf("source %q: kind %q or its keys", sc.Name, sc.Kind)
		}
		for i := 0; i+1 < len(sc.Node.Content); i += 2 {
			if commonSourceKeys[sc.Node.Content[i].Value] {
				t.Fatalf("source %q: common key %q handed to the kind", sc.Name, sc.Node.Content[i].Value)
			}
		}
	}
	rules := map[Authority]bool{}
	for _, r := range c.Federation {
		if r.Authority.Host == "" || rules[r.Authority] {
			t.Fatalf("rule authority %v accepted", r.Authority)
		}
		rules[r.Authority] = true
		for _, tier := range r.Failover {
			if tier.MinHealthy < 1 || len(tier.Sources) == 0 {
				t.Fatalf("tier %+v accepted", tier)
			}
			for _, n := range tier.Sources {
				if !names[n] {
					t.Fatalf("tier source %q is no source", n)
				}
			}
		}
	}
	if _, err := c.BuildFederation(); err != nil {
		t.Fatalf("an accepted config's federation does not build: %v", err)
	}
}
