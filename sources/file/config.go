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

// DefaultSettle is how long a changed file must stay the same (size,
// modification time and content) before it is applied.
const DefaultSettle = 250 * time.Millisecond

// DefaultWithdrawConfirm is how long a file that shrinks sharply (no
// services or no endpoints left, or more than WithdrawMax of them gone)
// must keep saying so before the change is applied.
const DefaultWithdrawConfirm = 5 * time.Second

// DefaultWithdrawMax is the share of a file's endpoints one change may
// remove (net) without being held for confirmation.
const DefaultWithdrawMax = 0.5

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
	// Settle is how long two reads of a changed file must be apart, and
	// find the same size, modification time and content, before the
	// change is applied. nil means DefaultSettle; 0 applies the first
	// read after an event.
	Settle *time.Duration
	// WithdrawConfirm is how long a change that leaves a file without
	// services or endpoints, or cuts its endpoints by more than
	// WithdrawMax, is held before it is applied. nil means
	// DefaultWithdrawConfirm; 0 applies at once.
	WithdrawConfirm *time.Duration
	// WithdrawMax is the share (0..1) by which one change may cut a
	// file's endpoints without being held. nil means DefaultWithdrawMax.
	WithdrawMax *float64
}

// rawConfig is the YAML form of Config.
type rawConfig struct {
	Paths           []string            `yaml:"paths"`
	RefreshInterval *discovery.Duration `yaml:"refresh_interval"`
	Settle          *discovery.Duration `yaml:"settle"`
	WithdrawConfirm *discovery.Duration `yaml:"withdraw_confirm"`
	WithdrawMax     *discovery.Percent  `yaml:"withdraw_max"`
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
	if raw.Settle != nil {
		d := time.Duration(*raw.Settle)
		cfg.Settle = &d
	}
	if raw.WithdrawConfirm != nil {
		d := time.Duration(*raw.WithdrawConfirm)
		cfg.WithdrawConfirm = &d
	}
	if raw.WithdrawMax != nil {
		v := float64(*raw.WithdrawMax)
		cfg.WithdrawMax = &v
	}
	src, err := NewSource(cfg, bc)
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return src, nil
}

// settings is a validated Config.
type settings struct {
	patterns    []string
	interval    time.Duration
	settle      time.Duration
	confirm     time.Duration
	maxWithdraw float64
}

// validate checks the settings and makes every pattern absolute. Its
// errors are *discovery.ConfigError naming the key.
func (c Config) validate(baseDir string) (settings, error) {
	var v settings
	if len(c.Paths) == 0 {
		return v, &discovery.ConfigError{Key: "paths", Err: errors.New("required: at least one glob naming services files")}
	}
	bad := func(i int, format string, args ...any) error {
		return &discovery.ConfigError{Key: "paths[" + strconv.Itoa(i) + "]", Err: fmt.Errorf(format, args...)}
	}
	seen := make(map[string]bool, len(c.Paths))
	for i, p := range c.Paths {
		if strings.TrimSpace(p) == "" {
			return v, bad(i, "empty pattern")
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(baseDir, p)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return v, bad(i, "%q: %v", c.Paths[i], err)
		}
		if _, err := filepath.Match(abs, ""); err != nil {
			return v, bad(i, "%q: %v", c.Paths[i], err)
		}
		if filepath.Dir(abs) == abs {
			return v, bad(i, "%q names no files", c.Paths[i])
		}
		if !seen[abs] {
			seen[abs] = true
			v.patterns = append(v.patterns, abs)
		}
	}
	v.interval = c.RefreshInterval
	switch {
	case v.interval == 0:
		v.interval = DefaultRefreshInterval
	case v.interval < 0:
		return v, &discovery.ConfigError{Key: "refresh_interval", Err: fmt.Errorf("%v: must be positive", v.interval)}
	}
	v.settle, v.confirm, v.maxWithdraw = DefaultSettle, DefaultWithdrawConfirm, DefaultWithdrawMax
	if c.Settle != nil {
		if v.settle = *c.Settle; v.settle < 0 {
			return v, &discovery.ConfigError{Key: "settle", Err: fmt.Errorf("%v: must not be negative", v.settle)}
		}
	}
	if c.WithdrawConfirm != nil {
		if v.confirm = *c.WithdrawConfirm; v.confirm < 0 {
			return v, &discovery.ConfigError{Key: "withdraw_confirm", Err: fmt.Errorf("%v: must not be negative", v.confirm)}
		}
	}
	if c.WithdrawMax != nil {
		if v.maxWithdraw = *c.WithdrawMax; v.maxWithdraw < 0 || v.maxWithdraw > 1 {
			return v, &discovery.ConfigError{Key: "withdraw_max", Err: fmt.Errorf("%v: must be from 0%% to 100%%", v.maxWithdraw*100)}
		}
	}
	return v, nil
}
