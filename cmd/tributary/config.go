package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	dnsedge "github.com/tributary-mesh/tributary/destination/dns"
	"github.com/tributary-mesh/tributary/destination/policy"
	"github.com/tributary-mesh/tributary/destination/tlsauth"
	"github.com/tributary-mesh/tributary/destination/xds"
	"github.com/tributary-mesh/tributary/discovery"
	activehealth "github.com/tributary-mesh/tributary/discovery/health"
)

// config is the config file, each section decoded by the package it
// configures: the core's (sources, federation) by discovery, server: here,
// server.tls by tlsauth, the active checks by discovery/health.
type config struct {
	*discovery.Config
	Server ServerConfig
	// TLS is server.tls; nil when the API is plaintext.
	TLS    *tlsauth.Config
	Checks activehealth.Config
	// DNS is the dns: section (destination/dns); nil when absent.
	DNS *dnsedge.Settings
	// XDS is the xds: section (destination/xds); nil when off.
	XDS *xds.Settings
}

// loadConfig reads the config file at path and has every section decoded,
// so that one run reports every problem of the file (tributary check).
func loadConfig(path string) (*config, error) {
	c := &config{}
	core, err := discovery.LoadConfig(path, c.decodeServer, c.Checks.Decode, c.decodeDNS, c.decodeXDS)
	if err != nil {
		return nil, err
	}
	c.Config = core
	return c, nil
}

// decodeDNS is the discovery.ConfigDecoder of the dns: section.
func (c *config) decodeDNS(core *discovery.Config) error {
	var err error
	c.DNS, err = dnsedge.DecodeSection(core.DNS)
	return err
}

// decodeXDS is the discovery.ConfigDecoder of the xds: section.
func (c *config) decodeXDS(core *discovery.Config) error {
	var err error
	c.XDS, err = xds.DecodeSection(core.XDS)
	return err
}

// decodeServer is the discovery.ConfigDecoder of the server: section.
func (c *config) decodeServer(core *discovery.Config) error {
	var err error
	c.Server, c.TLS, err = parseServer(core.Server)
	return err
}

// maxStartupTimeout bounds server.startup_timeout: the proxy gives up on a
// Get whose first message takes 3s, so the wait for sources must end before.
const maxStartupTimeout = 3 * time.Second

// ServerConfig is the server: section.
type ServerConfig struct {
	// Listen is the destination gRPC API address, host:port.
	Listen string `yaml:"listen"`
	// Admin is the admin HTTP address, host:port.
	Admin string `yaml:"admin"`
	// StartupTimeout bounds how long a Get waits for every source to sync
	// before its first answer. Less than maxStartupTimeout; 0 does not wait.
	StartupTimeout discovery.Duration `yaml:"startup_timeout"`
	// ShutdownTimeout bounds the graceful drain; 0 stops at once.
	ShutdownTimeout discovery.Duration `yaml:"shutdown_timeout"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json.
	LogFormat string `yaml:"log_format"`
	// Keepalive is the destination API's HTTP/2 keepalive and ping policy;
	// nil when the section is absent: KeepaliveSettings has the defaults.
	Keepalive *KeepaliveConfig `yaml:"keepalive"`
	// TLS is server.tls, which destination/tlsauth decodes (config.TLS).
	TLS yaml.Node `yaml:"tls"`
	// Streams bounds what clients can cost: admission of new streams and
	// the time a client may stop reading; nil means the defaults (0 values
	// in the section mean the destination package's defaults too).
	Streams *StreamsConfig `yaml:"streams"`
	// InboundPolicy is the default inbound authorization the policy API
	// (destination/policy) gives a standalone proxy, per port.
	InboundPolicy policy.Inbound `yaml:"inbound_policy"`
	// MemoryLimitRatio sets the Go runtime's soft memory limit (GOMEMLIMIT)
	// to this share of the container's memory limit (cgroup v2 or v1), as
	// Prometheus's auto-gomemlimit does; 0 leaves it unset. The GOMEMLIMIT
	// and AUTOMEMLIMIT environment variables win over it.
	MemoryLimitRatio float64 `yaml:"memory_limit_ratio"`
}

// StreamsConfig is server.streams.
type StreamsConfig struct {
	// SendTimeout: a client that takes no update for this long has its
	// connection closed (it reconnects for a fresh snapshot). 0: the
	// default (30s); negative is refused — use a large value instead.
	SendTimeout discovery.Duration `yaml:"send_timeout"`
	// NewPerSecond and NewBurst rate-limit new streams (ResourceExhausted
	// with a retry delay beyond them). 0: the defaults (20000/s; a burst
	// of one second's worth of the rate);
	// NewPerSecond -1 disables the limit.
	NewPerSecond float64 `yaml:"new_per_second"`
	NewBurst     int     `yaml:"new_burst"`
	// Max bounds open streams (ResourceExhausted with a retry delay
	// beyond it). 0: the default (150000, sized from the memory of an idle
	// stream); -1: no bound.
	Max int `yaml:"max"`
	// MaxPerConnection bounds the concurrent streams of one client
	// connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; a client over it
	// waits for a free slot). 0: the default (2000); -1: no bound.
	MaxPerConnection int `yaml:"max_per_connection"`
	// MaxHeaderBytes bounds a request's header list (HTTP/2
	// SETTINGS_MAX_HEADER_LIST_SIZE: names + values + 32 bytes a field);
	// a stream over it is reset before it reaches the server. 0: the
	// default (16 KiB); else from 1 KiB to 16 MiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
}

// DefaultKeepalive is the keepalive of a config without server.keepalive.
func DefaultKeepalive() KeepaliveConfig {
	return KeepaliveConfig{
		Time:            discovery.Duration(30 * time.Second),
		Timeout:         discovery.Duration(10 * time.Second),
		MinPingInterval: discovery.Duration(10 * time.Second),
	}
}

// KeepaliveSettings is Keepalive, or DefaultKeepalive when it is nil.
func (s ServerConfig) KeepaliveSettings() KeepaliveConfig {
	if s.Keepalive == nil {
		return DefaultKeepalive()
	}
	return *s.Keepalive
}

// KeepaliveConfig is server.keepalive; a key left out takes its value from
// DefaultKeepalive.
type KeepaliveConfig struct {
	// Time: a connection with no activity for this long is pinged. At
	// least 1s.
	Time discovery.Duration `yaml:"time"`
	// Timeout: a connection whose ping is not answered within this is
	// closed, which ends its streams (a half-open connection is reaped).
	Timeout discovery.Duration `yaml:"timeout"`
	// MinPingInterval: a client that pings more often than this is sent
	// GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and disconnected (after
	// gRPC's allowance of two such pings).
	MinPingInterval discovery.Duration `yaml:"min_ping_interval"`
}

// DefaultServerConfig is the server section of a config that leaves it out.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		Listen:           "127.0.0.1:8086",
		Admin:            "127.0.0.1:9996",
		StartupTimeout:   discovery.Duration(2 * time.Second),
		ShutdownTimeout:  discovery.Duration(10 * time.Second),
		LogLevel:         "info",
		LogFormat:        "text",
		MemoryLimitRatio: 0.9,
	}
}

// SlogLevel is LogLevel as a slog.Level (info for anything unknown).
func (s ServerConfig) SlogLevel() slog.Level {
	switch s.LogLevel {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// parseServer decodes and checks the server: section, and has tlsauth
// decode server.tls. Keys the section leaves out keep their defaults.
func parseServer(sec discovery.Section) (ServerConfig, *tlsauth.Config, error) {
	s := DefaultServerConfig()
	var errs []error
	if err := sec.Decode(&s); err != nil {
		errs = append(errs, err)
	}
	fail := func(key, format string, args ...any) {
		errs = append(errs, sec.Key(key).Errorf(format, args...))
	}
	addr := func(key, v string) {
		_, port, err := net.SplitHostPort(v)
		if err == nil {
			if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
				err = fmt.Errorf("port %q is not a number from 0 to 65535", port)
			}
		}
		if err != nil {
			fail(key, "%q must be host:port (%v)", v, err)
		}
	}
	addr("listen", s.Listen)
	addr("admin", s.Admin)
	if s.Listen == s.Admin && !strings.HasSuffix(s.Listen, ":0") {
		fail("admin", "%q is also server.listen", s.Admin)
	}
	if time.Duration(s.StartupTimeout) >= maxStartupTimeout {
		fail("startup_timeout", "%s is too long: it must be less than %s, the time a proxy waits for a Get's first message", s.StartupTimeout, maxStartupTimeout)
	}
	if r := s.MemoryLimitRatio; r < 0 || r > 1 || r != r {
		fail("memory_limit_ratio", "%v: want a share from 0 (off) to 1 of the container's memory limit", r)
	}
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		fail("log_level", "unknown level %q (want debug, info, warn or error)", s.LogLevel)
	}
	switch s.LogFormat {
	case "text", "json":
	default:
		fail("log_format", "unknown format %q (want text or json)", s.LogFormat)
	}
	if s.Keepalive != nil {
		errs = s.Keepalive.settle(sec.Key("keepalive"), errs)
	}
	tls, err := tlsauth.ParseConfig(sec.Key("tls"))
	if err != nil {
		errs = append(errs, err)
	}
	if s.Streams != nil {
		errs = s.Streams.check(sec.Key("streams"), errs)
	}
	if err := s.InboundPolicy.Check(); err != nil {
		fail("inbound_policy", "%v", err)
	}
	return s, tls, errors.Join(errs...)
}

// settle fills in the keys server.keepalive (sec) leaves out and checks
// the others; it returns errs with the problems appended.
func (k *KeepaliveConfig) settle(sec discovery.Section, errs []error) []error {
	def := DefaultKeepalive()
	for _, f := range []struct {
		key    string
		v, def *discovery.Duration
	}{{"time", &k.Time, &def.Time}, {"timeout", &k.Timeout, &def.Timeout}, {"min_ping_interval", &k.MinPingInterval, &def.MinPingInterval}} {
		if !sec.Key(f.key).Written() {
			*f.v = *f.def
		}
	}
	if time.Duration(k.Time) < time.Second {
		errs = append(errs, sec.Key("time").Errorf("%s is too short: gRPC pings an idle connection at most once a second", k.Time))
	}
	if k.Timeout <= 0 {
		errs = append(errs, sec.Key("timeout").Errorf("must be more than 0s"))
	}
	if k.MinPingInterval <= 0 {
		errs = append(errs, sec.Key("min_ping_interval").Errorf("must be more than 0s"))
	}
	return errs
}

// check checks server.streams (sec); it returns errs with the problems appended.
func (st *StreamsConfig) check(sec discovery.Section, errs []error) []error {
	fail := func(key, format string, args ...any) {
		errs = append(errs, sec.Key(key).Errorf(format, args...))
	}
	if st.NewPerSecond < 0 && st.NewPerSecond != -1 {
		fail("new_per_second", "must be 0 (default), a positive rate, or -1 (no limit)")
	}
	if st.NewBurst < 0 {
		fail("new_burst", "must not be negative")
	}
	if st.Max < -1 {
		fail("max", "must be 0 (default), a positive bound, or -1 (no bound)")
	}
	if st.MaxPerConnection < -1 {
		fail("max_per_connection", "must be 0 (default), a positive bound, or -1 (no bound)")
	}
	if h := st.MaxHeaderBytes; h != 0 && (h < 1<<10 || h > 16<<20) {
		fail("max_header_bytes", "%d is out of range: 0 (default, 16 KiB) or from 1024 (a gRPC request's own headers need a few hundred bytes) to 16 MiB", h)
	}
	return errs
}
