package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/sources/file"
)

const checkUsage = `usage: tributary check FILE...

Validates Tributary config files and services files (a file with a top-level
services: key). For a config, every services file its file sources' globs
match is validated too, with the file source's own parser, and a glob that
matches nothing is a warning.

Exit codes: 0 every file is valid (warnings are printed to stderr), 1 a file
is invalid or unreadable, 2 usage.`

func checkCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(fs.Output(), checkUsage) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	code := 0
	for _, path := range fs.Args() {
		r := check(path)
		for _, w := range r.warnings {
			fmt.Fprintln(stderr, w)
		}
		for _, f := range r.services {
			if f.err != nil {
				fmt.Fprintln(stderr, f.err)
				continue
			}
			fmt.Fprintf(stdout, "%s: ok\n", f.path)
		}
		if r.err != nil {
			fmt.Fprintln(stderr, r.err)
			code = 1
			continue
		}
		if r.failed() {
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "%s: ok\n", path)
	}
	return code
}

// checkResult is what check found in one file named on the command line:
// its own error, and for a config the services files its globs match.
type checkResult struct {
	err      error
	services []checkedFile
	warnings []string
}

type checkedFile struct {
	path string // as shown: relative to the working directory when under it
	err  error
}

func (r checkResult) failed() bool {
	for _, f := range r.services {
		if f.err != nil {
			return true
		}
	}
	return false
}

// check validates one file: a services file when its top level has a
// `services` key, a Tributary config otherwise; for a config, also every
// services file of its file sources.
func check(path string) checkResult {
	data, err := os.ReadFile(path)
	if err != nil {
		return checkResult{err: err}
	}
	if isServicesFile(data) {
		// The server's parser, so the error is the server's, line included.
		_, err := file.Parse(path, data)
		return checkResult{err: err}
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return checkResult{err: err}
	}
	// Building the sources validates each kind's own keys; it starts nothing.
	instances, err := cfg.BuildSources(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return checkResult{err: err}
	}
	if _, err := cfg.BuildFederation(); err != nil {
		return checkResult{err: err}
	}
	var r checkResult
	for i, in := range instances {
		src, ok := in.Source.(*file.Source)
		if !ok {
			continue
		}
		lines := pathLines(in.Config.Node)
		for j, pattern := range src.Patterns() {
			matches, err := servicesFiles(pattern)
			if err != nil {
				r.services = append(r.services, checkedFile{path: shown(pattern), err: err})
				continue
			}
			if len(matches) == 0 {
				line := in.Config.Line
				if j < len(lines) {
					line = lines[j]
				}
				r.warnings = append(r.warnings, fmt.Sprintf("%s:%d: sources[%d].paths[%d]: warning: %q matches no file (yet)",
					path, line, i, j, shown(pattern)))
			}
			for _, m := range matches {
				f := checkedFile{path: shown(m)}
				data, err := os.ReadFile(m)
				if err == nil {
					// Named as shown: the line is the server's, the path the user's.
					_, err = file.Parse(f.path, data)
				}
				f.err = err
				r.services = append(r.services, f)
			}
		}
	}
	return r
}

// servicesFiles lists the regular files a file source's absolute pattern
// matches, as the source does: filepath.Match per element, and a name that
// starts with a dot only for a pattern element that does (a Kubernetes
// ConfigMap's ..data folder is not entered by */).
func servicesFiles(pattern string) ([]string, error) {
	matches, err := filepath.Glob(pattern)
	if err != nil {
		return nil, err
	}
	pelems := strings.Split(pattern, string(filepath.Separator))
	var out []string
outer:
	for _, m := range matches {
		melems := strings.Split(m, string(filepath.Separator))
		if len(melems) != len(pelems) {
			continue
		}
		for i, e := range melems {
			if strings.HasPrefix(e, ".") && !strings.HasPrefix(pelems[i], ".") {
				continue outer
			}
		}
		fi, err := os.Stat(m)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		if fi.Mode().IsRegular() {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out, nil
}

// shown is a path as check prints it: relative to the working directory
// when it lies under it, else as it is.
func shown(path string) string {
	wd, err := os.Getwd()
	if err != nil || wd == string(filepath.Separator) {
		return path
	}
	rel, err := filepath.Rel(wd, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return path
	}
	return rel
}

// pathLines are the lines of the items of a file source's paths key.
func pathLines(node *yaml.Node) []int {
	if node == nil || node.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		if node.Content[i].Value == "paths" {
			var lines []int
			for _, item := range node.Content[i+1].Content {
				lines = append(lines, item.Line)
			}
			return lines
		}
	}
	return nil
}

// servicesKeyRE finds a top-level services key in a file the YAML reader
// cannot read: YAML (services: at the start of a line) or JSON ("services"
// anywhere: a broken JSON file has no reliable indentation).
var servicesKeyRE = regexp.MustCompile(`(?m)^(services|"services"|'services')[ \t]*:|^\s*\{\s*"services"\s*:`)

// isServicesFile tells a services file from a config. A file that does not
// parse is judged by its text, so that a services file with a syntax error
// is reported by the services parser — with the line the server reports —
// and not as a config.
func isServicesFile(data []byte) bool {
	var top map[string]yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&top); err != nil {
		return servicesKeyRE.Match(data)
	}
	_, ok := top["services"]
	return ok
}
