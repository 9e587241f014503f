package discovery

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"
)

// MaxStartupTimeout bounds server.startup_timeout: the proxy gives up on a
// Get whose first message takes 3s, so the wait for sources must end before.
const MaxStartupTimeout = 3 * time.Second

// Config is Tributary's configuration file, parsed and validated.
//
//	server:
//	  listen: 127.0.0.1:8086      # destination gRPC API
//	  admin: 127.0.0.1:9996       # admin HTTP
//	  startup_timeout: 2s         # how long a Get waits for every source to sync (< 3s)
//	  shutdown_timeout: 10s       # graceful drain bound
//	  log_level: info             # debug | info | warn | error
//	  log_format: text            # text | json
//	sources:
//	  - name: local               # unique, [a-z0-9][a-z0-9._/-]*
//	    kind: file                # a registered kind
//	    priority: 0               # higher wins an address conflict
//	    stale_after: 0s           # 0: keep a failed source's data forever
//	    deletion_guard:           # hold a hand-over that withdraws most endpoints
//	      max_withdraw: 50%
//	      confirm_for: 30s        # 0s turns the guard off
//	      min_endpoints: 10
//	    health_check:             # active checks (docs/health.md)
//	      type: tcp               # tcp | http | grpc | none
//	      services:
//	        "web.demo:8080": {type: http, path: /healthz}
//	    # … the kind's own keys
//	health:
//	  panic_threshold: 50%        # serve everything when fewer are serving
//	  max_concurrent_checks: 512
//	federation:
//	  - authority: web.demo:8080  # a bare host applies to every port
//	    aliases: [web.service.dc1.consul:80]
//	    panic_threshold: 30%      # default: health.panic_threshold
//	    failover:
//	      - sources: [east]
//	        min_healthy: 2        # default 1
//	      - sources: [west]
type Config struct {
	Server     ServerConfig
	Sources    []SourceConfig
	Federation []FederationRule
	// Health holds the process-wide health settings (the health: section).
	Health HealthConfig

	// File is the path the config was loaded from, as given ("" when parsed
	// from bytes without a name). Errors name it.
	File string
	// BaseDir is the folder of File; relative paths in source configs
	// resolve against it. LoadConfig makes it absolute.
	BaseDir string
}

// ServerConfig is the server: section.
type ServerConfig struct {
	// Listen is the destination gRPC API address, host:port.
	Listen string `yaml:"listen"`
	// Admin is the admin HTTP address, host:port.
	Admin string `yaml:"admin"`
	// StartupTimeout bounds how long a Get waits for every source to sync
	// before its first answer. Less than MaxStartupTimeout; 0 does not wait.
	StartupTimeout Duration `yaml:"startup_timeout"`
	// ShutdownTimeout bounds the graceful drain; 0 stops at once.
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`
	// Keepalive is the destination API's HTTP/2 keepalive and ping policy;
	// nil when the section is absent: KeepaliveSettings has the defaults.
	Keepalive *KeepaliveConfig `yaml:"keepalive"`
	// TLS, when set, makes the destination API speak TLS only and
	// authorize every call by the client's SPIFFE ID (docs/operations.md,
	// "Security"); nil (no tls section) serves plaintext.
	TLS *TLSConfig `yaml:"tls"`
	// Streams bounds what clients can cost: admission of new streams and
	// the time a client may stop reading; nil means the defaults (0 values
	// in the section mean the destination package's defaults too).
	Streams *StreamsConfig `yaml:"streams"`
}

// StreamsConfig is server.streams.
type StreamsConfig struct {
	// SendTimeout: a client that takes no update for this long has its
	// connection closed (it reconnects for a fresh snapshot). 0: the
	// default (30s); negative is refused — use a large value instead.
	SendTimeout Duration `yaml:"send_timeout"`
	// NewPerSecond and NewBurst rate-limit new streams (ResourceExhausted
	// with a retry delay beyond them). 0: the defaults (20000/s, 20000);
	// NewPerSecond -1 disables the limit.
	NewPerSecond float64 `yaml:"new_per_second"`
	NewBurst     int     `yaml:"new_burst"`
	// Max bounds open streams (ResourceExhausted with a retry delay
	// beyond it). 0: the default (150000, sized from the memory of an idle
	// stream); -1: no bound.
	Max int `yaml:"max"`
	// MaxPerConnection bounds the concurrent streams of one client
	// connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; a client over it
	// waits for a free slot). 0: the default (2000); -1: no bound.
	MaxPerConnection int `yaml:"max_per_connection"`
	// MaxHeaderBytes bounds a request's header list (HTTP/2
	// SETTINGS_MAX_HEADER_LIST_SIZE: names + values + 32 bytes a field);
	// a stream over it is reset before it reaches the server. 0: the
	// default (16 KiB); else from 1 KiB to 16 MiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
}

// DefaultKeepalive is the keepalive of a config without server.keepalive.
func DefaultKeepalive() KeepaliveConfig {
	return KeepaliveConfig{
		Time:            Duration(30 * time.Second),
		Timeout:         Duration(10 * time.Second),
		MinPingInterval: Duration(10 * time.Second),
	}
}

// KeepaliveSettings is Keepalive, or DefaultKeepalive when it is nil.
func (s ServerConfig) KeepaliveSettings() KeepaliveConfig {
	if s.Keepalive == nil {
		return DefaultKeepalive()
	}
	return *s.Keepalive
}

// DefaultTLSReloadInterval is server.tls.reload_interval when not set.
const DefaultTLSReloadInterval = time.Minute

// KeepaliveConfig is server.keepalive; a key left out takes its value from
// DefaultKeepalive.
type KeepaliveConfig struct {
	// Time: a connection with no activity for this long is pinged. At
	// least 1s.
	Time Duration `yaml:"time"`
	// Timeout: a connection whose ping is not answered within this is
	// closed, which ends its streams (a half-open connection is reaped).
	Timeout Duration `yaml:"timeout"`
	// MinPingInterval: a client that pings more often than this is sent
	// GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and disconnected (after
	// gRPC's allowance of two such pings).
	MinPingInterval Duration `yaml:"min_ping_interval"`
}

// TLSConfig is server.tls: where the server's certificate and the trust
// bundles come from, and who may call which API.
type TLSConfig struct {
	// WorkloadAPI is the SPIFFE Workload API address (unix:///path or
	// tcp://ip:port); the server's X.509-SVID and the trust bundles come
	// from it and rotate as the agent pushes new ones. Excludes the files.
	WorkloadAPI string `yaml:"workload_api"`
	// CertFile (certificate chain, leaf first), KeyFile and CAFile (the CAs
	// trusted to sign client certificates) are PEM files, all three
	// required without WorkloadAPI. Relative paths resolve against the
	// config file's folder. They are watched and re-read when they change.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
	// ReloadInterval re-reads the files this often besides watching them;
	// DefaultTLSReloadInterval when not set.
	ReloadInterval Duration `yaml:"reload_interval"`
	// Admin makes the admin HTTP server speak TLS with the same
	// certificate and require an authorized client certificate, except on
	// /healthz and /readyz.
	Admin bool `yaml:"admin"`
	// TrustDomains may call every API that has no access list of its own;
	// empty means the trust domain of the server's own SPIFFE ID.
	TrustDomains []string `yaml:"trust_domains"`
	// Authorize holds the per-API access lists.
	Authorize TLSAuthorize `yaml:"authorize"`
}

// TLSAuthorize is server.tls.authorize: one access list per API.
type TLSAuthorize struct {
	// Destination: Get and GetProfile.
	Destination APIAccess `yaml:"destination"`
	// Admin: the admin HTTP endpoints (with tls.admin) and gRPC reflection.
	Admin APIAccess `yaml:"admin"`
	// Registration: reserved for the registration API.
	Registration APIAccess `yaml:"registration"`
}

// APIAccess is who may call one API: a peer whose trust domain is listed
// or whose SPIFFE ID matches one of the ID patterns. With both lists empty,
// TLSConfig.TrustDomains apply. An ID pattern is a SPIFFE ID in which a
// whole path segment may be "*" (exactly one segment) and the last one
// "**" (one or more segments): spiffe://prod.example/ns/*/sa/web,
// spiffe://prod.example/ops/**.
type APIAccess struct {
	TrustDomains []string `yaml:"trust_domains"`
	IDs          []string `yaml:"ids"`
}

// DefaultServerConfig is the server section of a config that leaves it out.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		Listen:          "127.0.0.1:8086",
		Admin:           "127.0.0.1:9996",
		StartupTimeout:  Duration(2 * time.Second),
		ShutdownTimeout: Duration(10 * time.Second),
		LogLevel:        "info",
		LogFormat:       "text",
	}
}

// SlogLevel is LogLevel as a slog.Level (info for anything unknown).
func (s ServerConfig) SlogLevel() slog.Level {
	switch s.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// SourceConfig is one entry of sources:.
type SourceConfig struct {
	Name string
	Kind string
	// Priority settles an address that several sources serve for one
	// authority: the highest wins. Default 0.
	Priority int
	// StaleAfter bounds how long a failing source's data is trusted: once
	// its last successful contact is older, the manager withdraws its
	// endpoints, and re-applies its whole state when it recovers. 0 keeps
	// a failed source's data forever.
	StaleAfter Duration
	// DeletionGuard holds a hand-over that would withdraw most of the
	// source's endpoints at once until it is confirmed.
	DeletionGuard DeletionGuard
	// HealthCheck is the source's active health checking; nil when the
	// source has no health_check block.
	HealthCheck *HealthCheckConfig
	// Line is where the entry starts in the file.
	Line int
	// Node holds the kind's own keys only: a copy of the entry's mapping
	// without the common keys (name, kind, priority, stale_after,
	// deletion_guard, health_check). Kind.New decodes it.
	Node *yaml.Node
}

// DeletionGuard is a source's mass-deletion guard: when one hand-over
// would withdraw more than MaxWithdraw of the endpoints the source has in
// the registry, the manager holds it for ConfirmFor and applies it only if
// no newer hand-over undoes it by then. A newer hand-over merges into the
// held one (the newest group of a key wins) and the guard looks again.
type DeletionGuard struct {
	// MaxWithdraw is the share (0..1) of the source's endpoints one
	// hand-over may withdraw without being held.
	MaxWithdraw float64
	// ConfirmFor is how long a held hand-over waits; 0 turns the guard off.
	ConfirmFor time.Duration
	// MinEndpoints: a source holding fewer endpoints is not guarded (a
	// share of a handful of endpoints says nothing).
	MinEndpoints int
}

// DefaultDeletionGuard is the guard of a source that does not configure one.
func DefaultDeletionGuard() DeletionGuard {
	return DeletionGuard{MaxWithdraw: 0.5, ConfirmFor: 30 * time.Second, MinEndpoints: 10}
}

// Enabled reports whether the guard can hold anything.
func (g DeletionGuard) Enabled() bool { return g.ConfirmFor > 0 && g.MaxWithdraw < 1 }

// HealthConfig is the health: section: settings that apply to every
// source and authority.
type HealthConfig struct {
	// PanicThreshold: when fewer than this share (0..1) of an authority's
	// endpoints are serving, all of them are served rather than evicting
	// most of the service. A federation rule may override it; 0 disables.
	PanicThreshold float64
	// MaxConcurrentChecks bounds the active health checks in flight, for
	// all sources together.
	MaxConcurrentChecks int
}

// DefaultPanicThreshold is the panic threshold of an authority no setting names.
const DefaultPanicThreshold = 0.5

// DefaultMaxConcurrentChecks is the default bound of health checks in flight.
const DefaultMaxConcurrentChecks = 512

// DefaultHealthConfig is the health section of a config that leaves it out.
func DefaultHealthConfig() HealthConfig {
	return HealthConfig{PanicThreshold: DefaultPanicThreshold, MaxConcurrentChecks: DefaultMaxConcurrentChecks}
}

// FederationRule is one entry of federation:.
type FederationRule struct {
	// Authority is what clients ask for. Port 0 (written as a bare host)
	// makes the rule apply to every port.
	Authority Authority
	// Aliases are other authorities whose endpoints also serve Authority.
	// An alias without a port takes the port asked for.
	Aliases []Authority
	// Failover is the ordered tiers; empty means a plain union.
	Failover []Tier
	// PanicThreshold overrides the global panic threshold (a share, 0..1)
	// for this authority; nil inherits it.
	PanicThreshold *float64
	// Line is where the rule starts in the file.
	Line int
}

// Tier is one failover tier: the sources it draws from and how many
// serving endpoints it needs to be used.
type Tier struct {
	Sources    []string
	MinHealthy int
}

// Instance is a configured source, built and ready to run.
type Instance struct {
	Config SourceConfig
	Source Source
}

// LoadConfig reads and parses the config file at path. File is path as
// given; BaseDir is its folder, made absolute. A file that cannot be read is
// the os error, unwrapped (errors.Is(err, fs.ErrNotExist) works).
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(data, path)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, &ConfigError{File: path, Err: err}
	}
	c.BaseDir = dir
	return c, nil
}

// ParseConfig parses and validates a config; file names it in errors and
// sets File and BaseDir. Defaults are applied. Every problem found is
// reported: the error is an errors.Join of *ConfigError sorted by line, each
// printing as "file:line: key: message".
//
// Kind-specific keys of a source are not looked at here: BuildSources hands
// them to the kind.
func ParseConfig(data []byte, file string) (*Config, error) {
	c := &Config{Server: DefaultServerConfig(), Health: DefaultHealthConfig(), File: file}
	if file != "" {
		c.BaseDir = filepath.Dir(file)
	}
	root, err := parseDocument(data)
	if err != nil {
		return nil, WithFile(err, file)
	}
	p := &configParser{c: c}
	p.parse(root)
	if err := joinConfigErrors(p.errs); err != nil {
		return nil, WithFile(err, file)
	}
	return c, nil
}

// parseDocument reads exactly one YAML document; nil for an empty one.
func parseDocument(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, yamlSyntaxError(err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, yamlSyntaxError(err)
	default:
		return nil, &ConfigError{Line: next.Line, Err: errors.New("more than one YAML document; a config is one document")}
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil, nil
		}
		return doc.Content[0], nil
	}
	return &doc, nil
}

// yamlSyntaxError turns yaml.v3's "yaml: line N: msg" into a ConfigError.
func yamlSyntaxError(err error) error {
	line, msg := splitYAMLLine(err.Error())
	return &ConfigError{Line: line, Err: errors.New(strings.TrimPrefix(msg, "yaml: "))}
}

type configParser struct {
	c       *Config
	errs    []*ConfigError
	aliases []aliasRef // every valid alias written, for crossCheckAliases
}

type aliasRef struct {
	rule  Authority
	alias Authority
	line  int
	key   string
}

func (p *configParser) fail(line int, key, format string, args ...any) {
	p.errs = append(p.errs, &ConfigError{Line: line, Key: key, Err: fmt.Errorf(format, args...)})
}

// rawConfig is the top level; sources and rules are decoded one by one so
// each keeps its node (kind keys, lines) whatever happens to the others.
type rawConfig struct {
	Server     ServerConfig   `yaml:"server"`
	Sources    []yaml.Node    `yaml:"sources"`
	Federation []yaml.Node    `yaml:"federation"`
	Health     rawHealthGroup `yaml:"health"`
}

type rawHealthGroup struct {
	PanicThreshold      *Percent `yaml:"panic_threshold"`
	MaxConcurrentChecks *int     `yaml:"max_concurrent_checks"`
}

type rawSource struct {
	Name          string                  `yaml:"name"`
	Kind          string                  `yaml:"kind"`
	Priority      int                     `yaml:"priority"`
	StaleAfter    Duration                `yaml:"stale_after"`
	DeletionGuard *rawDeletionGuard       `yaml:"deletion_guard"`
	HealthCheck   *rawHealthCheckSettings `yaml:"health_check"`
	Own           map[string]yaml.Node    `yaml:",inline"` // the kind's keys, checked by the kind
}

type rawDeletionGuard struct {
	MaxWithdraw  *Percent  `yaml:"max_withdraw"`
	ConfirmFor   *Duration `yaml:"confirm_for"`
	MinEndpoints *int      `yaml:"min_endpoints"`
}

// commonSourceKeys are the keys of a source entry that are not the kind's.
var commonSourceKeys = map[string]bool{
	"name": true, "kind": true, "priority": true, "stale_after": true,
	"deletion_guard": true, "health_check": true,
}

type rawRule struct {
	Authority      string    `yaml:"authority"`
	Aliases        []string  `yaml:"aliases"`
	Failover       []rawTier `yaml:"failover"`
	PanicThreshold *Percent  `yaml:"panic_threshold"`
}

type rawTier struct {
	Sources    []string `yaml:"sources"`
	MinHealthy *int     `yaml:"min_healthy"`
}

func (p *configParser) parse(root *yaml.Node) {
	if root == nil {
		return // an empty file: defaults, no sources
	}
	if root.Kind != yaml.MappingNode {
		if root.ShortTag() != "!!null" {
			p.fail(root.Line, "", "a config must be a mapping (server, sources, federation), got %s", describeNode(root))
		}
		return
	}
	raw := rawConfig{Server: DefaultServerConfig()}
	p.errs = append(p.errs, decodeStrict(root, &raw, "")...)
	p.c.Server = raw.Server
	p.server(lookup(root, "server"))
	p.health(raw.Health, lookup(root, "health"))

	names := map[string]int{} // every source name written → its line, for the federation checks
	for i, n := range seqItems(lookup(root, "sources")) {
		p.source(n, i, names)
	}
	seen := map[Authority]int{}
	for i, n := range seqItems(lookup(root, "federation")) {
		p.rule(n, i, names, seen)
	}
	p.crossCheckAliases(seen)
}

func (p *configParser) server(n *yaml.Node) {
	s := &p.c.Server
	line := func(key string) int { return lineOf(lookup(n, key), n) }
	addr := func(key, v string) {
		_, port, err := net.SplitHostPort(v)
		if err == nil {
			if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
				err = fmt.Errorf("port %q is not a number from 0 to 65535", port)
			}
		}
		if err != nil {
			p.fail(line(key), "server."+key, "%q must be host:port (%v)", v, err)
		}
	}
	addr("listen", s.Listen)
	addr("admin", s.Admin)
	if s.Listen == s.Admin && !strings.HasSuffix(s.Listen, ":0") {
		p.fail(line("admin"), "server.admin", "%q is also server.listen", s.Admin)
	}
	if time.Duration(s.StartupTimeout) >= MaxStartupTimeout {
		p.fail(line("startup_timeout"), "server.startup_timeout",
			"%s is too long: it must be less than %s, the time a proxy waits for a Get's first message", s.StartupTimeout, MaxStartupTimeout)
	}
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		p.fail(line("log_level"), "server.log_level", "unknown level %q (want debug, info, warn or error)", s.LogLevel)
	}
	switch s.LogFormat {
	case "text", "json":
	default:
		p.fail(line("log_format"), "server.log_format", "unknown format %q (want text or json)", s.LogFormat)
	}
	if s.Keepalive != nil {
		p.serverKeepalive(resolveAlias(lookup(n, "keepalive")))
	}
	if s.TLS != nil {
		p.serverTLS(resolveAlias(lookup(n, "tls")))
	}
	if st := s.Streams; st != nil {
		sn := resolveAlias(lookup(n, "streams"))
		sline := func(key string) int { return lineOf(lookup(sn, key), sn) }
		if st.NewPerSecond < 0 && st.NewPerSecond != -1 {
			p.fail(sline("new_per_second"), "server.streams.new_per_second", "must be 0 (default), a positive rate, or -1 (no limit)")
		}
		if st.NewBurst < 0 {
			p.fail(sline("new_burst"), "server.streams.new_burst", "must not be negative")
		}
		if st.Max < -1 {
			p.fail(sline("max"), "server.streams.max", "must be 0 (default), a positive bound, or -1 (no bound)")
		}
		if st.MaxPerConnection < -1 {
			p.fail(sline("max_per_connection"), "server.streams.max_per_connection", "must be 0 (default), a positive bound, or -1 (no bound)")
		}
		if h := st.MaxHeaderBytes; h != 0 && (h < 1<<10 || h > 16<<20) {
			p.fail(sline("max_header_bytes"), "server.streams.max_header_bytes", "%d is out of range: 0 (default, 16 KiB) or from 1024 (a gRPC request's own headers need a few hundred bytes) to 16 MiB", h)
		}
	}
}

// serverKeepalive fills in the keys server.keepalive (node n) leaves out
// and checks the others.
func (p *configParser) serverKeepalive(n *yaml.Node) {
	k := p.c.Server.Keepalive
	def := DefaultKeepalive()
	for _, f := range []struct {
		key    string
		v, def *Duration
	}{{"time", &k.Time, &def.Time}, {"timeout", &k.Timeout, &def.Timeout}, {"min_ping_interval", &k.MinPingInterval, &def.MinPingInterval}} {
		if lookup(n, f.key) == nil {
			*f.v = *f.def
		}
	}
	line := func(key string) int { return lineOf(lookup(n, key), n) }
	if time.Duration(k.Time) < time.Second {
		p.fail(line("time"), "server.keepalive.time", "%s is too short: gRPC pings an idle connection at most once a second", k.Time)
	}
	if k.Timeout <= 0 {
		p.fail(line("timeout"), "server.keepalive.timeout", "must be more than 0s")
	}
	if k.MinPingInterval <= 0 {
		p.fail(line("min_ping_interval"), "server.keepalive.min_ping_interval", "must be more than 0s")
	}
}

// serverTLS checks server.tls (node n) and fills in its defaults.
func (p *configParser) serverTLS(n *yaml.Node) {
	t := p.c.Server.TLS
	if lookup(n, "reload_interval") == nil {
		t.ReloadInterval = Duration(DefaultTLSReloadInterval)
	}
	line := func(node *yaml.Node, key string) int { return lineOf(lookup(node, key), node) }
	files := t.CertFile != "" || t.KeyFile != "" || t.CAFile != ""
	switch {
	case t.WorkloadAPI != "" && files:
		p.fail(line(n, "workload_api"), "server.tls.workload_api", "use either workload_api or cert_file/key_file/ca_file, not both")
	case t.WorkloadAPI != "":
		if !strings.HasPrefix(t.WorkloadAPI, "unix:") && !strings.HasPrefix(t.WorkloadAPI, "tcp://") {
			p.fail(line(n, "workload_api"), "server.tls.workload_api", "%q is not a Workload API address: want unix:///path/to/agent.sock or tcp://ip:port", t.WorkloadAPI)
		}
	default:
		for _, f := range []struct{ key, v string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"ca_file", t.CAFile}} {
			if f.v == "" {
				p.fail(line(n, f.key), "server.tls."+f.key, "required (or workload_api instead of the files)")
			}
		}
	}
	if time.Duration(t.ReloadInterval) < time.Second {
		p.fail(line(n, "reload_interval"), "server.tls.reload_interval", "%s is too short: at least 1s", t.ReloadInterval)
	}
	p.trustDomains(lookup(n, "trust_domains"), n, "server.tls.trust_domains", t.TrustDomains)
	an := lookup(n, "authorize")
	for _, api := range []struct {
		name   string
		access APIAccess
	}{{"destination", t.Authorize.Destination}, {"admin", t.Authorize.Admin}, {"registration", t.Authorize.Registration}} {
		key := "server.tls.authorize." + api.name
		node := lookup(an, api.name)
		p.trustDomains(lookup(node, "trust_domains"), node, key+".trust_domains", api.access.TrustDomains)
		idNodes := seqItems(lookup(node, "ids"))
		for i, id := range api.access.IDs {
			idLine := lineOf(node, n)
			if i < len(idNodes) {
				idLine = idNodes[i].Line
			}
			if err := CheckSPIFFEIDPattern(id); err != nil {
				p.fail(idLine, key+".ids["+strconv.Itoa(i)+"]", "%v", err)
			}
		}
	}
	if !t.Admin && lookup(an, "admin") != nil {
		p.fail(line(an, "admin"), "server.tls.authorize.admin", "has no effect without server.tls.admin: true (the admin endpoints are plain HTTP)")
	}
}

func (p *configParser) trustDomains(n, parent *yaml.Node, key string, tds []string) {
	items := seqItems(n)
	seen := map[string]bool{}
	for i, td := range tds {
		l := lineOf(n, parent)
		if i < len(items) {
			l = items[i].Line
		}
		k := key + "[" + strconv.Itoa(i) + "]"
		if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "/") {
			p.fail(l, k, "%q is not a trust domain name (want e.g. prod.example.org)", td)
		} else if seen[td] {
			p.fail(l, k, "trust domain %q listed twice", td)
		}
		seen[td] = true
	}
}

// CheckSPIFFEIDPattern reports whether s is a valid SPIFFE ID pattern: a
// SPIFFE ID with a non-empty path in which a whole segment may be "*"
// (exactly one segment) and the last segment may be "**" (one or more).
// The trust domain is literal. destination/tlsauth matches them.
func CheckSPIFFEIDPattern(s string) error {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return fmt.Errorf("%q is not a SPIFFE ID pattern: it must start with spiffe://", s)
	}
	td, path, _ := strings.Cut(rest, "/")
	if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "*") {
		return fmt.Errorf("%q: %q is not a trust domain name (wildcards are not allowed there)", s, td)
	}
	if path == "" {
		return fmt.Errorf("%q names a whole trust domain: list it under trust_domains instead", s)
	}
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		switch {
		case seg == "*":
		case seg == "**":
			if i != len(segs)-1 {
				return fmt.Errorf("%q: ** may only be the last segment", s)
			}
		case strings.Contains(seg, "*"):
			return fmt.Errorf("%q: a wildcard must be a whole segment (* or **), not part of %q", s, seg)
		default:
			if err := spiffeid.ValidatePathSegment(seg); err != nil {
				return fmt.Errorf("%q: segment %q: %v", s, seg, err)
			}
		}
	}
	return nil
}

func isSourceName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '/' || c == '-')
		if !ok {
			return false
		}
	}
	return true
}

func (p *configParser) source(n *yaml.Node, i int, names map[string]int) {
	path := "sources[" + strconv.Itoa(i) + "]"
	n = resolveAlias(n)
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, path, "a source must be a mapping with name and kind, got %s", describeNode(n))
		return
	}
	var raw rawSource
	before := len(p.errs)
	p.errs = append(p.errs, decodeStrict(n, &raw, path)...)
	bad := len(p.errs) > before

	nameLine := lineOf(lookup(n, "name"), n)
	switch {
	case raw.Name == "":
		p.fail(nameLine, path+".name", "required")
		bad = true
	case !isSourceName(raw.Name):
		p.fail(nameLine, path+".name", "%q is not a valid source name: want [a-z0-9][a-z0-9._/-]*", raw.Name)
		bad = true
	}
	if raw.Name != "" {
		if first, dup := names[raw.Name]; dup {
			p.fail(nameLine, path+".name", "duplicate source name %q (first at line %d)", raw.Name, first)
			bad = true
		} else {
			names[raw.Name] = nameLine
		}
	}
	kindLine := lineOf(lookup(n, "kind"), n)
	if raw.Kind == "" {
		p.fail(kindLine, path+".kind", "required (known kinds: %s)", knownKinds())
		bad = true
	} else if _, ok := LookupKind(raw.Kind); !ok {
		p.fail(kindLine, path+".kind", "unknown kind %q (known kinds: %s)", raw.Kind, knownKinds())
		bad = true
	}
	if bad {
		return
	}
	own := *n
	own.Content = make([]*yaml.Node, 0, len(n.Content))
	for j := 0; j+1 < len(n.Content); j += 2 {
		if k := n.Content[j]; k.Kind == yaml.ScalarNode && commonSourceKeys[k.Value] {
			continue
		}
		own.Content = append(own.Content, n.Content[j], n.Content[j+1])
	}
	own.Anchor = ""
	guard, ok := p.deletionGuard(raw.DeletionGuard, lookup(n, "deletion_guard"), path+".deletion_guard")
	if !ok {
		return
	}
	var hc *HealthCheckConfig
	if raw.HealthCheck != nil {
		if hc, ok = p.healthCheck(raw.HealthCheck, lookup(n, "health_check"), path+".health_check"); !ok {
			return
		}
	}
	p.c.Sources = append(p.c.Sources, SourceConfig{
		Name:          raw.Name,
		Kind:          raw.Kind,
		Priority:      raw.Priority,
		StaleAfter:    raw.StaleAfter,
		DeletionGuard: guard,
		HealthCheck:   hc,
		Line:          n.Line,
		Node:          &own,
	})
}

func (p *configParser) health(raw rawHealthGroup, n *yaml.Node) {
	h := &p.c.Health
	if raw.PanicThreshold != nil {
		h.PanicThreshold = float64(*raw.PanicThreshold)
	}
	if raw.MaxConcurrentChecks != nil {
		if v := *raw.MaxConcurrentChecks; v < 1 || v > 100000 {
			p.fail(lineOf(lookup(n, "max_concurrent_checks"), n), "health.max_concurrent_checks", "must be from 1 to 100000, got %d", v)
		} else {
			h.MaxConcurrentChecks = v
		}
	}
}

// deletionGuard applies a source's deletion_guard block over the defaults.
func (p *configParser) deletionGuard(raw *rawDeletionGuard, n *yaml.Node, path string) (DeletionGuard, bool) {
	g := DefaultDeletionGuard()
	if raw == nil {
		return g, true
	}
	ok := true
	if raw.MaxWithdraw != nil {
		g.MaxWithdraw = float64(*raw.MaxWithdraw)
	}
	if raw.ConfirmFor != nil {
		g.ConfirmFor = time.Duration(*raw.ConfirmFor)
	}
	if raw.MinEndpoints != nil {
		if *raw.MinEndpoints < 0 {
			p.fail(lineOf(lookup(n, "min_endpoints"), n), path+".min_endpoints", "must not be negative, got %d", *raw.MinEndpoints)
			ok = false
		}
		g.MinEndpoints = *raw.MinEndpoints
	}
	return g, ok
}

func knownKinds() string {
	names := KindNames()
	if len(names) == 0 {
		return "none registered"
	}
	return strings.Join(names, ", ")
}

// rule validates one federation entry. seen maps rule authorities to their lines.
func (p *configParser) rule(n *yaml.Node, i int, names map[string]int, seen map[Authority]int) {
	path := "federation[" + strconv.Itoa(i) + "]"
	n = resolveAlias(n)
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, path, "a federation rule must be a mapping with an authority, got %s", describeNode(n))
		return
	}
	var raw rawRule
	before := len(p.errs)
	p.errs = append(p.errs, decodeStrict(n, &raw, path)...)

	r := FederationRule{Line: n.Line}
	r.Authority = p.ruleAuthority(raw.Authority, n, path, seen)
	r.Aliases = p.ruleAliases(raw.Aliases, r.Authority, n, path)
	r.Failover = p.ruleTiers(raw.Failover, n, path, names)
	if raw.PanicThreshold != nil {
		v := float64(*raw.PanicThreshold)
		r.PanicThreshold = &v
	}
	if len(p.errs) == before {
		p.c.Federation = append(p.c.Federation, r)
	}
}

// ruleAuthority parses a rule's authority, which no other rule may have.
func (p *configParser) ruleAuthority(s string, n *yaml.Node, path string, seen map[Authority]int) Authority {
	line := lineOf(lookup(n, "authority"), n)
	if s == "" {
		p.fail(line, path+".authority", "required")
		return Authority{}
	}
	a, err := ParseAuthority(s, 0)
	if err != nil {
		p.fail(line, path+".authority", "%v", err)
		return Authority{}
	}
	if first, dup := seen[a]; dup {
		p.fail(line, path+".authority", "a second rule for %s (first at line %d)", a, first)
		return Authority{}
	}
	seen[a] = n.Line
	return a
}

// ruleAliases parses a rule's aliases and records them for crossCheckAliases.
func (p *configParser) ruleAliases(list []string, own Authority, n *yaml.Node, path string) []Authority {
	var out []Authority
	nodes := seqItems(lookup(n, "aliases"))
	lines := map[Authority]int{}
	for j, s := range list {
		key := path + ".aliases[" + strconv.Itoa(j) + "]"
		line := n.Line
		if j < len(nodes) {
			line = nodes[j].Line
		}
		a, err := ParseAuthority(s, 0)
		switch {
		case err != nil:
			p.fail(line, key, "%v", err)
		case a == own:
			p.fail(line, key, "%s is the rule's own authority", a)
		case lines[a] != 0:
			p.fail(line, key, "alias %s listed twice (first at line %d)", a, lines[a])
		default:
			lines[a] = line
			out = append(out, a)
			p.aliases = append(p.aliases, aliasRef{rule: own, alias: a, line: line, key: key})
		}
	}
	return out
}

// ruleTiers checks a rule's failover tiers: each has known sources, and a
// source is in one tier only.
func (p *configParser) ruleTiers(raw []rawTier, n *yaml.Node, path string, names map[string]int) []Tier {
	var out []Tier
	nodes := seqItems(lookup(n, "failover"))
	tierOf := map[string]int{}
	for t, rt := range raw {
		key := path + ".failover[" + strconv.Itoa(t) + "]"
		tn := n
		if t < len(nodes) {
			tn = resolveAlias(nodes[t])
		}
		tier := Tier{MinHealthy: 1, Sources: append([]string(nil), rt.Sources...)}
		if rt.MinHealthy != nil {
			if *rt.MinHealthy < 1 {
				p.fail(lineOf(lookup(tn, "min_healthy"), tn), key+".min_healthy", "must be at least 1, got %d", *rt.MinHealthy)
			}
			tier.MinHealthy = *rt.MinHealthy
		}
		if len(rt.Sources) == 0 {
			p.fail(lineOf(lookup(tn, "sources"), tn), key+".sources", "a tier needs at least one source")
		}
		srcNodes := seqItems(lookup(tn, "sources"))
		for k, s := range rt.Sources {
			skey := key + ".sources[" + strconv.Itoa(k) + "]"
			line := tn.Line
			if k < len(srcNodes) {
				line = srcNodes[k].Line
			}
			prev, dup := tierOf[s]
			switch _, known := names[s]; {
			case !known:
				p.fail(line, skey, "unknown source %q", s)
			case dup && prev == t:
				p.fail(line, skey, "source %q listed twice in this tier", s)
			case dup:
				p.fail(line, skey, "source %q is already in failover[%d]; a source belongs to one tier", s, prev)
			default:
				tierOf[s] = t
			}
		}
		out = append(out, tier)
	}
	return out
}

// crossCheckAliases rejects an authority that is both an alias of one rule
// and matched by another rule: aliases are not transitive, so which rule
// governs it would be ambiguous. Matching is as Members does it: an alias
// without a port takes the port asked for, and a bare-host rule matches
// every port of its host.
func (p *configParser) crossCheckAliases(rules map[Authority]int) {
	byHost := map[string][]Authority{}
	for a := range rules {
		byHost[a.Host] = append(byHost[a.Host], a)
	}
	for _, as := range byHost {
		slices.SortFunc(as, func(x, y Authority) int { return cmp.Compare(x.Port, y.Port) })
	}
	for _, ref := range p.aliases {
		port := ref.alias.Port
		if port == 0 {
			port = ref.rule.Port
		}
		for _, other := range byHost[ref.alias.Host] {
			if other == ref.rule || port != 0 && other.Port != 0 && other.Port != port {
				continue
			}
			p.fail(ref.line, ref.key, "%s is also matched by the federation rule for %s (line %d); an authority cannot be both a rule and an alias of another",
				ref.alias, other, rules[other])
			break
		}
	}
}

// lookup returns the value of key in mapping n (nil if absent or n is not a mapping).
func lookup(n *yaml.Node, key string) *yaml.Node {
	n = resolveAlias(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// seqItems returns the items of sequence n (nil if n is not a sequence).
func seqItems(n *yaml.Node) []*yaml.Node {
	n = resolveAlias(n)
	if n == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	return n.Content
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 16; i++ {
		n = n.Alias
	}
	return n
}

// lineOf is n's line, or fallback's when n is nil.
func lineOf(n, fallback *yaml.Node) int {
	if n != nil {
		return n.Line
	}
	if fallback != nil {
		return fallback.Line
	}
	return 0
}

// BuildSources constructs every source through its registered kind. Errors
// of a kind are reported as ConfigErrors in this file: a ConfigError from
// the kind's DecodeStrict keeps its line and gets its key under the source
// (sources[1].paths); any other error is placed at the source's line. All
// sources are tried and every error returned (joined); on error no instance
// is returned. The constructors start nothing, so nothing needs stopping.
func (c *Config) BuildSources(logger *slog.Logger) ([]Instance, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	out := make([]Instance, 0, len(c.Sources))
	var errs []*ConfigError
	for i, sc := range c.Sources {
		path := "sources[" + strconv.Itoa(i) + "]"
		k, ok := LookupKind(sc.Kind)
		if !ok {
			errs = append(errs, &ConfigError{Line: sc.Line, Key: path + ".kind", Err: fmt.Errorf("unknown kind %q (known kinds: %s)", sc.Kind, knownKinds())})
			continue
		}
		node := sc.Node
		if node == nil {
			node = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: sc.Line}
		}
		src, err := k.New(node, BuildContext{Name: sc.Name, BaseDir: c.BaseDir, Logger: logger.With("source", sc.Name)})
		if err == nil && src == nil {
			err = errors.New("the kind returned no source")
		}
		if err != nil {
			for _, leaf := range errorLeaves(err, nil) {
				e := ConfigError{Err: fmt.Errorf("%s source %q: %w", sc.Kind, sc.Name, leaf)}
				if ce, ok := leaf.(*ConfigError); ok {
					e = *ce
				} else if line, _ := splitYAMLLine(leaf.Error()); line > 0 {
					e.Line = line // a plain "line N: …" error
				}
				e.Key = joinPath(path, e.Key)
				if e.Line == 0 {
					e.Line = sc.Line
				}
				errs = append(errs, &e)
			}
			continue
		}
		out = append(out, Instance{Config: sc, Source: src})
	}
	if err := joinConfigErrors(errs); err != nil {
		return nil, WithFile(err, c.File)
	}
	return out, nil
}

// Priorities maps each source name to its priority, for NewFederation.
func (c *Config) Priorities() map[string]int {
	m := make(map[string]int, len(c.Sources))
	for _, s := range c.Sources {
		m[s.Name] = s.Priority
	}
	return m
}

// BuildFederation compiles the federation rules with the sources'
// priorities and the global panic threshold.
func (c *Config) BuildFederation() (*Federation, error) {
	return NewFederationWithDefaults(c.Federation, c.Priorities(), FederationDefaults{PanicThreshold: c.Health.PanicThreshold})
}

// Percent is a share written as a percentage in configuration ("50%",
// "12.5%"), held as a fraction from 0 to 1.
type Percent float64

// UnmarshalYAML reads "N%" with N from 0 to 100. Its errors are
// *yaml.TypeError, so decoding carries on and reports the line.
func (p *Percent) UnmarshalYAML(n *yaml.Node) error {
	fail := func(format string, args ...any) error {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
	}
	if n.Kind != yaml.ScalarNode {
		return fail("want a percentage such as 50%%, got %s", describeNode(n))
	}
	num, ok := strings.CutSuffix(strings.TrimSpace(n.Value), "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if !ok || err != nil || v != v {
		return fail("invalid percentage %q: want a number from 0 to 100 followed by %%, such as 50%%", n.Value)
	}
	if v < 0 || v > 100 {
		return fail("invalid percentage %q: must be from 0%% to 100%%", n.Value)
	}
	*p = Percent(v / 100)
	return nil
}

// String formats the share as a percentage ("50%").
func (p Percent) String() string { return strconv.FormatFloat(float64(p)*100, 'g', -1, 64) + "%" }

// Check types of HealthCheck.Type.
const (
	CheckTCP  = "tcp"  // a TCP connect
	CheckHTTP = "http" // an HTTP GET with an expected status
	CheckGRPC = "grpc" // the standard grpc.health.v1 Check
	CheckNone = "none" // no active check: the source's health stands
)

// HealthCheck is one active health check, every field resolved (defaults
// applied, a per-service override merged over its source's settings).
type HealthCheck struct {
	// Type is CheckTCP, CheckHTTP, CheckGRPC or CheckNone.
	Type string
	// Interval between two checks of one endpoint; each is moved by up to
	// ±Jitter of it at random.
	Interval time.Duration
	Jitter   float64
	// Timeout bounds one check.
	Timeout time.Duration
	// HealthyThreshold consecutive successes readmit a failing endpoint;
	// UnhealthyThreshold consecutive failures evict a passing one.
	HealthyThreshold   int
	UnhealthyThreshold int
	// InitialHealth is the state of a new endpoint until its checks say
	// otherwise: HealthUnknown (served; the first check decides),
	// HealthPassing or HealthCritical (both then need the thresholds).
	InitialHealth Health
	// HoldDown is how long an endpoint that flaps (falls again less than
	// MaxHoldDown after it was readmitted) stays evicted before it may be
	// readmitted; it doubles with each further flap up to MaxHoldDown. An
	// endpoint that stays up for MaxHoldDown is forgiven. 0 disables it.
	HoldDown    time.Duration
	MaxHoldDown time.Duration
	// Port, when not 0, is checked instead of the endpoint's own port.
	Port uint16
	// Path, Host and ExpectedStatus are for http: the GET request path
	// (with query), the Host header (default: the address checked), and
	// the status codes that pass.
	Path           string
	Host           string
	ExpectedStatus []StatusRange
	// Service is the grpc.health.v1 service name asked for ("" is the
	// server's overall health).
	Service string
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Min, Max int }

// StatusOK reports whether code is in one of the check's expected ranges.
func (h *HealthCheck) StatusOK(code int) bool {
	for _, r := range h.ExpectedStatus {
		if r.Min <= code && code <= r.Max {
			return true
		}
	}
	return false
}

// DefaultHealthCheck is a health_check block with no keys.
func DefaultHealthCheck() HealthCheck {
	return HealthCheck{
		Type:               CheckTCP,
		Interval:           10 * time.Second,
		Jitter:             0.1,
		Timeout:            2 * time.Second,
		HealthyThreshold:   2,
		UnhealthyThreshold: 3,
		InitialHealth:      HealthUnknown,
		HoldDown:           30 * time.Second,
		MaxHoldDown:        5 * time.Minute,
		Path:               "/",
		ExpectedStatus:     []StatusRange{{200, 399}},
	}
}

// HealthCheckConfig is a source's health_check block: the check of its
// services, and per-authority overrides. The checks are pointers so that
// their identity can key the checker's state; they must not be modified.
type HealthCheckConfig struct {
	Default  *HealthCheck
	Services map[Authority]*HealthCheck
}

// For returns the check of authority a: the override for a, else the one
// for its bare host (written without a port), else the source's default.
func (c *HealthCheckConfig) For(a Authority) *HealthCheck {
	if hc, ok := c.Services[a]; ok {
		return hc
	}
	if a.Port != 0 {
		if hc, ok := c.Services[Authority{Host: a.Host}]; ok {
			return hc
		}
	}
	return c.Default
}

// rawHealthCheck is one health check block as written; nil is "not given".
type rawHealthCheck struct {
	Type               *string   `yaml:"type"`
	Interval           *Duration `yaml:"interval"`
	Jitter             *Percent  `yaml:"jitter"`
	Timeout            *Duration `yaml:"timeout"`
	HealthyThreshold   *int      `yaml:"healthy_threshold"`
	UnhealthyThreshold *int      `yaml:"unhealthy_threshold"`
	InitialHealth      *string   `yaml:"initial_health"`
	HoldDown           *Duration `yaml:"hold_down"`
	MaxHoldDown        *Duration `yaml:"max_hold_down"`
	Port               *int      `yaml:"port"`
	Path               *string   `yaml:"path"`
	Host               *string   `yaml:"host"`
	ExpectedStatus     *string   `yaml:"expected_status"`
	Service            *string   `yaml:"service"`
}

// rawHealthCheckSettings is a source's health_check: a check plus services.
type rawHealthCheckSettings struct {
	rawHealthCheck `yaml:",inline"`
	Services       map[string]rawHealthCheck `yaml:"services"`
}

// healthCheck resolves a source's health_check block. n is its node.
func (p *configParser) healthCheck(raw *rawHealthCheckSettings, n *yaml.Node, path string) (*HealthCheckConfig, bool) {
	before := len(p.errs)
	def := DefaultHealthCheck()
	p.mergeHealthCheck(&def, &raw.rawHealthCheck, n, path)
	cfg := &HealthCheckConfig{Default: &def}
	svcNode := lookup(n, "services")
	for i := 0; svcNode != nil && i+1 < len(svcNode.Content); i += 2 {
		kn, vn := svcNode.Content[i], resolveAlias(svcNode.Content[i+1])
		name, _ := keyName(kn)
		key := mapKeyPath(path+".services", name)
		a, err := ParseAuthority(name, 0)
		if err != nil {
			p.fail(kn.Line, key, "%v", err)
			continue
		}
		if _, dup := cfg.Services[a]; dup {
			p.fail(kn.Line, key, "a second override for %s", a)
			continue
		}
		rs, ok := raw.Services[name]
		if !ok {
			continue // a merge key or an alias DecodeStrict reported
		}
		hc := def
		p.mergeHealthCheck(&hc, &rs, vn, key)
		if cfg.Services == nil {
			cfg.Services = make(map[Authority]*HealthCheck)
		}
		cfg.Services[a] = &hc
	}
	return cfg, len(p.errs) == before
}

// mergeHealthCheck writes the keys given in raw over hc and validates the
// result; n is the block's node, for lines.
func (p *configParser) mergeHealthCheck(hc *HealthCheck, raw *rawHealthCheck, n *yaml.Node, path string) {
	fail := func(key, format string, args ...any) {
		p.fail(lineOf(lookup(n, key), n), path+"."+key, format, args...)
	}
	if raw.Type != nil {
		switch *raw.Type {
		case CheckTCP, CheckHTTP, CheckGRPC, CheckNone:
			hc.Type = *raw.Type
		default:
			fail("type", "unknown check type %q (want tcp, http, grpc or none)", *raw.Type)
		}
	}
	mergeCheckTiming(hc, raw, fail)
	mergeCheckVerdicts(hc, raw, fail)
	mergeCheckTarget(hc, raw, fail)
}

// checkFail reports a problem with one key of a health check block.
type checkFail func(key, format string, args ...any)

// mergeCheckTiming merges when checks run: interval, jitter and timeout.
func mergeCheckTiming(hc *HealthCheck, raw *rawHealthCheck, fail checkFail) {
	if raw.Interval != nil {
		hc.Interval = time.Duration(*raw.Interval)
		if hc.Interval < time.Millisecond {
			fail("interval", "must be at least 1ms")
		}
	}
	if raw.Jitter != nil {
		hc.Jitter = float64(*raw.Jitter)
		if hc.Jitter > 0.5 {
			fail("jitter", "%s is too much: at most 50%% of the interval", *raw.Jitter)
		}
	}
	if raw.Timeout != nil {
		hc.Timeout = time.Duration(*raw.Timeout)
		if hc.Timeout <= 0 {
			fail("timeout", "must be positive")
		}
	}
}

// mergeCheckVerdicts merges how results become health: the thresholds,
// the initial health and the hold-down of flapping endpoints.
func mergeCheckVerdicts(hc *HealthCheck, raw *rawHealthCheck, fail checkFail) {
	threshold := func(key string, v *int, into *int) {
		if v == nil {
			return
		}
		if *v < 1 || *v > 100 {
			fail(key, "must be from 1 to 100, got %d", *v)
			return
		}
		*into = *v
	}
	threshold("healthy_threshold", raw.HealthyThreshold, &hc.HealthyThreshold)
	threshold("unhealthy_threshold", raw.UnhealthyThreshold, &hc.UnhealthyThreshold)
	if raw.InitialHealth != nil {
		switch h, err := ParseHealth(*raw.InitialHealth); {
		case err != nil || h == HealthWarning:
			fail("initial_health", "unknown initial health %q (want unknown, passing or critical)", *raw.InitialHealth)
		default:
			hc.InitialHealth = h
		}
	}
	if raw.HoldDown != nil {
		hc.HoldDown = time.Duration(*raw.HoldDown)
	}
	if raw.MaxHoldDown != nil {
		hc.MaxHoldDown = time.Duration(*raw.MaxHoldDown)
	}
	if hc.HoldDown > 0 && hc.MaxHoldDown < hc.HoldDown && (raw.HoldDown != nil || raw.MaxHoldDown != nil) {
		fail("max_hold_down", "max_hold_down %s is shorter than hold_down %s", hc.MaxHoldDown, hc.HoldDown)
	}
}

// mergeCheckTarget merges what a check asks: the port, and the keys of
// one check type only (path, host and expected_status for http, service
// for grpc). hc.Type must be merged already.
func mergeCheckTarget(hc *HealthCheck, raw *rawHealthCheck, fail checkFail) {
	if raw.Port != nil {
		if *raw.Port < 0 || *raw.Port > 65535 {
			fail("port", "must be from 1 to 65535 (or 0 for the endpoint's port), got %d", *raw.Port)
		} else {
			hc.Port = uint16(*raw.Port)
		}
	}
	onlyFor := func(key, typ string, given bool) {
		if given && hc.Type != typ {
			fail(key, "applies to %s checks only (this check is %s)", typ, hc.Type)
		}
	}
	onlyFor("path", CheckHTTP, raw.Path != nil)
	onlyFor("host", CheckHTTP, raw.Host != nil)
	onlyFor("expected_status", CheckHTTP, raw.ExpectedStatus != nil)
	onlyFor("service", CheckGRPC, raw.Service != nil)
	if raw.Path != nil {
		if !strings.HasPrefix(*raw.Path, "/") || strings.ContainsAny(*raw.Path, " \t\r\n") {
			fail("path", "%q must start with / and contain no spaces", *raw.Path)
		} else {
			hc.Path = *raw.Path
		}
	}
	if raw.Host != nil {
		if strings.ContainsAny(*raw.Host, " \t\r\n/") {
			fail("host", "%q is not a host name", *raw.Host)
		} else {
			hc.Host = *raw.Host
		}
	}
	if raw.ExpectedStatus != nil {
		ranges, err := parseStatusRanges(*raw.ExpectedStatus)
		if err != nil {
			fail("expected_status", "%v", err)
		} else {
			hc.ExpectedStatus = ranges
		}
	}
	if raw.Service != nil {
		hc.Service = *raw.Service
	}
}

// parseStatusRanges reads "200-299,301,418".
func parseStatusRanges(s string) ([]StatusRange, error) {
	var out []StatusRange
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
			return nil, fmt.Errorf("%q: want HTTP status codes or ranges from 100 to 599, such as 200-299,301", s)
		}
		out = append(out, StatusRange{a, b})
	}
	return out, nil
}
