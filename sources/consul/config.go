package consul

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

// Defaults of the kind's keys.
const (
	DefaultAddress             = "127.0.0.1:8500"
	DefaultAuthority           = "{{.Service}}.service.{{.Datacenter}}.consul"
	DefaultTagAuthority        = "{{.Tag}}.{{.Service}}.service.{{.Datacenter}}.consul"
	DefaultWait                = 5 * time.Minute
	DefaultMaxWatches          = 150
	DefaultOverflowConcurrency = 8
	DefaultOverflowMinInterval = time.Second
	DefaultOverflowResync      = 5 * time.Minute
	DefaultBackoffInitial      = time.Second
	DefaultBackoffMax          = 30 * time.Second

	// MaxWait is Consul's own bound on a blocking query's wait.
	MaxWait = 10 * time.Minute
	// consulConnLimit is the agent's default limits.http_max_conns_per_client.
	consulConnLimit = 200
)

// Config is a consul source's own configuration, as decoded from YAML.
// The zero value of each optional field means its default.
type Config struct {
	// Address of the Consul agent's HTTP API: host:port, http://host:port,
	// https://host:port or unix:///path. Default DefaultAddress, or
	// CONSUL_HTTP_ADDR when set.
	Address string `yaml:"address"`
	// Datacenters to discover; empty means the agent's own.
	Datacenters []string `yaml:"datacenters"`
	// Token is the ACL token; TokenFile a file holding it (read when the
	// source is built). At most one of the two.
	Token     string     `yaml:"token"`
	TokenFile string     `yaml:"token_file"`
	TLS       *TLSConfig `yaml:"tls"`
	// Namespace and Partition (Consul Enterprise) are passed through when set.
	Namespace string `yaml:"namespace"`
	Partition string `yaml:"partition"`

	// Services limits discovery to these service names; each entry is an
	// exact name or a path.Match pattern (web-*). Empty: every service.
	Services []string `yaml:"services"`
	// Tags keeps only instances that carry every one of these tags.
	Tags []string `yaml:"tags"`
	// Filter is a Consul filter expression applied to the catalog's
	// service list (/v1/catalog/services, ServiceNode fields).
	Filter string `yaml:"filter"`
	// InstanceFilter is a Consul filter expression applied to each
	// service's instances (/v1/health/service, ServiceEntry fields).
	InstanceFilter string `yaml:"instance_filter"`

	// AllowStale lets any server answer (default true).
	AllowStale *bool `yaml:"allow_stale"`
	// WarningIsHealthy serves instances whose worst check is warning
	// (default true, as Consul's DNS does).
	WarningIsHealthy *bool `yaml:"warning_is_healthy"`
	// ConnectEndpoints serves each service's Connect-capable endpoints
	// (sidecar proxies and Connect-native instances) instead of its
	// instances.
	ConnectEndpoints bool `yaml:"connect_endpoints"`
	// TrustDomain of Connect identities; default: read from the agent's
	// CA roots.
	TrustDomain string `yaml:"trust_domain"`

	Zone   ZoneConfig   `yaml:"zone"`
	Naming NamingConfig `yaml:"naming"`

	// Wait is a blocking query's wait (default 5m, at most 10m); each
	// query waits a random 90–100% of it.
	Wait *discovery.Duration `yaml:"wait"`
	// MaxWatches bounds the services watched with their own blocking
	// query (default 150).
	MaxWatches *int `yaml:"max_watches"`
	// WatchFirst names services that get a watch before any other.
	WatchFirst []string       `yaml:"watch_first"`
	Overflow   OverflowConfig `yaml:"overflow"`
	Backoff    BackoffConfig  `yaml:"backoff"`
}

// TLSConfig is the tls: block. Setting it makes the default scheme https.
type TLSConfig struct {
	CAFile             string `yaml:"ca_file"`
	CAPath             string `yaml:"ca_path"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// ZoneConfig names the metadata key that holds an endpoint's zone. The
// service's meta wins over the node's when both are set and present.
type ZoneConfig struct {
	NodeMeta    string `yaml:"node_meta"`
	ServiceMeta string `yaml:"service_meta"`
}

// NamingConfig maps Consul names to authorities with text/template
// templates over .Service .Datacenter .Namespace .Partition .Port (.Tag).
type NamingConfig struct {
	Authority    string `yaml:"authority"`
	TagAuthority string `yaml:"tag_authority"`
	// TagSubsets lists the tags that get a subset authority; ["*"] (the
	// default) means every tag, [] none.
	TagSubsets *[]string `yaml:"tag_subsets"`
}

// OverflowConfig tunes how services beyond max_watches are refreshed.
type OverflowConfig struct {
	Concurrency    *int                `yaml:"concurrency"`
	MinInterval    *discovery.Duration `yaml:"min_interval"`
	ResyncInterval *discovery.Duration `yaml:"resync_interval"`
}

// BackoffConfig bounds the retry delay after a failed request.
type BackoffConfig struct {
	Initial *discovery.Duration `yaml:"initial"`
	Max     *discovery.Duration `yaml:"max"`
}

// nameData is what the naming templates see.
type nameData struct {
	Service    string
	Datacenter string
	Namespace  string
	Partition  string
	Tag        string
	Port       int
}

// settings is a validated Config with its defaults applied.
type settings struct {
	api         api.Config // Address, Scheme, Token, TLSConfig, Namespace, Partition
	datacenters []string

	exact    map[string]bool // Services entries without pattern characters
	patterns []string        // the others
	tags     []string
	filter   string
	instFilt string

	allowStale       bool
	warningIsHealthy bool
	connect          bool
	trustDomain      string

	zoneNode, zoneService string

	authority     *template.Template
	authorityPort bool // the authority template uses .Port
	tagAuthority  *template.Template
	allTags       bool
	subsetTags    map[string]bool

	wait                time.Duration
	maxWatches          int
	watchFirst          map[string]bool
	overflowConcurrency int
	overflowMinInterval time.Duration
	overflowResync      time.Duration
	backoffInitial      time.Duration
	backoffMax          time.Duration
}

// maxConns is the most HTTP connections the source opens to the agent: a
// watch each, the overflow fetches, a catalog query and a checks query per
// non-passing state per datacenter, and one for the occasional bootstrap
// request.
func (s *settings) maxConns() int {
	dcs := max(len(s.datacenters), 1)
	return s.maxWatches + s.overflowConcurrency + (1+len(nonPassing))*dcs + 1
}

// newFromNode is the kind's constructor: it decodes the kind's keys
// strictly and builds the source.
func newFromNode(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
	var cfg Config
	if err := discovery.DecodeStrict(node, &cfg); err != nil {
		return nil, err
	}
	src, err := NewSource(cfg, bc)
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return src, nil
}

// validate checks cfg and applies defaults. Relative file paths resolve
// against baseDir. Every problem is reported, each a *discovery.ConfigError
// naming its key. The steps: how to reach the agent (address, TLS, token),
// what to read (datacenters, services, tags, health, identities), how to
// name it (naming), and how much to hold open (wait, watches, overflow,
// backoff).
func (cfg Config) validate(baseDir string) (*settings, error) {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, &discovery.ConfigError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	s := &settings{}
	s.connection(cfg, baseDir, fail)
	s.selection(cfg, fail)
	s.naming(cfg, fail)
	s.budget(cfg, fail)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// failFunc records a problem with a key of the config.
type failFunc = func(key, format string, args ...any)

// connection sets how the source reaches the agent: address and scheme,
// TLS, the ACL token, namespace and partition.
func (s *settings) connection(cfg Config, baseDir string, fail failFunc) {
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(baseDir, p)
	}

	// The consul/api defaults read the consul CLI's environment variables
	// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, …); what the
	// file says wins over them.
	def := api.DefaultNonPooledConfig()
	s.api = api.Config{
		Address:   def.Address,
		Scheme:    def.Scheme,
		Token:     def.Token,
		TLSConfig: def.TLSConfig,
		Namespace: def.Namespace,
		Partition: def.Partition,
	}
	if os.Getenv(api.HTTPAddrEnvName) == "" {
		s.api.Address = DefaultAddress // not consul/api's localhost, which may resolve to ::1 first
	}

	if cfg.Address != "" {
		scheme, addr, err := parseAddress(cfg.Address)
		if err != nil {
			fail("address", "%v", err)
		}
		s.api.Address = addr
		switch {
		case scheme != "":
			s.api.Scheme = scheme
		case cfg.TLS != nil:
			s.api.Scheme = "https"
		default:
			s.api.Scheme = "http"
		}
		if scheme == "http" && cfg.TLS != nil {
			fail("tls", "tls is set but address %q says http://", cfg.Address)
		}
	} else if cfg.TLS != nil {
		s.api.Scheme = "https"
	}
	if cfg.TLS != nil {
		s.api.TLSConfig = tlsConfig(cfg.TLS, resolve, fail)
	}

	switch {
	case cfg.Token != "" && cfg.TokenFile != "":
		fail("token_file", "give token or token_file, not both")
	case cfg.TokenFile != "":
		b, err := os.ReadFile(resolve(cfg.TokenFile))
		switch {
		case err != nil:
			fail("token_file", "%v", err)
		case strings.TrimSpace(string(b)) == "":
			fail("token_file", "%s is empty", cfg.TokenFile)
		default:
			s.api.Token = strings.TrimSpace(string(b))
		}
	case cfg.Token != "":
		s.api.Token = cfg.Token
	}
	if cfg.Namespace != "" {
		s.api.Namespace = cfg.Namespace
	}
	if cfg.Partition != "" {
		s.api.Partition = cfg.Partition
	}
}

// tlsConfig checks the tls keys (the files must exist and load) and
// returns them for consul/api, paths resolved.
func tlsConfig(t *TLSConfig, resolve func(string) string, fail failFunc) api.TLSConfig {
	if (t.CertFile == "") != (t.KeyFile == "") {
		fail("tls", "cert_file and key_file go together (a client certificate needs its key)")
	}
	for key, p := range map[string]string{"tls.ca_file": t.CAFile, "tls.cert_file": t.CertFile, "tls.key_file": t.KeyFile, "tls.ca_path": t.CAPath} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(resolve(p)); err != nil {
			fail(key, "%v", err)
		}
	}
	c := api.TLSConfig{
		CAFile:             resolve(t.CAFile),
		CAPath:             resolve(t.CAPath),
		CertFile:           resolve(t.CertFile),
		KeyFile:            resolve(t.KeyFile),
		Address:            t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify,
	}
	if _, err := api.SetupTLSConfig(&c); err != nil {
		fail("tls", "%v", err)
	}
	return c
}

// selection sets what the source reads: datacenters, services, tags and
// filters, the health policy, Connect identities and zones.
func (s *settings) selection(cfg Config, fail failFunc) {
	seenDC := map[string]bool{}
	for i, dc := range cfg.Datacenters {
		key := "datacenters[" + strconv.Itoa(i) + "]"
		switch {
		case !isDatacenterName(dc):
			fail(key, "%q is not a datacenter name (letters, digits, - and _)", dc)
		case seenDC[dc]:
			fail(key, "%q listed twice", dc)
		default:
			seenDC[dc] = true
			s.datacenters = append(s.datacenters, dc)
		}
	}

	s.exact = map[string]bool{}
	for i, name := range cfg.Services {
		key := "services[" + strconv.Itoa(i) + "]"
		if name == "" {
			fail(key, "empty service name")
			continue
		}
		if _, err := path.Match(name, ""); err != nil {
			fail(key, "%q: %v", name, err)
			continue
		}
		if strings.ContainsAny(name, `*?[\`) {
			s.patterns = append(s.patterns, name)
		} else {
			s.exact[name] = true
		}
	}
	for i, tag := range cfg.Tags {
		if tag == "" {
			fail("tags["+strconv.Itoa(i)+"]", "empty tag")
		}
	}
	s.tags = cfg.Tags
	s.filter, s.instFilt = cfg.Filter, cfg.InstanceFilter

	s.allowStale = cfg.AllowStale == nil || *cfg.AllowStale
	s.warningIsHealthy = cfg.WarningIsHealthy == nil || *cfg.WarningIsHealthy
	s.connect = cfg.ConnectEndpoints
	if cfg.TrustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
		if err != nil {
			fail("trust_domain", "%q: %v", cfg.TrustDomain, err)
		} else {
			s.trustDomain = td.Name()
		}
	}
	s.zoneNode, s.zoneService = cfg.Zone.NodeMeta, cfg.Zone.ServiceMeta
}

// naming sets the templates that name services and tag subsets, checked on
// sample services so that a template that cannot tell services apart fails
// here rather than merging them.
func (s *settings) naming(cfg Config, fail failFunc) {
	s.authority = parseNaming(cfg.Naming.Authority, DefaultAuthority, "naming.authority", false, fail)
	if s.authority != nil {
		a, errA := render(s.authority, sample("web", "", 8080))
		b, errB := render(s.authority, sample("api", "", 9090))
		c, _ := render(s.authority, sample("web", "", 9090))
		switch {
		case errA != nil || errB != nil:
			fail("naming.authority", "%v", errors.Join(errA, errB))
		case a == b:
			fail("naming.authority", "%q gives every service the same authority: use {{.Service}}", cfg.Naming.Authority)
		default:
			s.authorityPort = a != c
		}
	}
	s.allTags = true
	if cfg.Naming.TagSubsets != nil {
		s.allTags = false
		s.subsetTags = map[string]bool{}
		for i, tag := range *cfg.Naming.TagSubsets {
			key := "naming.tag_subsets[" + strconv.Itoa(i) + "]"
			switch {
			case tag == "*":
				s.allTags = true
			case !subsetTag.MatchString(tag):
				fail(key, "%q cannot be part of a name: a subset tag is letters, digits, - and _ (at most 63)", tag)
			default:
				s.subsetTags[tag] = true
			}
		}
	}
	if s.allTags || len(s.subsetTags) > 0 || cfg.Naming.TagAuthority != "" {
		s.tagAuthority = parseNaming(cfg.Naming.TagAuthority, DefaultTagAuthority, "naming.tag_authority", true, fail)
		if s.tagAuthority != nil {
			a, errA := render(s.tagAuthority, sample("web", "v1", 8080))
			b, errB := render(s.tagAuthority, sample("web", "v2", 8080))
			c, errC := render(s.tagAuthority, sample("api", "v1", 8080))
			switch {
			case errA != nil || errB != nil || errC != nil:
				fail("naming.tag_authority", "%v", errors.Join(errA, errB, errC))
			case a == b || a == c:
				fail("naming.tag_authority", "%q must use both {{.Tag}} and {{.Service}}", cfg.Naming.TagAuthority)
			}
		}
	}
	if !s.allTags && len(s.subsetTags) == 0 {
		s.tagAuthority = nil
	}
}

// budget sets how much the source holds open and how often it asks: the
// blocking wait, the watches and the overflow that refreshes the rest, and
// the retry backoff.
func (s *settings) budget(cfg Config, fail failFunc) {
	s.wait = DefaultWait
	if cfg.Wait != nil {
		s.wait = time.Duration(*cfg.Wait)
		if s.wait < time.Second || s.wait > MaxWait {
			fail("wait", "%s: want from 1s to %s (Consul's own bound)", s.wait, MaxWait)
		}
	}
	s.maxWatches = DefaultMaxWatches
	if cfg.MaxWatches != nil {
		s.maxWatches = *cfg.MaxWatches
		if s.maxWatches < 0 {
			fail("max_watches", "%d: must not be negative (0 refreshes every service through the overflow)", s.maxWatches)
		}
	}
	s.watchFirst = map[string]bool{}
	for _, n := range cfg.WatchFirst {
		s.watchFirst[n] = true
	}
	s.overflowConcurrency = DefaultOverflowConcurrency
	if c := cfg.Overflow.Concurrency; c != nil {
		s.overflowConcurrency = *c
		if *c < 1 || *c > 64 {
			fail("overflow.concurrency", "%d: want 1 to 64", *c)
		}
	}
	s.overflowMinInterval = durationOr(cfg.Overflow.MinInterval, DefaultOverflowMinInterval)
	s.overflowResync = durationOr(cfg.Overflow.ResyncInterval, DefaultOverflowResync)
	if s.overflowResync <= 0 {
		fail("overflow.resync_interval", "must be positive")
	}
	s.backoffInitial = durationOr(cfg.Backoff.Initial, DefaultBackoffInitial)
	s.backoffMax = durationOr(cfg.Backoff.Max, DefaultBackoffMax)
	if s.backoffInitial <= 0 {
		fail("backoff.initial", "must be positive")
	}
	if s.backoffMax < s.backoffInitial {
		fail("backoff.max", "%s is less than backoff.initial %s", s.backoffMax, s.backoffInitial)
	}
}

var (
	subsetTag  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
	datacenter = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

func isDatacenterName(s string) bool { return datacenter.MatchString(s) }

func durationOr(d *discovery.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return time.Duration(*d)
}

// parseAddress splits an address into its scheme ("" when not given) and
// what consul/api wants as Address.
func parseAddress(s string) (scheme, addr string, err error) {
	if strings.HasPrefix(s, "unix://") {
		if len(s) == len("unix://") {
			return "", "", fmt.Errorf("%q names no socket", s)
		}
		return "", s, nil
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", "", fmt.Errorf("%q: %v", s, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return "", "", fmt.Errorf("%q: the scheme must be http, https or unix", s)
		}
		if u.Host == "" || u.RawQuery != "" || u.User != nil {
			return "", "", fmt.Errorf("%q: want scheme://host:port", s)
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			return "", "", fmt.Errorf("%q: want a host:port (%v)", s, err)
		}
		// consul/api splits the scheme and a path prefix off itself.
		return u.Scheme, s, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", "", fmt.Errorf("%q: want host:port or http(s)://host:port (%v)", s, err)
	}
	return "", s, nil
}

// parseNaming parses a naming template (def when text is empty).
func parseNaming(text, def, key string, tag bool, fail func(string, string, ...any)) *template.Template {
	if text == "" {
		text = def
	}
	t, err := template.New(key).Option("missingkey=error").Parse(text)
	if err != nil {
		fail(key, "%v", err)
		return nil
	}
	if _, err := render(t, sample("web", "v1", 8080)); err != nil {
		fail(key, "%v", err)
		return nil
	}
	return t
}

// sample is what a naming template is tried on when the config is read.
func sample(service, tag string, port int) nameData {
	return nameData{Service: service, Datacenter: "dc1", Namespace: "default", Partition: "default", Tag: tag, Port: port}
}

// render executes a naming template and parses the result as an authority.
func render(t *template.Template, d nameData) (discovery.Authority, error) {
	var b strings.Builder
	if err := t.Execute(&b, d); err != nil {
		return discovery.Authority{}, err
	}
	return discovery.ParseAuthority(b.String(), 0)
}
