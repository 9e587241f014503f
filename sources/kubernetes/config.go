package kubernetes

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tributary-mesh/tributary/discovery"
)

// Defaults of the optional keys.
const (
	DefaultClusterDomain         = "cluster.local"
	DefaultTrustDomain           = "cluster.local"
	DefaultControlPlaneNamespace = "linkerd"
)

// IdentityMode says how endpoint identities are named.
type IdentityMode string

const (
	// IdentityLinkerd: Linkerd's DNS-like name
	// <sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>.
	IdentityLinkerd IdentityMode = "linkerd"
	// IdentitySPIFFE: spiffe://<trust-domain>/ns/<ns>/sa/<sa>, with the
	// Linkerd DNS-like name as the TLS server name.
	IdentitySPIFFE IdentityMode = "spiffe"
	// IdentityNone: no identity; clients do not attempt mTLS.
	IdentityNone IdentityMode = "none"
)

// Config is a kubernetes source's own configuration.
type Config struct {
	// Kubeconfig is the path of a kubeconfig file; relative paths resolve
	// against BuildContext.BaseDir. Empty means the in-cluster config
	// (the pod's service account).
	Kubeconfig string
	// Context is the kubeconfig context to use; empty means its current-context.
	Context string
	// Cluster names the cluster in the `cluster` metric label; empty means
	// the source's name.
	Cluster string
	// ClusterDomain is the DNS suffix of service names; empty means
	// DefaultClusterDomain.
	ClusterDomain string
	// Namespaces limits what is watched; empty means every namespace.
	Namespaces []string
	// LabelSelector limits the Services served (Kubernetes selector syntax).
	LabelSelector string
	// Identity is the naming of endpoint identities; empty means IdentityLinkerd.
	Identity IdentityMode
	// TrustDomain of the identities; empty means DefaultTrustDomain.
	TrustDomain string
	// ControlPlaneNamespace is the Linkerd control plane's namespace, part of
	// the DNS-like identity; empty means DefaultControlPlaneNamespace.
	ControlPlaneNamespace string
	// IdentityPodSelector: only pods whose labels match get an identity. Nil
	// means the default of the mode: linkerd.io/control-plane-ns=<control
	// plane namespace> (meshed pods) for linkerd, every pod for spiffe.
	IdentityPodSelector *string
	// ServeTerminating keeps endpoints that are terminating but still
	// serving (graceful shutdown) in service, as warning, until they stop
	// serving or go away.
	ServeTerminating bool
	// PreferIPv6 serves a dual-stack Service's IPv6 endpoints rather than
	// its IPv4 ones.
	PreferIPv6 bool
	// NodeZones, when true (the default, nil), watches Nodes so that a
	// client naming its node in the context token gets zone_locality.
	NodeZones *bool
	// DefaultOpaquePorts are the opaque ports of pods, ExternalWorkloads and
	// Services without a config.linkerd.io/opaque-ports annotation, as
	// Linkerd's controller flag of that name ("3306,5432,8000-8100"). Nil
	// means Linkerd's default, DefaultOpaquePorts; "" means none.
	DefaultOpaquePorts *string
}

// rawConfig is the YAML form of Config.
type rawConfig struct {
	Kubeconfig            string   `yaml:"kubeconfig"`
	Context               string   `yaml:"context"`
	Cluster               string   `yaml:"cluster"`
	ClusterDomain         string   `yaml:"cluster_domain"`
	Namespaces            []string `yaml:"namespaces"`
	LabelSelector         string   `yaml:"label_selector"`
	Identity              string   `yaml:"identity"`
	TrustDomain           string   `yaml:"trust_domain"`
	ControlPlaneNamespace string   `yaml:"control_plane_namespace"`
	IdentityPodSelector   *string  `yaml:"identity_pod_selector"`
	ServeTerminating      bool     `yaml:"serve_terminating"`
	PreferIPv6            bool     `yaml:"prefer_ipv6"`
	NodeZones             *bool    `yaml:"node_zones"`
	DefaultOpaquePorts    *string  `yaml:"default_opaque_ports"`
}

// settings is a validated Config with its defaults applied.
type settings struct {
	restConfig *rest.Config // nil: in-cluster, loaded by Run
	kubeconfig string       // absolute path, for messages
	cluster    string
	namespaces []string // nil: all
	selector   labels.Selector
	nodeZones  bool
	builder    builder
}

// newFromNode is the kind's constructor.
func newFromNode(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
	var raw rawConfig
	if err := discovery.DecodeStrict(node, &raw); err != nil {
		return nil, err
	}
	cfg := Config{
		Kubeconfig:            raw.Kubeconfig,
		Context:               raw.Context,
		Cluster:               raw.Cluster,
		ClusterDomain:         raw.ClusterDomain,
		Namespaces:            raw.Namespaces,
		LabelSelector:         raw.LabelSelector,
		Identity:              IdentityMode(raw.Identity),
		TrustDomain:           raw.TrustDomain,
		ControlPlaneNamespace: raw.ControlPlaneNamespace,
		IdentityPodSelector:   raw.IdentityPodSelector,
		ServeTerminating:      raw.ServeTerminating,
		PreferIPv6:            raw.PreferIPv6,
		NodeZones:             raw.NodeZones,
		DefaultOpaquePorts:    raw.DefaultOpaquePorts,
	}
	src, err := NewSource(cfg, bc)
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return src, nil
}

func configErr(key, format string, args ...any) error {
	return &discovery.ConfigError{Key: key, Err: fmt.Errorf(format, args...)}
}

// validate checks c, applies the defaults and loads the kubeconfig file
// (so `tributary check` reports a broken one). Its error joins a
// *discovery.ConfigError naming the key for every problem found.
func (c Config) validate(bc discovery.BuildContext) (*settings, error) {
	var errs []error
	bad := func(key, format string, args ...any) { errs = append(errs, configErr(key, format, args...)) }
	s := &settings{cluster: c.Cluster, nodeZones: c.NodeZones == nil || *c.NodeZones}
	if s.cluster == "" {
		s.cluster = bc.Name
	}
	if s.cluster == "" {
		bad("cluster", "required when the source has no name")
	} else if len(s.cluster) > 253 || strings.ContainsAny(s.cluster, "\x00\r\n") {
		bad("cluster", "%q: want a short printable name", s.cluster)
	}

	domain := strings.TrimSuffix(strings.ToLower(c.ClusterDomain), ".")
	if domain == "" {
		domain = DefaultClusterDomain
	}
	if msgs := validation.IsDNS1123Subdomain(domain); len(msgs) > 0 {
		bad("cluster_domain", "%q is not a DNS name: %s", c.ClusterDomain, strings.Join(msgs, "; "))
	}

	seen := map[string]bool{}
	for i, ns := range c.Namespaces {
		key := "namespaces[" + strconv.Itoa(i) + "]"
		if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
			bad(key, "%q is not a namespace name: %s", ns, strings.Join(msgs, "; "))
		} else if seen[ns] {
			bad(key, "namespace %q listed twice", ns)
		}
		seen[ns] = true
		s.namespaces = append(s.namespaces, ns)
	}

	s.selector = labels.Everything()
	if c.LabelSelector != "" {
		if sel, err := labels.Parse(c.LabelSelector); err != nil {
			bad("label_selector", "%v", err)
		} else {
			s.selector = sel
		}
	}

	b := builder{
		cluster:          s.cluster,
		domain:           domain,
		mode:             c.Identity,
		trustDomain:      strings.TrimSuffix(strings.ToLower(c.TrustDomain), "."),
		controlNS:        c.ControlPlaneNamespace,
		serveTerminating: c.ServeTerminating,
		preferIPv6:       c.PreferIPv6,
	}
	switch b.mode {
	case "":
		b.mode = IdentityLinkerd
	case IdentityLinkerd, IdentitySPIFFE, IdentityNone:
	default:
		bad("identity", "unknown identity mode %q (want linkerd, spiffe or none)", c.Identity)
	}
	if b.trustDomain == "" {
		b.trustDomain = DefaultTrustDomain
	}
	if !validTrustDomain(b.trustDomain) {
		bad("trust_domain", "%q: want lower-case letters, digits, dots, dashes and underscores", c.TrustDomain)
	}
	if b.controlNS == "" {
		b.controlNS = DefaultControlPlaneNamespace
	}
	if msgs := validation.IsDNS1123Label(b.controlNS); len(msgs) > 0 {
		bad("control_plane_namespace", "%q is not a namespace name: %s", b.controlNS, strings.Join(msgs, "; "))
	}
	switch {
	case c.IdentityPodSelector != nil:
		if sel, err := labels.Parse(*c.IdentityPodSelector); err != nil {
			bad("identity_pod_selector", "%v", err)
		} else {
			b.idSelector = sel
		}
	case b.mode == IdentityLinkerd:
		b.idSelector = labels.SelectorFromSet(labels.Set{LinkerdControlPlaneLabel: b.controlNS})
	default:
		b.idSelector = labels.Everything()
	}
	if b.mode == IdentityNone && c.IdentityPodSelector != nil {
		bad("identity_pod_selector", "has no effect with identity: none")
	}
	opaque := DefaultOpaquePorts
	if c.DefaultOpaquePorts != nil {
		opaque = *c.DefaultOpaquePorts
	}
	for _, part := range strings.Split(opaque, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		if _, _, ok := portRange(part); !ok {
			bad("default_opaque_ports", "%q is not a port or a range of ports", part)
		}
	}
	b.defaultOpaque = portSet(opaque, nil)
	s.builder = b

	if c.Context != "" && c.Kubeconfig == "" {
		bad("context", "needs a kubeconfig (the in-cluster config has no contexts)")
	}
	if c.Kubeconfig != "" {
		path := c.Kubeconfig
		if !filepath.IsAbs(path) {
			path = filepath.Join(bc.BaseDir, path)
		}
		s.kubeconfig = path
		rc, err := loadKubeconfig(path, c.Context)
		if err != nil {
			bad("kubeconfig", "%v", err)
		}
		s.restConfig = rc
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// loadKubeconfig reads a kubeconfig file, as kubectl --kubeconfig would.
func loadKubeconfig(path, context string) (*rest.Config, error) {
	loader := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: context}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(loader, overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rc, nil
}

// validTrustDomain follows the SPIFFE trust domain rules.
func validTrustDomain(td string) bool {
	if td == "" || len(td) > 255 {
		return false
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
