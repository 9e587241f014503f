package file

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

// DefaultRefreshInterval is how often every file is re-read besides the
// filesystem watch.
const DefaultRefreshInterval = 5 * time.Minute

// Config is a file source's own configuration.
type Config struct {
	// Paths are glob patterns (filepath.Match syntax) naming services
	// files. A relative pattern is resolved against BuildContext.BaseDir.
	// As in a shell, a name starting with a dot only matches a pattern
	// whose last element starts with a dot.
	Paths []string
	// RefreshInterval is the period of the full re-read; 0 means
	// DefaultRefreshInterval.
	RefreshInterval time.Duration
}

// rawConfig is the YAML form of Config.
type rawConfig struct {
	Paths           []string            `yaml:"paths"`
	RefreshInterval *discovery.Duration `yaml:"refresh_interval"`
}

// newFromNode is the kind's constructor: it decodes the kind's keys
// strictly and builds the source. Its errors are *discovery.ConfigError
// with the line and key at fault.
func newFromNode(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
	var raw rawConfig
	if err := discovery.DecodeStrict(node, &raw); err != nil {
		return nil, err
	}
	cfg := Config{Paths: raw.Paths}
	if raw.RefreshInterval != nil {
		if *raw.RefreshInterval <= 0 {
			return nil, &discovery.ConfigError{Line: discovery.KeyLine(node, "refresh_interval"), Key: "refresh_interval",
				Err: errors.New("must be positive (it is the period of the full re-read)")}
		}
		cfg.RefreshInterval = time.Duration(*raw.RefreshInterval)
	}
	src, err := NewSource(cfg, bc)
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return src, nil
}

// validate checks the settings and makes every pattern absolute. Its
// errors are *discovery.ConfigError naming the key.
func (c Config) validate(baseDir string) (patterns []string, interval time.Duration, err error) {
	if len(c.Paths) == 0 {
		return nil, 0, &discovery.ConfigError{Key: "paths", Err: errors.New("required: at least one glob naming services files")}
	}
	bad := func(i int, format string, args ...any) error {
		return &discovery.ConfigError{Key: "paths[" + strconv.Itoa(i) + "]", Err: fmt.Errorf(format, args...)}
	}
	seen := make(map[string]bool, len(c.Paths))
	for i, p := range c.Paths {
		if strings.TrimSpace(p) == "" {
			return nil, 0, bad(i, "empty pattern")
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(baseDir, p)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, 0, bad(i, "%q: %v", c.Paths[i], err)
		}
		if _, err := filepath.Match(abs, ""); err != nil {
			return nil, 0, bad(i, "%q: %v", c.Paths[i], err)
		}
		if filepath.Dir(abs) == abs {
			return nil, 0, bad(i, "%q names no files", c.Paths[i])
		}
		if !seen[abs] {
			seen[abs] = true
			patterns = append(patterns, abs)
		}
	}
	interval = c.RefreshInterval
	switch {
	case interval == 0:
		interval = DefaultRefreshInterval
	case interval < 0:
		return nil, 0, &discovery.ConfigError{Key: "refresh_interval", Err: fmt.Errorf("%v: must be positive", interval)}
	}
	return patterns, interval, nil
}
