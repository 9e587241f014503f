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
	"sync"
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
// nested structs, pointers, slices, arrays and maps, honouring the yaml tags
// name, ",inline" and "-") and keys given twice. A type that implements
// yaml.Unmarshaler decodes its node itself and is not looked into; neither
// are yaml.Node and interface values.
//
// Every problem is reported, not just the first: the result is an
// errors.Join of *ConfigError sorted by line, each with the dotted key path
// of the value at fault (sources[1].paths), relative to node. yaml.v3's own
// type errors ("cannot unmarshal !!str `abc` into int") come back the same
// way. Errors returned by a yaml.Unmarshaler keep their message; a
// ConfigError tree it returns (a nested DecodeStrict) gets the path prefixed.
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
	w := &strictWalker{active: map[*yaml.Node]bool{}, budget: walkBudget}
	w.walk(node, rv.Type().Elem(), path)
	// The real decode, for yaml.v3's exact semantics (defaults kept, merges,
	// partial results). Its errors are the ones the walk already reported with
	// their paths; only when the walk saw nothing are they reported from here.
	err := node.Decode(out)
	if err != nil && len(w.errs) == 0 {
		w.errs = appendDecodeErrors(w.errs, err, node, path)
	}
	return w.errs
}

// walkBudget bounds the nodes one walk visits, so an alias bomb cannot make
// it run forever (yaml.v3's decode rejects it on its own).
const walkBudget = 1 << 20

type strictWalker struct {
	errs   []*ConfigError
	active map[*yaml.Node]bool // alias nodes being followed, against cycles
	budget int
}

func (w *strictWalker) fail(line int, path string, err error) {
	w.errs = append(w.errs, &ConfigError{Line: line, Key: path, Err: err})
}

func (w *strictWalker) failf(line int, path, format string, args ...any) {
	w.fail(line, path, fmt.Errorf(format, args...))
}

var (
	nodeType            = reflect.TypeFor[yaml.Node]()
	unmarshalerType     = reflect.TypeFor[yaml.Unmarshaler]()
	obsoleteUnmarshaler = reflect.TypeFor[interface {
		UnmarshalYAML(func(any) error) error
	}]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decodesItself reports whether values of t take their node whole.
func decodesItself(t reflect.Type) bool {
	if t == nodeType || t.Kind() == reflect.Interface {
		return true
	}
	p := reflect.PointerTo(t)
	return p.Implements(unmarshalerType) || p.Implements(obsoleteUnmarshaler)
}

func (w *strictWalker) walk(n *yaml.Node, t reflect.Type, path string) {
	if w.budget--; w.budget < 0 {
		if w.budget == -1 {
			w.failf(n.Line, path, "document too complex (excessive aliasing)")
		}
		return
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 1 {
			w.walk(n.Content[0], t, path)
		}
		return
	case yaml.AliasNode:
		if n.Alias == nil || w.active[n] {
			return // the real decode reports the cycle
		}
		w.active[n] = true
		w.walk(n.Alias, t, path)
		delete(w.active, n)
		return
	}
	if n.ShortTag() == "!!null" {
		return
	}
	for t.Kind() == reflect.Pointer {
		if decodesItself(t) {
			w.leaf(n, t, path)
			return
		}
		t = t.Elem()
	}
	if decodesItself(t) {
		w.leaf(n, t, path)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.mismatch(n, t, path, "a mapping")
			return
		}
		w.structMapping(n, t, path)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.mismatch(n, t, path, "a mapping")
			return
		}
		w.mapMapping(n, t, path)
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			w.mismatch(n, t, path, "a list")
			return
		}
		if t.Kind() == reflect.Array && len(n.Content) != t.Len() {
			w.failf(n.Line, path, "want a list of %d items, got %d", t.Len(), len(n.Content))
			return
		}
		for i, c := range n.Content {
			w.walk(c, t.Elem(), path+"["+strconv.Itoa(i)+"]")
		}
	default:
		w.leaf(n, t, path)
	}
}

// mismatch handles a node of the wrong kind for a composite type: yaml.v3
// may still accept it (a scalar for a TextUnmarshaler or []byte); if not,
// the error says what was expected rather than naming a Go type.
func (w *strictWalker) mismatch(n *yaml.Node, t reflect.Type, path, want string) {
	if n.Kind == yaml.ScalarNode && reflect.PointerTo(t).Implements(textUnmarshalerType) {
		w.leaf(n, t, path)
		return
	}
	if err := n.Decode(reflect.New(t).Interface()); err == nil {
		return
	}
	w.failf(n.Line, path, "want %s, got %s", want, describeNode(n))
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

// leaf decodes n into a scratch value of type t to find its errors.
func (w *strictWalker) leaf(n *yaml.Node, t reflect.Type, path string) {
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		w.errs = appendDecodeErrors(w.errs, err, n, path)
	}
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

func (w *strictWalker) structMapping(n *yaml.Node, t reflect.Type, path string) {
	info := structInfoOf(t)
	if info.selfDecoding {
		// An inline field decodes the whole mapping itself: any key may be its.
		w.leaf(n, t, path)
		return
	}
	seen := make(map[string]int, len(n.Content)/2)
	w.structKeys(n, t, info, path, seen, false)
}

// structKeys checks the keys of mapping n against a struct. merged is true
// for a mapping pulled in by a merge key (<<), whose keys may be overridden.
func (w *strictWalker) structKeys(n *yaml.Node, t reflect.Type, info *structInfo, path string, seen map[string]int, merged bool) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			w.merge(v, t, info, path, seen)
			continue
		}
		name, ok := keyName(k)
		if !ok {
			w.failf(k.Line, path, "a key must be a string, got %s", describeNode(k))
			continue
		}
		kpath := joinPath(path, name)
		if first, dup := seen[name]; dup {
			if !merged {
				w.failf(k.Line, kpath, "duplicate key (first at line %d)", first)
			}
			continue
		}
		if !merged {
			seen[name] = k.Line
		}
		if ft, ok := info.fields[name]; ok {
			w.walk(v, ft, kpath)
		} else if info.inlineMap != nil {
			w.walk(v, info.inlineMap, mapKeyPath(path, name))
		} else if len(info.names) == 0 {
			w.failf(k.Line, kpath, "unknown key (no keys are expected here)")
		} else {
			w.failf(k.Line, kpath, "unknown key (valid keys: %s)", strings.Join(info.names, ", "))
		}
	}
}

// merge walks the mapping(s) a merge key refers to.
func (w *strictWalker) merge(v *yaml.Node, t reflect.Type, info *structInfo, path string, seen map[string]int) {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	switch v.Kind {
	case yaml.MappingNode:
		w.structKeys(v, t, info, path, seen, true)
	case yaml.SequenceNode:
		for _, m := range v.Content {
			if m.Kind == yaml.AliasNode && m.Alias != nil {
				m = m.Alias
			}
			if m.Kind == yaml.MappingNode {
				w.structKeys(m, t, info, path, seen, true)
			} else {
				w.failf(m.Line, path, "a merge (<<) needs a mapping or a list of mappings")
			}
		}
	default:
		w.failf(v.Line, path, "a merge (<<) needs a mapping or a list of mappings")
	}
}

func (w *strictWalker) mapMapping(n *yaml.Node, t reflect.Type, path string) {
	seen := make(map[string]int, len(n.Content)/2)
	kt, et := t.Key(), t.Elem()
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			w.walk(v, t, path) // yaml.v3 merges the referenced mapping(s) in
			continue
		}
		rk := k
		if rk.Kind == yaml.AliasNode && rk.Alias != nil {
			rk = rk.Alias
		}
		name := rk.Value
		if rk.Kind != yaml.ScalarNode {
			name = describeNode(rk)
		}
		kpath := mapKeyPath(path, name)
		id := strconv.Itoa(int(rk.Kind)) + "\x00" + name
		if first, dup := seen[id]; dup {
			w.failf(k.Line, kpath, "duplicate key (first at line %d)", first)
			continue
		}
		seen[id] = k.Line
		if kt.Kind() != reflect.String || rk.Kind != yaml.ScalarNode {
			before := len(w.errs)
			w.walk(k, kt, kpath)
			if len(w.errs) > before {
				continue
			}
		}
		w.walk(v, et, kpath)
	}
}

// structInfo is what DecodeStrict needs of a struct: the keys yaml.v3
// decodes into it, mirroring yaml.v3's own field rules.
type structInfo struct {
	fields       map[string]reflect.Type
	names        []string     // in declaration order, for messages
	inlineMap    reflect.Type // element type of an ",inline" map, if any
	selfDecoding bool         // an ",inline" field decodes the mapping itself
}

var structInfos sync.Map // reflect.Type → *structInfo

func structInfoOf(t reflect.Type) *structInfo {
	if si, ok := structInfos.Load(t); ok {
		return si.(*structInfo)
	}
	si := &structInfo{fields: map[string]reflect.Type{}}
	si.add(t, 0)
	structInfos.Store(t, si)
	return si
}

func (si *structInfo) add(t reflect.Type, depth int) {
	if depth > 32 {
		return // a recursive inline; yaml.v3 rejects the type anyway
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.PkgPath != "" && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "" && !strings.Contains(string(f.Tag), ":") {
			tag = string(f.Tag)
		}
		if tag == "-" {
			continue
		}
		name, flags, _ := strings.Cut(tag, ",")
		inline := slices.Contains(strings.Split(flags, ","), "inline")
		if inline {
			ft := f.Type
			switch ft.Kind() {
			case reflect.Map:
				si.inlineMap = ft.Elem()
				continue
			case reflect.Struct, reflect.Pointer:
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct {
					if reflect.PointerTo(ft).Implements(unmarshalerType) {
						si.selfDecoding = true
					} else {
						si.add(ft, depth+1)
					}
					continue
				}
			}
			continue // yaml.v3 rejects the type
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if _, dup := si.fields[name]; !dup {
			si.names = append(si.names, name)
		}
		si.fields[name] = f.Type
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
