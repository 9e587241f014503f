package health

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

// Config is what the checker reads from the config file: the health:
// section's keys for active checks, and the health_check block of every
// source. Decode fills it in; its zero value is the defaults.
type Config struct {
	// MaxConcurrentChecks bounds the active health checks in flight, for
	// all sources together (health.max_concurrent_checks).
	MaxConcurrentChecks int
	// Sources holds the checks of each source with a health_check block,
	// by source name.
	Sources map[string]*Checks
}

// DefaultMaxConcurrentChecks is the default bound of health checks in flight.
const DefaultMaxConcurrentChecks = 512

// rawSection is the health: section as this package reads it; the core
// reads panic_threshold (discovery.Config.PanicThreshold).
type rawSection struct {
	PanicThreshold      yaml.Node `yaml:"panic_threshold"`
	MaxConcurrentChecks *int      `yaml:"max_concurrent_checks"`
}

// Decode reads the checker's settings from a parsed config: the health:
// section and each source's health_check block. It is a
// discovery.ConfigDecoder; every problem is a ConfigError with its
// file:line and key path.
func (h *Config) Decode(c *discovery.Config) error {
	*h = Config{MaxConcurrentChecks: DefaultMaxConcurrentChecks}
	var errs []error
	var raw rawSection
	if err := c.Health.Decode(&raw); err != nil {
		errs = append(errs, err)
	}
	if v := raw.MaxConcurrentChecks; v != nil {
		if *v < 1 || *v > 100000 {
			errs = append(errs, c.Health.Key("max_concurrent_checks").Errorf("must be from 1 to 100000, got %d", *v))
		} else {
			h.MaxConcurrentChecks = *v
		}
	}
	for _, sc := range c.Invalid {
		var raw rawChecks
		if err := sc.HealthCheck.Decode(&raw); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sc := range c.Sources {
		if sc.HealthCheck.Node == nil {
			continue
		}
		checks, err := decodeChecks(sc.HealthCheck)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if h.Sources == nil {
			h.Sources = map[string]*Checks{}
		}
		h.Sources[sc.Name] = checks
	}
	return errors.Join(errs...)
}

// Check types of Check.Type.
const (
	CheckTCP  = "tcp"  // a TCP connect
	CheckHTTP = "http" // an HTTP GET with an expected status
	CheckGRPC = "grpc" // the standard grpc.health.v1 Check
	CheckNone = "none" // no active check: the source's health stands
)

// Check is one active health check, every field resolved (defaults
// applied, a per-service override merged over its source's settings).
type Check struct {
	// Type is CheckTCP, CheckHTTP, CheckGRPC or CheckNone.
	Type string
	// Interval between two checks of one endpoint; each is moved by up to
	// ±Jitter of it at random.
	Interval time.Duration
	Jitter   float64
	// Timeout bounds one check.
	Timeout time.Duration
	// HealthyThreshold consecutive successes readmit a failing endpoint;
	// UnhealthyThreshold consecutive failures evict a passing one.
	HealthyThreshold   int
	UnhealthyThreshold int
	// InitialHealth is the state of a new endpoint until its checks say
	// otherwise: discovery.HealthUnknown (served; the first check decides),
	// discovery.HealthPassing or discovery.HealthCritical (both then need the thresholds).
	InitialHealth discovery.Health
	// HoldDown is how long an endpoint that flaps (falls again less than
	// MaxHoldDown after it was readmitted) stays evicted before it may be
	// readmitted; it doubles with each further flap up to MaxHoldDown. An
	// endpoint that stays up for MaxHoldDown is forgiven. 0 disables it.
	HoldDown    time.Duration
	MaxHoldDown time.Duration
	// Port, when not 0, is checked instead of the endpoint's own port.
	Port uint16
	// Path, Host and ExpectedStatus are for http: the GET request path
	// (with query), the Host header (default: the address checked), and
	// the status codes that pass.
	Path           string
	Host           string
	ExpectedStatus []StatusRange
	// Service is the grpc.health.v1 service name asked for ("" is the
	// server's overall health).
	Service string
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Min, Max int }

// StatusOK reports whether code is in one of the check's expected ranges.
func (h *Check) StatusOK(code int) bool {
	for _, r := range h.ExpectedStatus {
		if r.Min <= code && code <= r.Max {
			return true
		}
	}
	return false
}

// DefaultCheck is a health_check block with no keys.
func DefaultCheck() Check {
	return Check{
		Type:               CheckTCP,
		Interval:           10 * time.Second,
		Jitter:             0.1,
		Timeout:            2 * time.Second,
		HealthyThreshold:   2,
		UnhealthyThreshold: 3,
		InitialHealth:      discovery.HealthUnknown,
		HoldDown:           30 * time.Second,
		MaxHoldDown:        5 * time.Minute,
		Path:               "/",
		ExpectedStatus:     []StatusRange{{200, 399}},
	}
}

// Checks is a source's health_check block: the check of its
// services, and per-authority overrides. The checks are pointers so that
// their identity can key the checker's state; they must not be modified.
type Checks struct {
	Default  *Check
	Services map[discovery.Authority]*Check
}

// For returns the check of authority a: the override for a, else the one
// for its bare host (written without a port), else the source's default.
func (c *Checks) For(a discovery.Authority) *Check {
	if hc, ok := c.Services[a]; ok {
		return hc
	}
	if a.Port != 0 {
		if hc, ok := c.Services[discovery.Authority{Host: a.Host}]; ok {
			return hc
		}
	}
	return c.Default
}

// rawCheck is one health check block as written; nil is "not given".
type rawCheck struct {
	Type               *string             `yaml:"type"`
	Interval           *discovery.Duration `yaml:"interval"`
	Jitter             *discovery.Percent  `yaml:"jitter"`
	Timeout            *discovery.Duration `yaml:"timeout"`
	HealthyThreshold   *int                `yaml:"healthy_threshold"`
	UnhealthyThreshold *int                `yaml:"unhealthy_threshold"`
	InitialHealth      *string             `yaml:"initial_health"`
	HoldDown           *discovery.Duration `yaml:"hold_down"`
	MaxHoldDown        *discovery.Duration `yaml:"max_hold_down"`
	Port               *int                `yaml:"port"`
	Path               *string             `yaml:"path"`
	Host               *string             `yaml:"host"`
	ExpectedStatus     *string             `yaml:"expected_status"`
	Service            *string             `yaml:"service"`
}

// rawChecks is a source's health_check: a check plus services.
type rawChecks struct {
	rawCheck `yaml:",inline"`
	Services map[string]rawCheck `yaml:"services"`
}

// decodeChecks reads a source's health_check block: the source's check,
// and per-authority overrides merged over it.
func decodeChecks(sec discovery.Section) (*Checks, error) {
	var raw rawChecks
	if err := sec.Decode(&raw); err != nil {
		return nil, err
	}
	var errs []error
	def := DefaultCheck()
	errs = mergeCheck(&def, &raw.rawCheck, sec, errs)
	cfg := &Checks{Default: &def}
	for _, e := range sec.Key("services").Entries() {
		name, svc := e.Key, e.Value
		a, err := discovery.ParseAuthority(name, 0)
		if err != nil {
			errs = append(errs, e.KeyErrorf("%v", err))
			continue
		}
		if _, dup := cfg.Services[a]; dup {
			errs = append(errs, e.KeyErrorf("a second override for %s", a))
			continue
		}
		rs, ok := raw.Services[name]
		if !ok {
			continue // a merge key or an alias DecodeStrict reported
		}
		hc := def
		errs = mergeCheck(&hc, &rs, svc, errs)
		if cfg.Services == nil {
			cfg.Services = make(map[discovery.Authority]*Check)
		}
		cfg.Services[a] = &hc
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}

// mergeCheck writes the keys given in raw over hc and validates the
// result; sec is the block, for the errors' places. It returns errs with
// the problems found appended.
func mergeCheck(hc *Check, raw *rawCheck, sec discovery.Section, errs []error) []error {
	fail := func(key, format string, args ...any) {
		errs = append(errs, sec.Key(key).Errorf(format, args...))
	}
	if raw.Type != nil {
		switch *raw.Type {
		case CheckTCP, CheckHTTP, CheckGRPC, CheckNone:
			hc.Type = *raw.Type
		default:
			fail("type", "unknown check type %q (want tcp, http, grpc or none)", *raw.Type)
		}
	}
	mergeCheckTiming(hc, raw, fail)
	mergeCheckVerdicts(hc, raw, fail)
	mergeCheckTarget(hc, raw, fail)
	return errs
}

// checkFail reports a problem with one key of a health check block.
type checkFail func(key, format string, args ...any)

// mergeCheckTiming merges when checks run: interval, jitter and timeout.
func mergeCheckTiming(hc *Check, raw *rawCheck, fail checkFail) {
	if raw.Interval != nil {
		hc.Interval = time.Duration(*raw.Interval)
		if hc.Interval < time.Millisecond {
			fail("interval", "must be at least 1ms")
		}
	}
	if raw.Jitter != nil {
		hc.Jitter = float64(*raw.Jitter)
		if hc.Jitter > 0.5 {
			fail("jitter", "%s is too much: at most 50%% of the interval", *raw.Jitter)
		}
	}
	if raw.Timeout != nil {
		hc.Timeout = time.Duration(*raw.Timeout)
		if hc.Timeout <= 0 {
			fail("timeout", "must be positive")
		}
	}
}

// mergeCheckVerdicts merges how results become health: the thresholds,
// the initial health and the hold-down of flapping endpoints.
func mergeCheckVerdicts(hc *Check, raw *rawCheck, fail checkFail) {
	threshold := func(key string, v *int, into *int) {
		if v == nil {
			return
		}
		if *v < 1 || *v > 100 {
			fail(key, "must be from 1 to 100, got %d", *v)
			return
		}
		*into = *v
	}
	threshold("healthy_threshold", raw.HealthyThreshold, &hc.HealthyThreshold)
	threshold("unhealthy_threshold", raw.UnhealthyThreshold, &hc.UnhealthyThreshold)
	if raw.InitialHealth != nil {
		switch h, err := discovery.ParseHealth(*raw.InitialHealth); {
		case err != nil || h == discovery.HealthWarning:
			fail("initial_health", "unknown initial health %q (want unknown, passing or critical)", *raw.InitialHealth)
		default:
			hc.InitialHealth = h
		}
	}
	if raw.HoldDown != nil {
		hc.HoldDown = time.Duration(*raw.HoldDown)
	}
	if raw.MaxHoldDown != nil {
		hc.MaxHoldDown = time.Duration(*raw.MaxHoldDown)
	}
	if hc.HoldDown > 0 && hc.MaxHoldDown < hc.HoldDown && (raw.HoldDown != nil || raw.MaxHoldDown != nil) {
		fail("max_hold_down", "max_hold_down %s is shorter than hold_down %s", hc.MaxHoldDown, hc.HoldDown)
	}
}

// mergeCheckTarget merges what a check asks: the port, and the keys of
// one check type only (path, host and expected_status for http, service
// for grpc). hc.Type must be merged already.
func mergeCheckTarget(hc *Check, raw *rawCheck, fail checkFail) {
	if raw.Port != nil {
		if *raw.Port < 0 || *raw.Port > 65535 {
			fail("port", "must be from 1 to 65535 (or 0 for the endpoint's port), got %d", *raw.Port)
		} else {
			hc.Port = uint16(*raw.Port)
		}
	}
	onlyFor := func(key, typ string, given bool) {
		if given && hc.Type != typ {
			fail(key, "applies to %s checks only (this check is %s)", typ, hc.Type)
		}
	}
	onlyFor("path", CheckHTTP, raw.Path != nil)
	onlyFor("host", CheckHTTP, raw.Host != nil)
	onlyFor("expected_status", CheckHTTP, raw.ExpectedStatus != nil)
	onlyFor("service", CheckGRPC, raw.Service != nil)
	if raw.Path != nil {
		if !strings.HasPrefix(*raw.Path, "/") || strings.ContainsAny(*raw.Path, " \t\r\n") {
			fail("path", "%q must start with / and contain no spaces", *raw.Path)
		} else {
			hc.Path = *raw.Path
		}
	}
	if raw.Host != nil {
		if strings.ContainsAny(*raw.Host, " \t\r\n/") {
			fail("host", "%q is not a host name", *raw.Host)
		} else {
			hc.Host = *raw.Host
		}
	}
	if raw.ExpectedStatus != nil {
		ranges, err := parseStatusRanges(*raw.ExpectedStatus)
		if err != nil {
			fail("expected_status", "%v", err)
		} else {
			hc.ExpectedStatus = ranges
		}
	}
	if raw.Service != nil {
		hc.Service = *raw.Service
	}
}

// parseStatusRanges reads "200-299,301,418".
func parseStatusRanges(s string) ([]StatusRange, error) {
	var out []StatusRange
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
			return nil, fmt.Errorf("%q: want HTTP status codes or ranges from 100 to 599, such as 200-299,301", s)
		}
		out = append(out, StatusRange{a, b})
	}
	return out, nil
}
