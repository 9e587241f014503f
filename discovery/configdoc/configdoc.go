// Package configdoc holds docs/configuration.md and the config structs to
// one set of keys: tests of the packages that own config sections read the
// doc's key tables (Tables) and their structs' yaml keys (StructKeys), and
// Compare names the key that differs, in either direction.
package configdoc

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Path is docs/configuration.md, found from this source file.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "docs", "configuration.md")
}

// Tables reads the key tables of a markdown file: for every "## x" or
// "### x" heading, the keys in the first column of tables whose header's
// first cell is "key". A cell may name several keys (`a`, `b`) and
// shorten a sibling (`keepalive.time` / `.timeout`). A table ends at the
// first line that is not a table row, as in markdown.
func Tables(path string) (map[string][]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	heading, inTable := "", false
	code := regexp.MustCompile("`([^`]+)`")
	for line := range strings.SplitSeq(string(data), "\n") {
		line = strings.TrimSpace(line)
		if h, ok := strings.CutPrefix(line, "#"); ok && !inTable {
			heading = strings.TrimSpace(strings.TrimLeft(h, "#"))
			continue
		}
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		first := strings.TrimSpace(cells[0])
		switch {
		case first == "key":
			inTable = true
			continue
		case !inTable || strings.HasPrefix(first, "---"):
			continue
		}
		prev := ""
		for _, m := range code.FindAllStringSubmatch(first, -1) {
			key := m[1]
			if strings.HasPrefix(key, ".") && prev != "" {
				key = prev[:strings.LastIndexByte(prev, '.')] + key
			}
			out[heading] = append(out[heading], key)
			prev = key
		}
	}
	return out, nil
}

// StructKeys lists the keys DecodeStrict accepts for a struct, as the
// docs write them: a nested struct's keys dotted under its own
// (keepalive.time); ",inline" structs' keys as the struct's own; an
// ",inline" map (keys another package checks) and "-" left out. A field
// that decodes itself (yaml.Node, a yaml.Unmarshaler) is one key.
func StructKeys(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, flags, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.PkgPath != "" && !f.Anonymous || name == "-" {
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		nested := ft.Kind() == reflect.Struct && ft != reflect.TypeFor[yaml.Node]() &&
			!reflect.PointerTo(ft).Implements(reflect.TypeFor[yaml.Unmarshaler]())
		switch {
		case slices.Contains(strings.Split(flags, ","), "inline"):
			if nested {
				out = append(out, StructKeys(ft)...)
			}
		case nested:
			for _, k := range StructKeys(ft) {
				out = append(out, name+"."+k)
			}
		default:
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			out = append(out, name)
		}
	}
	return out
}

// Compare reports the first key on which the doc and the config disagree:
// a key the config has and no table row covers, or a row naming a key the
// config does not have. A row may cover a whole nested block (the row
// `deletion_guard` for deletion_guard.max_withdraw, …).
func Compare(section string, doc, config []string) error {
	covered := func(key string, by []string) bool {
		for _, b := range by {
			if key == b || strings.HasPrefix(key, b+".") {
				return true
			}
		}
		return false
	}
	for _, k := range config {
		if !covered(k, doc) {
			return fmt.Errorf("%s: the config has key %q, which docs/configuration.md does not list", section, k)
		}
	}
	for _, d := range doc {
		found := false
		for _, k := range config {
			if k == d || strings.HasPrefix(k, d+".") {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%s: docs/configuration.md lists key %q, which the config does not have", section, d)
		}
	}
	return nil
}
