package discovery

import (
	"cmp"
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// ConfigError is one problem in a config or services file, with where it is.
// Key is the dotted path of the value at fault (sources[1].paths); File, Line
// and Key are each optional.
type ConfigError struct {
	File string
	Line int
	Key  string
	Err  error
}

// Error formats the error as "file:line: key: message", leaving out the
// parts that are empty ("line 7: key: message" when only the file is unknown).
func (e *ConfigError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File)
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	case e.File != "":
		b.WriteString(e.File)
	case e.Line > 0:
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
	}
	if e.Key != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Key)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("invalid")
	}
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// WithFile returns err with File set on every ConfigError inside it, walking
// errors.Join trees. A ConfigError that already names a file (one about an
// included file) keeps it. Any other error is wrapped as ConfigError{File: file}.
// The ConfigErrors of err are copied, not modified. WithFile(nil, f) is nil.
func WithFile(err error, file string) error {
	if err == nil {
		return nil
	}
	if ce, ok := err.(*ConfigError); ok {
		if ce.File != "" {
			return ce
		}
		c := *ce
		c.File = file
		return &c
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs := j.Unwrap()
		out := make([]error, 0, len(errs))
		for _, e := range errs {
			if e = WithFile(e, file); e != nil {
				out = append(out, e)
			}
		}
		return errors.Join(out...)
	}
	return &ConfigError{File: file, Err: err}
}

// joinConfigErrors sorts errs by line (stably) and joins them; nil when empty.
func joinConfigErrors(errs []*ConfigError) error {
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b *ConfigError) int { return cmp.Compare(a.Line, b.Line) })
	out := make([]error, 0, len(errs))
	var prev *ConfigError
	for _, e := range errs {
		if prev != nil && prev.Line == e.Line && prev.Key == e.Key && prev.File == e.File &&
			prev.Err != nil && e.Err != nil && prev.Err.Error() == e.Err.Error() {
			continue // the same problem reached twice (through an alias)
		}
		out = append(out, e)
		prev = e
	}
	return errors.Join(out...)
}

// errorLeaves lists the leaves of an errors.Join tree, stopping at ConfigErrors.
func errorLeaves(err error, into []error) []error {
	switch e := err.(type) {
	case nil:
		return into
	case *ConfigError:
		return append(into, e)
	case interface{ Unwrap() []error }:
		for _, c := range e.Unwrap() {
			into = errorLeaves(c, into)
		}
		return into
	default:
		return append(into, err)
	}
}

// flattenConfigErrors lists the ConfigErrors of an errors.Join tree; other
// leaves come back as ConfigErrors with only Err set.
func flattenConfigErrors(err error, into []*ConfigError) []*ConfigError {
	switch e := err.(type) {
	case nil:
		return into
	case *ConfigError:
		return append(into, e)
	case interface{ Unwrap() []error }:
		for _, c := range e.Unwrap() {
			into = flattenConfigErrors(c, into)
		}
		return into
	default:
		return append(into, &ConfigError{Err: err})
	}
}

// joinPath appends a relative key path to a parent path.
func joinPath(parent, child string) string {
	switch {
	case child == "":
		return parent
	case parent == "":
		return child
	case strings.HasPrefix(child, "["):
		return parent + child
	default:
		return parent + "." + child
	}
}

// mapKeyPath appends a map key: dotted when it is a plain word, else ["quoted"].
func mapKeyPath(parent, key string) string {
	plain := key != ""
	for i := 0; i < len(key) && plain; i++ {
		c := key[i]
		plain = c == '_' || c == '-' || c == '/' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
	}
	if plain {
		return joinPath(parent, key)
	}
	return parent + "[" + strconv.Quote(key) + "]"
}

// DecodeStrict decodes node into out as node.Decode does, and also rejects
// what node.Decode lets pass: mapping keys that name no field (through
// nested structs, pointers, slices and maps, honouring the yaml tags name,
// ",inline" and "-") and keys given twice. A type that implements
// yaml.Unmarshaler decodes its node itself and is not looked into; neither
// are yaml.Node and interface values.
//
// Every problem is reported, not just the first: the result is an
// errors.Join of *ConfigError sorted by line, each with the dotted key path
// of the value at fault (sources[1].paths), relative to node. yaml.v3's own
// type errors ("cannot unmarshal !!str `abc` into int") come back the same
// way. Errors returned by a yaml.Unmarshaler keep their message; a
// ConfigError tree it returns (a nested DecodeStrict) gets the path prefixed.
//
// It is two passes: a check of the node tree against the type — keys, the
// shape of each value, and each leaf value decoded on its own so that its
// error gets its key path — then node.Decode itself, for yaml.v3's exact
// semantics (defaults kept, merges, partial results). yaml.v3 has no
// unknown-key check for node.Decode (KnownFields is on Decoder, over bytes)
// and its type errors carry a line but no key path.
func DecodeStrict(node *yaml.Node, out any) error {
	return joinConfigErrors(decodeStrict(node, out, ""))
}

// decodeStrict is DecodeStrict with every key path under path.
func decodeStrict(node *yaml.Node, out any, path string) []*ConfigError {
	rv := reflect.ValueOf(out)
	if !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.IsNil() {
		return []*ConfigError{{Key: path, Err: fmt.Errorf("DecodeStrict needs a non-nil pointer, got %T", out)}}
	}
	if node == nil || node.IsZero() {
		return nil
	}
	c := &keyCheck{following: map[*yaml.Node]bool{}, budget: checkBudget}
	c.value(node, rv.Type().Elem(), path)
	// The check has reported every error node.Decode can return, with its
	// path; only when it found none is an error reported from here.
	if err := node.Decode(out); err != nil && len(c.errs) == 0 {
		c.errs = appendDecodeErrors(c.errs, err, node, path)
	}
	return c.errs
}

// checkBudget bounds the nodes one check visits, so an alias bomb cannot
// make it run forever (yaml.v3's decode rejects it on its own).
const checkBudget = 1 << 20

// keyCheck is the first pass of DecodeStrict.
type keyCheck struct {
	errs      []*ConfigError
	following map[*yaml.Node]bool // alias nodes being followed, against cycles
	budget    int
}

func (c *keyCheck) failf(line int, path, format string, args ...any) {
	c.errs = append(c.errs, &ConfigError{Line: line, Key: path, Err: fmt.Errorf(format, args...)})
}

var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

// decodesItself reports whether values of t take their node whole.
func decodesItself(t reflect.Type) bool {
	return t == reflect.TypeFor[yaml.Node]() || t.Kind() == reflect.Interface ||
		reflect.PointerTo(t).Implements(reflect.TypeFor[yaml.Unmarshaler]())
}

// value checks node n against type t.
func (c *keyCheck) value(n *yaml.Node, t reflect.Type, path string) {
	if c.budget--; c.budget < 0 {
		if c.budget == -1 {
			c.failf(n.Line, path, "document too complex (excessive aliasing)")
		}
		return
	}
	switch {
	case n.Kind == yaml.DocumentNode:
		if len(n.Content) == 1 {
			c.value(n.Content[0], t, path)
		}
		return
	case n.Kind == yaml.AliasNode:
		if n.Alias != nil && !c.following[n] { // a cycle is the real decode's to report
			c.following[n] = true
			c.value(n.Alias, t, path)
			delete(c.following, n)
		}
		return
	case n.ShortTag() == "!!null":
		return
	}
	for t.Kind() == reflect.Pointer && !decodesItself(t) {
		t = t.Elem()
	}
	want := ""
	switch k := t.Kind(); {
	case decodesItself(t):
	case k == reflect.Struct || k == reflect.Map:
		if n.Kind == yaml.MappingNode {
			c.mapping(n, t, path, map[string]int{}, false)
			return
		}
		want = "a mapping"
	case k == reflect.Slice || k == reflect.Array:
		if n.Kind == yaml.SequenceNode {
			for i, item := range n.Content {
				c.value(item, t.Elem(), path+"["+strconv.Itoa(i)+"]")
			}
			return
		}
		want = "a list"
	}
	// yaml.v3 may still take a node of another shape (a scalar for a
	// TextUnmarshaler or []byte); if it does not, say what was expected
	// rather than name a Go type.
	if want != "" && !(n.Kind == yaml.ScalarNode && reflect.PointerTo(t).Implements(textUnmarshalerType)) {
		if n.Decode(reflect.New(t).Interface()) != nil {
			c.failf(n.Line, path, "want %s, got %s", want, describeNode(n))
		}
		return
	}
	c.decode(n, t, path)
}

// decode decodes n into a scratch value of type t, for its errors.
func (c *keyCheck) decode(n *yaml.Node, t reflect.Type, path string) {
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		c.errs = appendDecodeErrors(c.errs, err, n, path)
	}
}

// mapping checks the keys of mapping n against t, a struct or a map, and
// goes into their values. seen holds the keys met so far and their lines;
// merged is true for a mapping pulled in by a merge key (<<), whose keys
// the mapping that merges it may override.
func (c *keyCheck) mapping(n *yaml.Node, t reflect.Type, path string, seen map[string]int, merged bool) {
	var f *structFields
	if t.Kind() == reflect.Struct {
		if f = structFieldsOf(t); f.selfDecoding {
			c.decode(n, t, path) // an inline field takes the whole mapping: any key may be its
			return
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			c.merge(v, t, path, seen, f != nil)
			continue
		}
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		name, kpath, vt := k.Value, mapKeyPath(path, k.Value), reflect.Type(nil)
		if k.Kind != yaml.ScalarNode {
			if f != nil {
				c.failf(n.Content[i].Line, path, "a key must be a string, got %s", describeNode(k))
				continue
			}
			name = describeNode(k)
			kpath = mapKeyPath(path, name)
		}
		if f != nil {
			kpath = joinPath(path, name)
		}
		id := strconv.Itoa(int(k.Kind)) + "\x00" + name
		if first, dup := seen[id]; dup {
			if !merged {
				c.failf(n.Content[i].Line, kpath, "duplicate key (first at line %d)", first)
			}
			continue
		}
		if !merged {
			seen[id] = n.Content[i].Line
		}
		switch {
		case f == nil:
			if kt := t.Key(); kt.Kind() != reflect.String || k.Kind != yaml.ScalarNode {
				before := len(c.errs)
				if c.value(n.Content[i], kt, kpath); len(c.errs) > before {
					continue
				}
			}
			vt = t.Elem()
		case f.types[name] != nil:
			vt = f.types[name]
		case f.inlineMap != nil:
			vt, kpath = f.inlineMap, mapKeyPath(path, name)
		case len(f.names) == 0:
			c.failf(n.Content[i].Line, kpath, "unknown key (no keys are expected here)")
			continue
		default:
			c.failf(n.Content[i].Line, kpath, "unknown key (valid keys: %s)", strings.Join(f.names, ", "))
			continue
		}
		c.value(v, vt, kpath)
	}
}

// merge checks the mapping(s) a merge key (<<) refers to. A struct takes
// their keys as its own, under the keys already seen; a map checks each of
// them as a mapping of its own.
func (c *keyCheck) merge(v *yaml.Node, t reflect.Type, path string, seen map[string]int, isStruct bool) {
	if !isStruct {
		c.value(v, t, path)
		return
	}
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	items := []*yaml.Node{v}
	if v.Kind == yaml.SequenceNode {
		items = v.Content
	}
	for _, m := range items {
		if m.Kind == yaml.AliasNode && m.Alias != nil {
			m = m.Alias
		}
		if m.Kind != yaml.MappingNode {
			c.failf(m.Line, path, "a merge (<<) needs a mapping or a list of mappings")
		} else {
			c.mapping(m, t, path, seen, true)
		}
	}
}

// describeNode names a node's kind and value the way yaml.v3's errors do.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	v := n.Value
	if len(v) > 20 {
		v = v[:17] + "..."
	}
	return n.ShortTag() + " `" + v + "`"
}

// appendDecodeErrors turns an error of node.Decode into ConfigErrors under path.
func appendDecodeErrors(into []*ConfigError, err error, n *yaml.Node, path string) []*ConfigError {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		for _, msg := range te.Errors {
			line, text := splitYAMLLine(msg)
			if line == 0 {
				line = n.Line
			}
			into = append(into, &ConfigError{Line: line, Key: path, Err: errors.New(text)})
		}
		return into
	}
	for _, ce := range flattenConfigErrors(err, nil) {
		c := *ce
		c.Key = joinPath(path, ce.Key)
		if c.Line == 0 {
			c.Line = n.Line
			if c.Err != nil {
				if line, text := splitYAMLLine(c.Err.Error()); line > 0 {
					c.Line, c.Err = line, errors.New(text)
				}
			}
		}
		into = append(into, &c)
	}
	return into
}

// YAMLSyntaxLine reads the line and message of a yaml.v3 syntax error
// ("yaml: line N: message"), with the line 1-based: yaml.v3 prints a
// parser error's line 0-based and a scanner error's 1-based. ok is false
// when the error carries no line.
func YAMLSyntaxLine(err error) (line int, msg string, ok bool) {
	line, msg = splitYAMLLine(err.Error())
	if line == 0 {
		return 0, strings.TrimPrefix(msg, "yaml: "), false
	}
	if yamlParserProblems[msg] {
		line++
	}
	return line, msg, true
}

// yamlParserProblems are yaml.v3's parser (not scanner) messages, the ones
// whose line it prints 0-based.
var yamlParserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// splitYAMLLine splits yaml.v3's "line N: message" (optionally after a
// "yaml: " prefix) into N and the message; 0 and msg when it has no line.
func splitYAMLLine(msg string) (int, string) {
	s := strings.TrimPrefix(msg, "yaml: ")
	rest, ok := strings.CutPrefix(s, "line ")
	if !ok {
		return 0, msg
	}
	num, text, ok := strings.Cut(rest, ": ")
	if !ok {
		return 0, msg
	}
	line, err := strconv.Atoi(num)
	if err != nil || line <= 0 {
		return 0, msg
	}
	return line, text
}

func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.Tag == "!!merge" || k.Tag == "tag:yaml.org,2002:merge")
}

// keyName is the string a mapping key decodes to, following an alias.
func keyName(k *yaml.Node) (string, bool) {
	if k.Kind == yaml.AliasNode && k.Alias != nil {
		k = k.Alias
	}
	return k.Value, k.Kind == yaml.ScalarNode
}

// structFields is what DecodeStrict needs of a struct: the keys yaml.v3
// decodes into it, by yaml.v3's own field rules.
type structFields struct {
	types        map[string]reflect.Type
	names        []string     // in declaration order, for messages
	inlineMap    reflect.Type // element type of an ",inline" map, if any
	selfDecoding bool         // an ",inline" field decodes the mapping itself
}

func structFieldsOf(t reflect.Type) *structFields {
	f := &structFields{types: map[string]reflect.Type{}}
	f.add(t)
	return f
}

func (f *structFields) add(t reflect.Type) {
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("yaml")
		if tag == "" && !strings.Contains(string(sf.Tag), ":") {
			tag = string(sf.Tag)
		}
		name, flags, _ := strings.Cut(tag, ",")
		if sf.PkgPath != "" && !sf.Anonymous || tag == "-" {
			continue
		}
		if !slices.Contains(strings.Split(flags, ","), "inline") {
			if name == "" {
				name = strings.ToLower(sf.Name)
			}
			if _, dup := f.types[name]; !dup {
				f.names = append(f.names, name)
			}
			f.types[name] = sf.Type
			continue
		}
		ft := sf.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case sf.Type.Kind() == reflect.Map:
			f.inlineMap = sf.Type.Elem()
		case ft.Kind() == reflect.Struct && decodesItself(ft):
			f.selfDecoding = true
		case ft.Kind() == reflect.Struct:
			f.add(ft) // yaml.v3 rejects other inline fields, and recursive ones
		}
	}
}

// Duration is a time.Duration written in configuration as a Go duration
// string ("2s", "1m30s"). Negative durations are rejected.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string. Its errors are *yaml.TypeError,
// so yaml.v3 (and DecodeStrict) carry on and report the line.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	fail := func(format string, args ...any) error {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", n.Line) + fmt.Sprintf(format, args...)}}
	}
	if n.Kind != yaml.ScalarNode {
		return fail("want a duration such as 2s or 5m, got %s", describeNode(n))
	}
	v, err := parseDuration(n.Value)
	if err != nil {
		return fail("%v", err)
	}
	*d = v
	return nil
}

func parseDuration(s string) (Duration, error) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a Go duration such as 2s, 5m or 1h30m", s)
	}
	if v < 0 {
		return 0, fmt.Errorf("invalid duration %q: must not be negative", s)
	}
	return Duration(v), nil
}

// MarshalYAML writes the duration as String does.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalText writes the duration as String does (JSON dumps use it).
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// String formats the duration as time.Duration does ("2s", "1m30s").
func (d Duration) String() string { return time.Duration(d).String() }

// KeyLine is the line of a key path ("refresh", "naming.authority",
// "services[2]") in a mapping node: the line of the deepest part found,
// else the node's own line; 0 for a nil node. Kinds use it to place the
// errors of checks they make after decoding.
func KeyLine(node *yaml.Node, path string) int {
	if node == nil {
		return 0
	}
	line, cur := node.Line, node
	for part := range strings.SplitSeq(path, ".") {
		name, index := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 {
			name = part[:i]
			index, _ = strconv.Atoi(strings.TrimSuffix(part[i+1:], "]"))
		}
		var next *yaml.Node
		for i := 0; cur.Kind == yaml.MappingNode && i+1 < len(cur.Content); i += 2 {
			if cur.Content[i].Value == name {
				line, next = cur.Content[i].Line, cur.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		if index >= 0 && next.Kind == yaml.SequenceNode && index < len(next.Content) {
			next = next.Content[index]
			line = next.Line
		}
		cur = next
	}
	return line
}

// PlaceErrors sets the line of every ConfigError in err (errors.Join trees
// included) that names a key but has no line, from node; it returns err.
func PlaceErrors(node *yaml.Node, err error) error {
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range j.Unwrap() {
				walk(inner)
			}
			return
		}
		var ce *ConfigError
		if errors.As(e, &ce) && ce.Line == 0 && ce.Key != "" {
			ce.Line = KeyLine(node, ce.Key)
		}
	}
	if err != nil {
		walk(err)
	}
	return err
}
