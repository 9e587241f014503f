package configdoc

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestTables(t *testing.T) {
	md := "# Title\n\n## server\n\n| key | default |\n| --- | --- |\n| `listen` | x |\n| `keepalive.time` / `.timeout` | y |\n\n" +
		"| `after.blank` | a row after a blank line is no table row |\n\n" +
		"### Kinds\n\n| kind | for |\n| --- | --- |\n| `file` | not a key table |\n\n## health\n\n| key | meaning |\n| --- | --- |\n| `a`, `b` | two keys |\n"
	path := filepath.Join(t.TempDir(), "c.md")
	if err := os.WriteFile(path, []byte(md), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := Tables(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"server": {"listen", "keepalive.time", "keepalive.timeout"}, "health": {"a", "b"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Tables = %v, want %v", got, want)
	}
}

type inner struct {
	Time    int `yaml:"time"`
	Timeout int `yaml:"timeout"`
}

type common struct {
	Zone string `yaml:"zone"`
}

type keysOf struct {
	common  `yaml:",inline"`
	Listen  string               `yaml:"listen"`
	Keep    *inner               `yaml:"keepalive"`
	TLS     yaml.Node            `yaml:"tls"`
	Own     map[string]yaml.Node `yaml:",inline"`
	Skipped string               `yaml:"-"`
	Plain   int
}

func TestStructKeysAndCompare(t *testing.T) {
	keys := StructKeys(reflect.TypeFor[keysOf]())
	if want := []string{"zone", "listen", "keepalive.time", "keepalive.timeout", "tls", "plain"}; !reflect.DeepEqual(keys, want) {
		t.Fatalf("StructKeys = %v, want %v", keys, want)
	}
	for _, tc := range []struct {
		doc  []string
		want string
	}{
		{[]string{"zone", "listen", "keepalive.time", "keepalive.timeout", "tls", "plain"}, ""},
		{[]string{"zone", "listen", "keepalive", "tls", "plain"}, ""}, // one row for the block
		{[]string{"zone", "listen", "keepalive.time", "tls", "plain"}, `the config has key "keepalive.timeout"`},
		{[]string{"zone", "listen", "keepalive", "tls", "plain", "lissen"}, `lists key "lissen"`},
		{[]string{"zone", "listen", "keepalive", "tls.cert", "plain"}, `the config has key "tls"`},
	} {
		err := Compare("s", tc.doc, keys)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Compare(%v) = %v, want %q", tc.doc, err, tc.want)
		}
	}
}
