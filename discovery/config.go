package discovery

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is Tributary's configuration file as the core reads it: the
// sources, the federation rules and the panic threshold, parsed and
// validated. The other sections belong to the packages they configure,
// which decode them from the Sections kept here (ConfigDecoder): server:
// (cmd/tributary, and server.tls destination/tlsauth), health: but for
// panic_threshold, and each source's health_check (discovery/health).
//
//	server: {...}                 # cmd/tributary
//	sources:
//	  - name: local               # unique, [a-z0-9][a-z0-9._/-]*
//	    kind: file                # a registered kind
//	    priority: 0               # higher wins an address conflict
//	    stale_after: 0s           # 0: keep a failed source's data forever
//	    deletion_guard:           # hold a hand-over that withdraws most endpoints
//	      max_withdraw: 50%
//	      confirm_for: 30s        # 0s turns the guard off
//	      min_endpoints: 10
//	    health_check: {...}       # discovery/health
//	    # … the kind's own keys
//	health:
//	  panic_threshold: 50%        # serve everything when fewer are serving
//	  # …                         # discovery/health
//	federation:
//	  - authority: web.demo:8080  # a bare host applies to every port
//	    aliases: [web.service.dc1.consul:80]
//	    panic_threshold: 30%      # default: health.panic_threshold
//	    failover:
//	      - sources: [east]
//	        min_healthy: 2        # default 1
//	      - sources: [west]
type Config struct {
	Sources    []SourceConfig
	Federation []FederationRule
	// PanicThreshold is health.panic_threshold: when fewer than this share
	// (0..1) of an authority's endpoints are serving, all of them are
	// served rather than evicting most of the service. A federation rule
	// may override it; 0 disables.
	PanicThreshold float64
	// Server is the server: section, for cmd/tributary.
	Server Section
	// Health is the health: section, for discovery/health (the core
	// reads only panic_threshold).
	Health Section
	// DNS is the dns: section, for destination/dns (the DNS interface).
	DNS Section
	// XDS is the xds: section, for destination/xds (the xDS server).
	XDS Section
	// Invalid holds the source entries the core found errors in: they are
	// not built, but a ConfigDecoder reports the problems of its sections
	// in them too (their structure: not their values, as the source's
	// own settings are in doubt).
	Invalid []SourceConfig

	// File is the path the config was loaded from, as given ("" when parsed
	// from bytes without a name). Errors name it.
	File string
	// BaseDir is the folder of File; relative paths in source configs
	// resolve against it. LoadConfig makes it absolute.
	BaseDir string
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
	// HealthCheck is the source's health_check block, for
	// discovery/health; its Node is nil when the source has none.
	HealthCheck Section
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

// DefaultPanicThreshold is the panic threshold of an authority no setting names.
const DefaultPanicThreshold = 0.5

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
func LoadConfig(path string, decoders ...ConfigDecoder) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(data, path, decoders...)
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
// them to the kind. The sections other packages own are checked by their
// decoders, which ParseConfig runs in order once the core's part is read,
// even when it has errors: their problems are reported with the core's.
func ParseConfig(data []byte, file string, decoders ...ConfigDecoder) (*Config, error) {
	c := &Config{PanicThreshold: DefaultPanicThreshold, File: file}
	if file != "" {
		c.BaseDir = filepath.Dir(file)
	}
	root, err := parseDocument(data)
	if err != nil {
		return nil, WithFile(err, file)
	}
	p := &configParser{c: c}
	p.parse(root)
	errs := p.errs
	for _, decode := range decoders {
		errs = flattenConfigErrors(decode(c), errs)
	}
	for _, e := range errs {
		if e.File == "" {
			e.File = file
		}
	}
	if err := joinConfigErrors(errs); err != nil {
		return nil, err
	}
	return c, nil
}

// A ConfigDecoder decodes the sections of the config that its package owns
// (Config.Server, Config.Health, SourceConfig.HealthCheck) into its own
// settings, which it keeps. ParseConfig calls it with what the core could
// read, errors or not; a source with errors of its own is left out of
// c.Sources. Its errors should be ConfigErrors from the Sections' Decode
// and Errorf, so that they read file:line: key.path: problem.
type ConfigDecoder func(c *Config) error

// Section is a part of the config file that a package other than the core
// owns: the core keeps its node, and the owner decodes it, with the same
// file:line: key.path: problem errors as the rest of the config.
type Section struct {
	// File is the config file, for errors.
	File string
	// Path is the section's key path: "server", "sources[1].health_check".
	Path string
	// Node is the section's value (an alias followed); nil when the file
	// leaves it out or writes null.
	Node *yaml.Node
	// line is where the section is written, or where its parent is when
	// the file leaves it out: where an error about it goes.
	line    int
	written bool
}

// section makes the Section of node n, written at path; line places it when n is nil.
func section(file, path string, n *yaml.Node, line int) Section {
	written := n != nil
	if written {
		line = n.Line
	}
	if n = resolveAlias(n); n != nil && n.ShortTag() == "!!null" {
		n = nil
	}
	return Section{File: file, Path: path, Node: n, line: line, written: written}
}

// Written reports whether the file has the section's key, even with a null value.
func (s Section) Written() bool { return s.written }

// Line is where the section is written (where its parent is, if it is not).
func (s Section) Line() int { return s.line }

// Decode decodes the section into out as DecodeStrict does: unknown and
// duplicate keys and type errors are ConfigErrors placed in the file.
// Nothing happens when the section is not given.
func (s Section) Decode(out any) error {
	return WithFile(joinConfigErrors(decodeStrict(s.Node, out, s.Path)), s.File)
}

// Key is the value of key in a mapping section, as a Section of its own.
func (s Section) Key(key string) Section {
	return section(s.File, joinPath(s.Path, key), lookup(s.Node, key), s.line)
}

// Item is item i of a list section.
func (s Section) Item(i int) Section {
	var n *yaml.Node
	if items := seqItems(s.Node); i < len(items) {
		n = items[i]
	}
	return section(s.File, s.Path+"["+strconv.Itoa(i)+"]", n, s.line)
}

// SectionEntry is one key of a mapping section, and its value.
type SectionEntry struct {
	Key     string
	Value   Section
	keyLine int
}

// Entries lists the keys of a mapping section in the order written, each
// value's path naming its key as a map key does (services["web:80"]).
func (s Section) Entries() []SectionEntry {
	var out []SectionEntry
	for i := 0; s.Node != nil && s.Node.Kind == yaml.MappingNode && i+1 < len(s.Node.Content); i += 2 {
		k, v := s.Node.Content[i], resolveAlias(s.Node.Content[i+1])
		name, _ := keyName(k)
		out = append(out, SectionEntry{Key: name, Value: section(s.File, mapKeyPath(s.Path, name), v, k.Line), keyLine: k.Line})
	}
	return out
}

// Errorf is a problem with the section's value, at its line.
func (s Section) Errorf(format string, args ...any) *ConfigError {
	return &ConfigError{File: s.File, Line: s.line, Key: s.Path, Err: fmt.Errorf(format, args...)}
}

// Place puts the errors a section's owner found in its decoded value into
// the file: a ConfigError whose Key is relative to the section (as a
// Settings method returns them) gets the section's path before its key and
// that key's line (the section's line when the key is not written); any
// other error is a problem with the section, at its line. Joined errors
// are placed one by one; nil stays nil.
func (s Section) Place(err error) error {
	if err == nil {
		return nil
	}
	var errs []error
	var place func(error)
	place = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				place(inner)
			}
			return
		}
		var ce *ConfigError
		if !errors.As(e, &ce) || ce.Key == "" {
			errs = append(errs, s.Errorf("%v", e))
			return
		}
		line := KeyLine(s.Node, ce.Key)
		if line == 0 {
			line = s.line
		}
		errs = append(errs, &ConfigError{File: s.File, Line: line, Key: joinPath(s.Path, ce.Key), Err: ce.Err})
	}
	place(err)
	return errors.Join(errs...)
}

// KeyErrorf is a problem with the entry's key, at its line.
func (e SectionEntry) KeyErrorf(format string, args ...any) *ConfigError {
	return &ConfigError{File: e.Value.File, Line: e.keyLine, Key: e.Value.Path, Err: fmt.Errorf(format, args...)}
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

// yamlSyntaxError turns yaml.v3's "yaml: line N: msg" into a ConfigError
// on the line the services file parser and an editor would name.
func yamlSyntaxError(err error) error {
	line, msg, _ := YAMLSyntaxLine(err)
	return &ConfigError{Line: line, Err: errors.New(msg)}
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
	Server     yaml.Node      `yaml:"server"` // cmd/tributary's
	Sources    []yaml.Node    `yaml:"sources"`
	Federation []yaml.Node    `yaml:"federation"`
	Health     rawHealthGroup `yaml:"health"`
	DNS        yaml.Node      `yaml:"dns"` // destination/dns's
	XDS        yaml.Node      `yaml:"xds"` // destination/xds's
}

type rawHealthGroup struct {
	PanicThreshold *Percent             `yaml:"panic_threshold"`
	Checker        map[string]yaml.Node `yaml:",inline"` // discovery/health's keys, checked there
}

type rawSource struct {
	Name          string               `yaml:"name"`
	Kind          string               `yaml:"kind"`
	Priority      int                  `yaml:"priority"`
	StaleAfter    Duration             `yaml:"stale_after"`
	DeletionGuard *rawDeletionGuard    `yaml:"deletion_guard"`
	HealthCheck   yaml.Node            `yaml:"health_check"` // discovery/health's
	Own           map[string]yaml.Node `yaml:",inline"`      // the kind's keys, checked by the kind
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
	var raw rawConfig
	p.errs = append(p.errs, decodeStrict(root, &raw, "")...)
	p.c.Server = section(p.c.File, "server", lookup(root, "server"), root.Line)
	p.c.Health = section(p.c.File, "health", lookup(root, "health"), root.Line)
	p.c.DNS = section(p.c.File, "dns", lookup(root, "dns"), root.Line)
	p.c.XDS = section(p.c.File, "xds", lookup(root, "xds"), root.Line)
	if raw.Health.PanicThreshold != nil {
		p.c.PanicThreshold = float64(*raw.Health.PanicThreshold)
	}

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
	sc := SourceConfig{
		Name:        raw.Name,
		Kind:        raw.Kind,
		Priority:    raw.Priority,
		StaleAfter:  raw.StaleAfter,
		HealthCheck: section(p.c.File, path+".health_check", lookup(n, "health_check"), n.Line),
		Line:        n.Line,
	}
	if bad {
		p.c.Invalid = append(p.c.Invalid, sc)
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
	sc.Node = &own
	guard, ok := p.deletionGuard(raw.DeletionGuard, lookup(n, "deletion_guard"), path+".deletion_guard")
	if !ok {
		p.c.Invalid = append(p.c.Invalid, sc)
		return
	}
	sc.DeletionGuard = guard
	p.c.Sources = append(p.c.Sources, sc)
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
	return NewFederationWithDefaults(c.Federation, c.Priorities(), FederationDefaults{PanicThreshold: c.PanicThreshold})
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
