package bench

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

// Defaults and bounds of the configuration.
const (
	DefaultServices      = 1000
	DefaultEndpoints     = 10
	DefaultHost          = "svc-%d.bench:8080"
	DefaultWeightChanges = 0.5
	DefaultSeed          = 1

	// MaxServices, MaxEndpoints and MaxTotalEndpoints bound what one
	// source generates, so a typo cannot exhaust the server's memory.
	MaxServices       = 1_000_000
	MaxEndpoints      = 100_000
	MaxTotalEndpoints = 10_000_000
	// MaxRate bounds rate (changes per second).
	MaxRate = 1_000_000

	// MinTick and MaxTick bound an explicit tick.
	MinTick = 100 * time.Microsecond
	MaxTick = time.Second
	// autoTickMin and autoTickMax bound the tick chosen from the rate.
	autoTickMin = time.Millisecond
	autoTickMax = 50 * time.Millisecond
)

// Config is a bench source's own configuration.
type Config struct {
	// Services is how many services the source generates (S); 0 generates
	// none.
	Services int
	// Endpoints is the number of endpoints of every service (E).
	Endpoints int
	// Host is the authority pattern: service i is fmt.Sprintf(Host, i). It
	// holds exactly one %d; without a port the service answers every port.
	Host string
	// Rate is the churn, in endpoint changes per second; 0 generates none.
	Rate float64
	// WeightChanges is the fraction of changes that change an endpoint's
	// weight in place; the others replace an endpoint by a new address.
	WeightChanges float64
	// Seed makes the sequence of changes reproducible.
	Seed uint64
	// Tick is the period at which changes are generated and handed over
	// in batches; 0 picks one from the rate (1/rate, within 1ms..50ms).
	Tick time.Duration
	// StartAfter delays the start of churn after the initial state.
	StartAfter time.Duration
	// Duration stops the churn that the config starts after this long; 0
	// never stops it.
	Duration time.Duration
	// Paused: churn does not start by itself; the control API starts it.
	Paused bool
	// Control is the loopback host:port of the control HTTP API; empty
	// serves none. Port 0 picks a free port (logged).
	Control string
}

// rawConfig is the YAML form of Config; pointers tell "absent" from zero.
type rawConfig struct {
	Services      *int                `yaml:"services"`
	Endpoints     *int                `yaml:"endpoints"`
	Host          *string             `yaml:"host"`
	Rate          *float64            `yaml:"rate"`
	WeightChanges *float64            `yaml:"weight_changes"`
	Seed          *uint64             `yaml:"seed"`
	Tick          *discovery.Duration `yaml:"tick"`
	StartAfter    discovery.Duration  `yaml:"start_after"`
	Duration      discovery.Duration  `yaml:"duration"`
	Paused        bool                `yaml:"paused"`
	Control       string              `yaml:"control"`
}

// DefaultConfig is the configuration of a bench source that sets nothing.
func DefaultConfig() Config {
	return Config{
		Services:      DefaultServices,
		Endpoints:     DefaultEndpoints,
		Host:          DefaultHost,
		WeightChanges: DefaultWeightChanges,
		Seed:          DefaultSeed,
	}
}

// newFromNode is the kind's constructor: strict decoding, then validation;
// errors are *discovery.ConfigError naming the key and its line.
func newFromNode(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
	var raw rawConfig
	if err := discovery.DecodeStrict(node, &raw); err != nil {
		return nil, err
	}
	cfg := DefaultConfig()
	if raw.Services != nil {
		cfg.Services = *raw.Services
	}
	if raw.Endpoints != nil {
		cfg.Endpoints = *raw.Endpoints
	}
	if raw.Host != nil {
		cfg.Host = *raw.Host
	}
	if raw.Rate != nil {
		cfg.Rate = *raw.Rate
	}
	if raw.WeightChanges != nil {
		cfg.WeightChanges = *raw.WeightChanges
	}
	if raw.Seed != nil {
		cfg.Seed = *raw.Seed
	}
	if raw.Tick != nil {
		cfg.Tick = time.Duration(*raw.Tick)
		if cfg.Tick == 0 {
			cfg.Tick = -1 // explicit 0 is refused below; 0 means "auto" only when absent
		}
	}
	cfg.StartAfter = time.Duration(raw.StartAfter)
	cfg.Duration = time.Duration(raw.Duration)
	cfg.Paused = raw.Paused
	cfg.Control = raw.Control

	src, err := NewSource(cfg, bc)
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return src, nil
}

// validate checks cfg and returns the authorities of its services. Errors
// are *discovery.ConfigError with the key at fault.
func (c Config) validate() ([]discovery.Authority, error) {
	bad := func(key, format string, args ...any) error {
		return &discovery.ConfigError{Key: key, Err: fmt.Errorf(format, args...)}
	}
	switch {
	case c.Services < 0 || c.Services > MaxServices:
		return nil, bad("services", "%d: want 0 to %d", c.Services, MaxServices)
	case c.Endpoints < 0 || c.Endpoints > MaxEndpoints:
		return nil, bad("endpoints", "%d: want 0 to %d", c.Endpoints, MaxEndpoints)
	case c.Services*c.Endpoints > MaxTotalEndpoints:
		return nil, bad("endpoints", "services x endpoints = %d: at most %d", c.Services*c.Endpoints, MaxTotalEndpoints)
	case math.IsNaN(c.Rate) || c.Rate < 0 || c.Rate > MaxRate:
		return nil, bad("rate", "%v: want 0 to %d changes per second", c.Rate, MaxRate)
	case c.Rate > 0 && c.Services*c.Endpoints == 0:
		return nil, bad("rate", "churn needs at least one endpoint (services and endpoints > 0)")
	case math.IsNaN(c.WeightChanges) || c.WeightChanges < 0 || c.WeightChanges > 1:
		return nil, bad("weight_changes", "%v: want a fraction from 0 to 1", c.WeightChanges)
	case c.Tick != 0 && (c.Tick < MinTick || c.Tick > MaxTick):
		return nil, bad("tick", "%v: want %v to %v (leave it out to derive it from the rate)", max(c.Tick, 0), MinTick, MaxTick)
	case c.StartAfter < 0:
		return nil, bad("start_after", "must not be negative")
	case c.Duration < 0:
		return nil, bad("duration", "must not be negative")
	}
	if err := checkHostPattern(c.Host); err != nil {
		return nil, bad("host", "%q: %v", c.Host, err)
	}
	if c.Control != "" {
		if err := checkLoopback(c.Control); err != nil {
			return nil, bad("control", "%q: %v", c.Control, err)
		}
	}
	// One %d makes every authority distinct.
	auths := make([]discovery.Authority, c.Services)
	for i := range auths {
		a, err := discovery.ParseAuthority(fmt.Sprintf(c.Host, i), 0)
		if err != nil {
			return nil, bad("host", "service %d: %v", i, err)
		}
		auths[i] = a
	}
	return auths, nil
}

// checkHostPattern accepts a pattern with exactly one %d and no other verb
// (%% is a literal percent sign).
func checkHostPattern(p string) error {
	verbs := 0
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			continue
		}
		if i+1 < len(p) && p[i+1] == '%' {
			i++
			continue
		}
		if i+1 < len(p) && p[i+1] == 'd' {
			verbs++
			i++
			continue
		}
		return errors.New("the only verb allowed is one %d (the service index)")
	}
	if verbs != 1 {
		return errors.New("want exactly one %d (the service index), e.g. svc-%d.bench:8080")
	}
	return nil
}

// checkLoopback accepts host:port on a loopback address or localhost: the
// control API has no authentication and must not be reachable from outside.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return errors.New("must be a loopback address (127.0.0.1, [::1] or localhost): the control API has no authentication")
	}
	return nil
}

// tickFor is the tick used at rate: the configured one, or 1/rate within
// autoTickMin..autoTickMax, so that a fast churn is handed over in batches
// of several changes and a slow one does not wake the source needlessly.
func (c Config) tickFor(rate float64) time.Duration {
	if c.Tick > 0 {
		return c.Tick
	}
	if rate <= 0 {
		return autoTickMax
	}
	d := time.Duration(float64(time.Second) / rate)
	return min(max(d, autoTickMin), autoTickMax)
}
