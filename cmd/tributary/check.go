package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/sources/file"
)

func checkCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: tributary check FILE...\n\nValidates Tributary config files and services files (a file with a top-level `services:` key).")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	code := 0
	for _, path := range fs.Args() {
		if err := check(path); err != nil {
			fmt.Fprintln(stderr, err)
			code = 1
			continue
		}
		fmt.Fprintf(stdout, "%s: ok\n", path)
	}
	return code
}

// check validates one file: a services file when its top level has a
// `services` key, a Tributary config otherwise.
func check(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if isServicesFile(data) {
		_, err := file.Parse(path, data)
		return err
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return err
	}
	// Building the sources validates each kind's own keys; it starts nothing.
	if _, err := cfg.BuildSources(slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		return err
	}
	_, err = cfg.BuildFederation()
	return err
}

func isServicesFile(data []byte) bool {
	var top map[string]yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&top); err != nil {
		return false
	}
	_, ok := top["services"]
	return ok
}
