package discovery

import (
	"errors"
	"io/fs"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type strictInner struct {
	Addr    string   `yaml:"addr"`
	Retries int      `yaml:"retries"`
	Tags    []string `yaml:"tags"`
}

type strictCommon struct {
	Zone string `yaml:"zone"`
}

// selfDecoded takes any mapping: DecodeStrict must not look inside it.
type selfDecoded struct{ Keys []string }

func (s *selfDecoded) UnmarshalYAML(n *yaml.Node) error {
	for i := 0; i+1 < len(n.Content); i += 2 {
		s.Keys = append(s.Keys, n.Content[i].Value)
	}
	return nil
}

// nestedStrict decodes itself with DecodeStrict; its errors get the outer path.
type nestedStrict struct{ Port int }

func (s *nestedStrict) UnmarshalYAML(n *yaml.Node) error {
	var v struct {
		Port int `yaml:"port"`
	}
	if err := DecodeStrict(n, &v); err != nil {
		return err
	}
	s.Port = v.Port
	return nil
}

type strictConfig struct {
	strictCommon `yaml:",inline"`
	Name         string                  `yaml:"name"`
	Count        int                     `yaml:"count"`
	Every        Duration                `yaml:"every"`
	Inner        strictInner             `yaml:"inner"`
	Ptr          *strictInner            `yaml:"ptr"`
	List         []strictInner           `yaml:"list"`
	ByName       map[string]*strictInner `yaml:"by_name"`
	Labels       map[string]string       `yaml:"labels"`
	Self         selfDecoded             `yaml:"self"`
	Nested       nestedStrict            `yaml:"nested"`
	Any          any                     `yaml:"any"`
	Raw          yaml.Node               `yaml:"raw"`
	Ignored      string                  `yaml:"-"`
	Default      string                  // key "default"
}

func parseNode(t *testing.T, src string) *yaml.Node {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return &n
}

// configErrors returns the ConfigErrors of an errors.Join tree, failing on anything else.
func configErrors(t *testing.T, err error) []*ConfigError {
	t.Helper()
	var out []*ConfigError
	for _, leaf := range errorLeaves(err, nil) {
		ce, ok := leaf.(*ConfigError)
		if !ok {
			t.Fatalf("error %T (%v) is not a *ConfigError", leaf, leaf)
		}
		out = append(out, ce)
	}
	return out
}

func TestDecodeStrictValid(t *testing.T) {
	src := `
zone: z1
name: web
count: 3
every: 1m30s
inner: {addr: "10.0.0.1:80", retries: 2, tags: [a, b]}
ptr:
  addr: p
list:
  - addr: l0
  - addr: l1
    retries: 1
by_name:
  east: {addr: e}
  west: null
labels: {app.kubernetes.io/name: web}
self: {whatever: 1, goes: 2}
nested: {port: 8080}
any: {free: [form]}
raw: {kept: as-node}
default: d
`
	got := strictConfig{Count: 99}
	if err := DecodeStrict(parseNode(t, src), &got); err != nil {
		t.Fatalf("DecodeStrict: %v", err)
	}
	if got.Zone != "z1" || got.Name != "web" || got.Count != 3 || time.Duration(got.Every) != 90*time.Second {
		t.Errorf("scalars: %+v", got)
	}
	if !reflect.DeepEqual(got.Inner, strictInner{Addr: "10.0.0.1:80", Retries: 2, Tags: []string{"a", "b"}}) {
		t.Errorf("inner: %+v", got.Inner)
	}
	if got.Ptr == nil || got.Ptr.Addr != "p" || len(got.List) != 2 || got.List[1].Retries != 1 {
		t.Errorf("ptr/list: %+v %+v", got.Ptr, got.List)
	}
	if got.ByName["east"].Addr != "e" || got.ByName["west"] != nil {
		t.Errorf("by_name: %+v", got.ByName)
	}
	if got.Labels["app.kubernetes.io/name"] != "web" || !reflect.DeepEqual(got.Self.Keys, []string{"whatever", "goes"}) {
		t.Errorf("labels/self: %+v %+v", got.Labels, got.Self)
	}
	if got.Nested.Port != 8080 || got.Default != "d" || got.Raw.Kind != yaml.MappingNode {
		t.Errorf("nested/default/raw: %+v %q %v", got.Nested, got.Default, got.Raw.Kind)
	}
}

func TestDecodeStrictErrors(t *testing.T) {
	type want struct {
		line int
		key  string
		msg  string
	}
	cases := []struct {
		name string
		src  string
		want []want
	}{
		{"unknown top-level key", "name: a\nnmae: b\n", []want{{2, "nmae", "unknown key (valid keys: zone, name, count"}}},
		{"dash field is not a key", "ignored: x\n", []want{{1, "ignored", "unknown key"}}},
		{"unknown nested", "inner:\n  addr: a\n  port: 1\n", []want{{3, "inner.port", "unknown key (valid keys: addr, retries, tags)"}}},
		{"unknown in pointer", "ptr:\n  adr: a\n", []want{{2, "ptr.adr", "unknown key"}}},
		{"unknown in slice item", "list:\n  - addr: a\n  - addr: b\n    paths: [x]\n", []want{{4, "list[1].paths", "unknown key"}}},
		{"unknown in map value", "by_name:\n  east:\n    adr: x\n", []want{{3, "by_name.east.adr", "unknown key"}}},
		{"map key needing quotes", "by_name:\n  a.b:\n    adr: x\n", []want{{3, `by_name["a.b"].adr`, "unknown key"}}},
		{"duplicate key", "name: a\ncount: 1\nname: b\n", []want{{3, "name", "duplicate key (first at line 1)"}}},
		{"duplicate nested", "inner:\n  addr: a\n  addr: b\n", []want{{3, "inner.addr", "duplicate key (first at line 2)"}}},
		{"duplicate map key", "labels:\n  a: x\n  a: y\n", []want{{3, "labels.a", "duplicate key (first at line 2)"}}},
		{"duplicate via inline", "zone: a\nzone: b\n", []want{{2, "zone", "duplicate key"}}},
		{"type error", "count: abc\n", []want{{1, "count", "cannot unmarshal !!str `abc` into int"}}},
		{"nested type error", "list:\n  - retries: 1\n  - retries: many\n", []want{{3, "list[1].retries", "cannot unmarshal !!str `many` into int"}}},
		{"list for struct", "inner: [a]\n", []want{{1, "inner", "want a mapping, got a list"}}},
		{"scalar for list", "list: x\n", []want{{1, "list", "want a list, got !!str `x`"}}},
		{"bad duration", "every: 5\n", []want{{1, "every", `invalid duration "5"`}}},
		{"negative duration", "every: -1s\n", []want{{1, "every", "must not be negative"}}},
		{"duration mapping", "every: {a: 1}\n", []want{{1, "every", "want a duration"}}},
		{"nested DecodeStrict", "nested:\n  port: 1\n  host: x\n", []want{{3, "nested.host", "unknown key"}}},
		{
			"several errors sorted by line",
			"count: x\ninner:\n  nope: 1\nlist:\n  - addr: [1]\nextra: 2\nname: a\nname: b\n",
			[]want{
				{1, "count", "cannot unmarshal"},
				{3, "inner.nope", "unknown key"},
				{5, "list[0].addr", "cannot unmarshal !!seq into string"},
				{6, "extra", "unknown key"},
				{8, "name", "duplicate key"},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out strictConfig
			err := DecodeStrict(parseNode(t, tc.src), &out)
			if err == nil {
				t.Fatal("no error")
			}
			got := configErrors(t, err)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(got), len(tc.want), err)
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Line != w.line || g.Key != w.key || !strings.Contains(g.Err.Error(), w.msg) {
					t.Errorf("error %d = line %d key %q %q; want line %d key %q containing %q", i, g.Line, g.Key, g.Err, w.line, w.key, w.msg)
				}
			}
		})
	}
}

func TestDecodeStrictMerge(t *testing.T) {
	type item struct {
		Addr    string `yaml:"addr"`
		Retries int    `yaml:"retries"`
	}
	var out struct {
		Base item `yaml:"base"`
		Use  item `yaml:"use"`
		Bad  item `yaml:"bad"`
	}
	src := "base: &b {addr: a, retries: 1}\nuse:\n  <<: *b\n  addr: override\nbad:\n  <<: {addr: a, what: 1}\n"
	err := DecodeStrict(parseNode(t, src), &out)
	got := configErrors(t, err)
	if len(got) != 1 || got[0].Key != "bad.what" || got[0].Line != 6 {
		t.Fatalf("err = %v", err)
	}
	if out.Use.Addr != "override" || out.Use.Retries != 1 {
		t.Errorf("merge not applied: %+v", out.Use)
	}
}

func TestDecodeStrictEdges(t *testing.T) {
	var v struct{ A int }
	if err := DecodeStrict(nil, &v); err != nil {
		t.Errorf("nil node: %v", err)
	}
	if err := DecodeStrict(parseNode(t, ""), &v); err != nil {
		t.Errorf("empty document: %v", err)
	}
	if err := DecodeStrict(parseNode(t, "a: 1"), v); err == nil {
		t.Error("non-pointer accepted")
	}
	// A recursive alias must not hang the walk.
	var anyv struct {
		A any `yaml:"a"`
	}
	n := parseNode(t, "a: &x [*x]\n")
	_ = DecodeStrict(n, &anyv)
}

func TestDurationYAML(t *testing.T) {
	var d Duration
	if err := yaml.Unmarshal([]byte("5m"), &d); err != nil || time.Duration(d) != 5*time.Minute {
		t.Fatalf("5m: %v %v", d, err)
	}
	b, err := yaml.Marshal(struct {
		D Duration `yaml:"d"`
	}{Duration(2 * time.Second)})
	if err != nil || string(b) != "d: 2s\n" {
		t.Errorf("marshal: %q %v", b, err)
	}
	if Duration(1500*time.Millisecond).String() != "1.5s" {
		t.Error("String")
	}
	for _, bad := range []string{"abc", "-2s", "10"} {
		if err := yaml.Unmarshal([]byte(bad), &d); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestConfigErrorFormat(t *testing.T) {
	base := errors.New("boom")
	cases := []struct {
		e    ConfigError
		want string
	}{
		{ConfigError{File: "c.yaml", Line: 3, Key: "server.listen", Err: base}, "c.yaml:3: server.listen: boom"},
		{ConfigError{File: "c.yaml", Err: base}, "c.yaml: boom"},
		{ConfigError{Line: 3, Err: base}, "line 3: boom"},
		{ConfigError{Key: "k", Err: base}, "k: boom"},
		{ConfigError{Err: base}, "boom"},
	}
	for _, tc := range cases {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
		if !errors.Is(&tc.e, base) {
			t.Errorf("%q does not unwrap", tc.want)
		}
	}
}

func TestWithFile(t *testing.T) {
	if WithFile(nil, "f") != nil {
		t.Error("nil")
	}
	orig := &ConfigError{Line: 1, Err: errors.New("a")}
	other := &ConfigError{File: "services.yaml", Line: 2, Err: errors.New("b")}
	err := WithFile(errors.Join(orig, errors.Join(other, fs.ErrNotExist)), "c.yaml")
	got := configErrors(t, err)
	if len(got) != 3 {
		t.Fatalf("got %v", err)
	}
	if got[0].File != "c.yaml" || got[1].File != "services.yaml" || got[2].File != "c.yaml" {
		t.Errorf("files: %q %q %q", got[0].File, got[1].File, got[2].File)
	}
	if orig.File != "" {
		t.Error("WithFile modified its input")
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Error("wrapped error lost")
	}
	if want := "c.yaml:1: a\nservices.yaml:2: b\nc.yaml: file does not exist"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
}

func TestKeyLineAndPlaceErrors(t *testing.T) {
	var doc yaml.Node
	src := "a: 1\nnaming:\n  authority: x\nservices:\n  - one\n  - two\n"
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	node := doc.Content[0]
	for path, want := range map[string]int{"a": 1, "naming.authority": 3, "services[1]": 6, "naming.missing": 2, "missing": 1} {
		if got := KeyLine(node, path); got != want {
			t.Errorf("KeyLine(%q) = %d, want %d", path, got, want)
		}
	}
	err := PlaceErrors(node, errors.Join(&ConfigError{Key: "services[0]", Err: errors.New("bad")}, &ConfigError{Key: "a", Line: 9, Err: errors.New("kept")}))
	var lines []int
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		lines = append(lines, e.(*ConfigError).Line)
	}
	if !slices.Equal(lines, []int{5, 9}) {
		t.Errorf("placed lines %v, want [5 9]", lines)
	}
}
