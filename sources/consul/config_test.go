package consul

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

func TestConfigDefaults(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	src, err := parse(t, "")
	if err != nil {
		t.Fatal(err)
	}
	s := src.(*Source).s
	switch {
	case s.api.Address != "127.0.0.1:8500" || s.api.Scheme != "http":
		t.Errorf("address %s://%s", s.api.Scheme, s.api.Address)
	case !s.allowStale || !s.warningIsHealthy || s.connect:
		t.Errorf("allow_stale %v warning_is_healthy %v connect %v", s.allowStale, s.warningIsHealthy, s.connect)
	case s.wait != 5*time.Minute || s.maxWatches != 150 || s.overflowConcurrency != 8:
		t.Errorf("wait %v max_watches %d overflow %d", s.wait, s.maxWatches, s.overflowConcurrency)
	case s.backoffInitial != time.Second || s.backoffMax != 30*time.Second:
		t.Errorf("backoff %v..%v", s.backoffInitial, s.backoffMax)
	case !s.allTags || s.tagAuthority == nil || s.authorityPort:
		t.Errorf("naming: all tags %v, tag template %v, port in name %v", s.allTags, s.tagAuthority != nil, s.authorityPort)
	case len(s.datacenters) != 0:
		t.Errorf("datacenters %v", s.datacenters)
	}
	if got := s.maxConns(); got != 150+8+3+1 {
		t.Errorf("connection bound %d", got)
	}
	if tr := src.(*Source).transport; tr.MaxConnsPerHost != s.maxConns() || tr.MaxIdleConnsPerHost != s.maxConns() {
		t.Errorf("transport bounds %d/%d", tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost)
	}
}

func TestConfigAddressAndTLS(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "token"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("secret-token\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		config, scheme, address string
	}{
		{"address: consul.internal:8500", "http", "consul.internal:8500"},
		{"address: https://consul.internal:8501", "https", "https://consul.internal:8501"},
		{"address: consul.internal:8501\ntls: {insecure_skip_verify: true}", "https", "consul.internal:8501"},
		{"tls: {server_name: consul.internal}", "https", "127.0.0.1:8500"},
	} {
		t.Setenv("CONSUL_HTTP_ADDR", "")
		src, err := parse(t, tc.config)
		if err != nil {
			t.Errorf("%s: %v", tc.config, err)
			continue
		}
		s := src.(*Source).s
		if s.api.Scheme != tc.scheme || s.api.Address != tc.address {
			t.Errorf("%s: %s %s", tc.config, s.api.Scheme, s.api.Address)
		}
	}
	// token_file relative to the config's folder, trimmed.
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte("token_file: token"), &doc); err != nil {
		t.Fatal(err)
	}
	src, err := newFromNode(doc.Content[0], discovery.BuildContext{Name: "c", BaseDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got := src.(*Source).s.api.Token; got != "secret-token" {
		t.Errorf("token %q", got)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		config string
		line   int
		want   string
	}{
		{"adress: x", 1, "adress: unknown key"},
		{"address: x", 1, "address:"},
		{"address: ftp://h:1", 1, "scheme must be http, https or unix"},
		{"address: http://h:1\ntls: {insecure_skip_verify: true}", 2, "tls: tls is set but address"},
		{"token: a\ntoken_file: b", 2, "token_file: give token or token_file, not both"},
		{"token_file: /nonexistent/token", 1, "token_file:"},
		{"tls:\n  cert_file: /nonexistent/c.pem", 1, "tls: cert_file and key_file go together"},
		{"tls:\n  ca_file: /nonexistent/ca.pem", 2, "tls.ca_file:"},
		{"datacenters: [dc1, 'd c']", 1, "datacenters[1]:"},
		{"datacenters: [dc1, dc1]", 1, `"dc1" listed twice`},
		{"services: ['[x']", 1, "services[0]:"},
		{"trust_domain: 'Not Valid'", 1, "trust_domain:"},
		{"naming:\n  authority: '{{.Service'", 2, "naming.authority:"},
		{"naming:\n  authority: 'all.consul'", 2, "gives every service the same authority"},
		{"naming:\n  authority: '{{.Nope}}.consul'", 2, "naming.authority:"},
		{"naming:\n  tag_authority: '{{.Service}}.consul'", 2, "must use both {{.Tag}} and {{.Service}}"},
		{"naming:\n  tag_subsets: [ok, 'not ok']", 2, "naming.tag_subsets[1]:"},
		{"naming:\n  authority: 'bad host {{.Service}}'", 2, "naming.authority:"},
		{"wait: 20m", 1, "wait: 20m0s: want from 1s to 10m0s"},
		{"wait: 500ms", 1, "wait:"},
		{"max_watches: -1", 1, "max_watches:"},
		{"overflow:\n  concurrency: 0", 2, "overflow.concurrency:"},
		{"backoff:\n  initial: 2s\n  max: 1s", 3, "backoff.max:"},
		{"allow_stale: maybe", 1, "allow_stale"},
	} {
		_, err := parse(t, tc.config)
		if err == nil {
			t.Errorf("%q: no error", tc.config)
			continue
		}
		var found bool
		for _, e := range unjoin(err) {
			ce, ok := e.(*discovery.ConfigError)
			if ok && strings.Contains(ce.Error(), tc.want) && ce.Line == tc.line {
				found = true
			}
		}
		if !found {
			t.Errorf("%q: got %v, want %q at line %d", tc.config, err, tc.want, tc.line)
		}
	}
}

func TestConfigCollectsEveryProblem(t *testing.T) {
	_, err := parse(t, "max_watches: -1\nwait: 1h\ntoken: a\ntoken_file: b\n")
	if n := len(unjoin(err)); n != 3 {
		t.Errorf("%d errors, want 3: %v", n, err)
	}
}

func TestKindIsRegistered(t *testing.T) {
	cfg, err := discovery.ParseConfig([]byte(`sources:
  - name: consul
    kind: consul
    address: 127.0.0.1:8500
    max_watchez: 3
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.BuildSources(nil)
	if err == nil || !strings.Contains(err.Error(), "t.yaml:5: sources[0].max_watchez: unknown key") {
		t.Fatalf("got %v", err)
	}
}

// unjoin lists the errors errors.Join put together.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
