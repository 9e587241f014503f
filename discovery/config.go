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
//	    # … the kind's own keys
//	federation:
//	  - authority: web.demo:8080  # a bare host applies to every port
//	    aliases: [web.service.dc1.consul:80]
//	    failover:
//	      - sources: [east]
//	        min_healthy: 2        # default 1
//	      - sources: [west]
type Config struct {
	Server     ServerConfig
	Sources    []SourceConfig
	Federation []FederationRule

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
	// StaleAfter evicts a failed source's endpoints after this long; 0
	// keeps them forever.
	StaleAfter Duration
	// Line is where the entry starts in the file.
	Line int
	// Node holds the kind's own keys only: a copy of the entry's mapping
	// without name, kind, priority and stale_after. Kind.New decodes it.
	Node *yaml.Node
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
	c := &Config{Server: DefaultServerConfig(), File: file}
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
	Server     ServerConfig `yaml:"server"`
	Sources    []yaml.Node  `yaml:"sources"`
	Federation []yaml.Node  `yaml:"federation"`
}

type rawSource struct {
	Name       string               `yaml:"name"`
	Kind       string               `yaml:"kind"`
	Priority   int                  `yaml:"priority"`
	StaleAfter Duration             `yaml:"stale_after"`
	Own        map[string]yaml.Node `yaml:",inline"` // the kind's keys, checked by the kind
}

// commonSourceKeys are the keys of a source entry that are not the kind's.
var commonSourceKeys = map[string]bool{"name": true, "kind": true, "priority": true, "stale_after": true}

type rawRule struct {
	Authority string    `yaml:"authority"`
	Aliases   []string  `yaml:"aliases"`
	Failover  []rawTier `yaml:"failover"`
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
	p.c.Sources = append(p.c.Sources, SourceConfig{
		Name:       raw.Name,
		Kind:       raw.Kind,
		Priority:   raw.Priority,
		StaleAfter: raw.StaleAfter,
		Line:       n.Line,
		Node:       &own,
	})
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
	bad := len(p.errs) > before

	r := FederationRule{Line: n.Line}
	authNode := lookup(n, "authority")
	if raw.Authority == "" {
		p.fail(lineOf(authNode, n), path+".authority", "required")
		bad = true
	} else if a, err := ParseAuthority(raw.Authority, 0); err != nil {
		p.fail(lineOf(authNode, n), path+".authority", "%v", err)
		bad = true
	} else if first, dup := seen[a]; dup {
		p.fail(lineOf(authNode, n), path+".authority", "a second rule for %s (first at line %d)", a, first)
		bad = true
	} else {
		seen[a] = n.Line
		r.Authority = a
	}

	aliasNodes := seqItems(lookup(n, "aliases"))
	aliasLine := map[Authority]int{}
	for j, s := range raw.Aliases {
		key := path + ".aliases[" + strconv.Itoa(j) + "]"
		line := n.Line
		if j < len(aliasNodes) {
			line = aliasNodes[j].Line
		}
		a, err := ParseAuthority(s, 0)
		switch {
		case err != nil:
			p.fail(line, key, "%v", err)
		case a == r.Authority:
			p.fail(line, key, "%s is the rule's own authority", a)
		case aliasLine[a] != 0:
			p.fail(line, key, "alias %s listed twice (first at line %d)", a, aliasLine[a])
		default:
			aliasLine[a] = line
			r.Aliases = append(r.Aliases, a)
			p.aliases = append(p.aliases, aliasRef{rule: r.Authority, alias: a, line: line, key: key})
			continue
		}
		bad = true
	}

	tierNodes := seqItems(lookup(n, "failover"))
	tierOf := map[string]int{}
	for t, rt := range raw.Failover {
		key := path + ".failover[" + strconv.Itoa(t) + "]"
		tn := n
		if t < len(tierNodes) {
			tn = resolveAlias(tierNodes[t])
		}
		tier := Tier{MinHealthy: 1}
		if rt.MinHealthy != nil {
			if *rt.MinHealthy < 1 {
				p.fail(lineOf(lookup(tn, "min_healthy"), tn), key+".min_healthy", "must be at least 1, got %d", *rt.MinHealthy)
				bad = true
			}
			tier.MinHealthy = *rt.MinHealthy
		}
		if len(rt.Sources) == 0 {
			p.fail(lineOf(lookup(tn, "sources"), tn), key+".sources", "a tier needs at least one source")
			bad = true
		}
		srcNodes := seqItems(lookup(tn, "sources"))
		for k, s := range rt.Sources {
			skey := key + ".sources[" + strconv.Itoa(k) + "]"
			line := tn.Line
			if k < len(srcNodes) {
				line = srcNodes[k].Line
			}
			if _, ok := names[s]; !ok {
				p.fail(line, skey, "unknown source %q", s)
				bad = true
			} else if prev, dup := tierOf[s]; dup {
				if prev == t {
					p.fail(line, skey, "source %q listed twice in this tier", s)
				} else {
					p.fail(line, skey, "source %q is already in failover[%d]; a source belongs to one tier", s, prev)
				}
				bad = true
			} else {
				tierOf[s] = t
			}
		}
		tier.Sources = append([]string(nil), rt.Sources...)
		r.Failover = append(r.Failover, tier)
	}
	if !bad {
		p.c.Federation = append(p.c.Federation, r)
	}
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

// BuildFederation compiles the federation rules with the sources' priorities.
func (c *Config) BuildFederation() (*Federation, error) {
	return NewFederation(c.Federation, c.Priorities())
}
