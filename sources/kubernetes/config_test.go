package kubernetes

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tributary-mesh/tributary/discovery"
)

func parseNode(t *testing.T, doc string) *yaml.Node {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &n); err != nil {
		t.Fatal(err)
	}
	return n.Content[0]
}

// writeKubeconfig writes a kubeconfig with two contexts into dir.
func writeKubeconfig(t *testing.T, dir, name string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["a"] = &clientcmdapi.Cluster{Server: "https://10.0.0.1:6443"}
	cfg.Clusters["b"] = &clientcmdapi.Cluster{Server: "https://10.0.0.2:6443"}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts["a"] = &clientcmdapi.Context{Cluster: "a", AuthInfo: "u"}
	cfg.Contexts["b"] = &clientcmdapi.Context{Cluster: "b", AuthInfo: "u"}
	cfg.CurrentContext = "a"
	path := filepath.Join(dir, name)
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigDefaults(t *testing.T) {
	src, err := newFromNode(parseNode(t, "{}"), discovery.BuildContext{Name: "east"})
	if err != nil {
		t.Fatal(err)
	}
	s := src.(*Source).set
	b := s.builder
	if s.restConfig != nil || s.cluster != "east" || s.namespaces != nil || !s.nodeZones || !s.selector.Empty() {
		t.Errorf("settings: %+v", s)
	}
	if b.domain != "cluster.local" || b.mode != IdentityLinkerd || b.trustDomain != "cluster.local" || b.controlNS != "linkerd" ||
		b.idSelector.String() != "linkerd.io/control-plane-ns=linkerd" || b.serveTerminating || b.preferIPv6 {
		t.Errorf("builder: %+v (selector %s)", b, b.idSelector)
	}
}

func TestConfigEverything(t *testing.T) {
	dir := t.TempDir()
	writeKubeconfig(t, dir, "east.kubeconfig")
	doc := `
kubeconfig: east.kubeconfig
context: b
cluster: prod-east
cluster_domain: Corp.Example.
namespaces: [prod, staging]
label_selector: "mesh in (on), tier!=db"
identity: spiffe
trust_domain: example.org
control_plane_namespace: mesh-system
identity_pod_selector: "spiffe=yes"
serve_terminating: true
prefer_ipv6: true
node_zones: false
`
	src, err := newFromNode(parseNode(t, doc), discovery.BuildContext{Name: "east", BaseDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s := src.(*Source).set
	if s.restConfig == nil || s.restConfig.Host != "https://10.0.0.2:6443" {
		t.Errorf("kubeconfig relative to the config's folder, context b: %+v", s.restConfig)
	}
	if s.cluster != "prod-east" || strings.Join(s.namespaces, ",") != "prod,staging" || s.nodeZones {
		t.Errorf("settings: %+v", s)
	}
	if s.selector.String() != "mesh in (on),tier!=db" {
		t.Errorf("selector %q", s.selector)
	}
	b := s.builder
	if b.domain != "corp.example" || b.mode != IdentitySPIFFE || b.trustDomain != "example.org" || b.controlNS != "mesh-system" ||
		b.idSelector.String() != "spiffe=yes" || !b.serveTerminating || !b.preferIPv6 {
		t.Errorf("builder: %+v", b)
	}
}

func TestConfigSpiffeDefaultSelectsEveryPod(t *testing.T) {
	src, err := newFromNode(parseNode(t, "identity: spiffe"), discovery.BuildContext{Name: "east"})
	if err != nil {
		t.Fatal(err)
	}
	if sel := src.(*Source).set.builder.idSelector; !sel.Empty() {
		t.Errorf("spiffe default selector %q", sel)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		doc, key, msg string
		line          int
	}{
		{"kubeconfg: x", "kubeconfg", "", 1},
		{"identity: istio", "identity", "unknown identity mode", 1},
		{"cluster_domain: 'bad domain'", "cluster_domain", "not a DNS name", 1},
		{"namespaces:\n  - prod\n  - Bad_NS", "namespaces[1]", "not a namespace name", 3},
		{"namespaces: [prod, prod]", "namespaces[1]", "listed twice", 1},
		{"label_selector: 'a in b'", "label_selector", "", 1},
		{"trust_domain: 'Example.org/x'", "trust_domain", "lower-case", 1},
		{"control_plane_namespace: Linkerd", "control_plane_namespace", "not a namespace name", 1},
		{"identity_pod_selector: '!!'", "identity_pod_selector", "", 1},
		{"identity: none\nidentity_pod_selector: a=b", "identity_pod_selector", "no effect", 2},
		{"context: b", "context", "needs a kubeconfig", 1},
		{"node_zones: maybe", "node_zones", "", 1},
		{"\nkubeconfig: missing.kubeconfig", "kubeconfig", "missing.kubeconfig", 2},
	}
	for _, c := range cases {
		_, err := newFromNode(parseNode(t, c.doc), discovery.BuildContext{Name: "east", BaseDir: dir})
		var ce *discovery.ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%q: want a ConfigError, got %v", c.doc, err)
			continue
		}
		if ce.Key != c.key || ce.Line != c.line || !strings.Contains(ce.Error(), c.msg) {
			t.Errorf("%q: got %q (key %q line %d), want key %q line %d containing %q", c.doc, ce.Error(), ce.Key, ce.Line, c.key, c.line, c.msg)
		}
	}
}

func TestConfigThroughTheLoader(t *testing.T) {
	// The kind's errors come out of the config loader with file:line.
	dir := t.TempDir()
	path := filepath.Join(dir, "tributary.yaml")
	doc := "sources:\n  - name: east\n    kind: kubernetes\n    identity: bogus\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := discovery.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.BuildSources(nil)
	if err == nil || !strings.Contains(err.Error(), path+":4: sources[0].identity: unknown identity mode") {
		t.Errorf("got %v", err)
	}
}

func TestConfigReportsEveryProblem(t *testing.T) {
	_, err := newFromNode(parseNode(t, "identity: istio\nnamespaces: [Prod]\ntrust_domain: 'A B'\n"), discovery.BuildContext{Name: "east"})
	var lines []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		ce := e.(*discovery.ConfigError)
		lines = append(lines, ce.Key+"@"+strconv.Itoa(ce.Line))
	}
	if got := strings.Join(lines, " "); got != "namespaces[0]@2 identity@1 trust_domain@3" {
		t.Errorf("got %s", got)
	}
}

func TestConfigDefaultOpaquePorts(t *testing.T) {
	bc := discovery.BuildContext{Name: "east"}
	for _, c := range []struct {
		name  string
		value *string
		want  []uint16
		err   bool
	}{
		{name: "Linkerd's default", want: []uint16{25, 587, 3306, 4444, 5432, 6379, 9300, 11211}},
		{name: "none", value: ptr(""), want: nil},
		{name: "own list", value: ptr("8080, 9000-9002"), want: []uint16{8080, 9000, 9001, 9002}},
		{name: "not a port", value: ptr("http"), err: true},
	} {
		s, err := Config{DefaultOpaquePorts: c.value}.validate(bc)
		if c.err {
			if err == nil || !strings.Contains(err.Error(), "default_opaque_ports") {
				t.Errorf("%s: error %v, want one naming default_opaque_ports", c.name, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var got []uint16
		for p := range s.builder.defaultOpaque {
			got = append(got, p)
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
