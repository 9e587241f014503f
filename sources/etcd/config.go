package etcd

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

// Defaults of the kind's keys.
const (
	// DefaultTimeout bounds one request to etcd: a listing, a probe.
	DefaultTimeout = 5 * time.Second
	// DefaultCheckInterval is how often a watching source asks etcd
	// whether it is still there: a watch alone does not tell, the client
	// reconnects it silently.
	DefaultCheckInterval = 5 * time.Second
)

// ClientConfig is how to reach an etcd cluster: the keys every kind that
// talks to etcd shares (this one, and the register kind's etcd backend).
type ClientConfig struct {
	// Endpoints are host:port or http(s)://host:port of etcd members.
	Endpoints []string `yaml:"endpoints"`
	// Username and Password, optional, for etcd's auth.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// TLS, optional: a CA to verify the members, and a client certificate.
	TLS *TLSFiles `yaml:"tls"`
	// Timeout bounds one request; 0 means DefaultTimeout.
	Timeout discovery.Duration `yaml:"timeout"`
	// CheckInterval is the period of the reachability probe while
	// watching; 0 means DefaultCheckInterval.
	CheckInterval discovery.Duration `yaml:"check_interval"`
}

// TLSFiles are PEM files; relative paths resolve against the config file's
// folder. They are read when the source is built.
type TLSFiles struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name the members' certificates are checked
	// against (default: the host of each endpoint).
	ServerName string `yaml:"server_name"`
}

// Conn is a validated ClientConfig.
type Conn struct {
	Endpoints     []string
	Username      string
	Password      string
	TLS           *tls.Config // nil: plain text
	Timeout       time.Duration
	CheckInterval time.Duration
}

// Validate checks c and loads its TLS files; errors are
// *discovery.ConfigError naming the key. baseDir resolves relative paths.
func (c ClientConfig) Validate(baseDir string) (Conn, error) {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, &discovery.ConfigError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	conn := Conn{Username: c.Username, Password: c.Password, Timeout: time.Duration(c.Timeout), CheckInterval: time.Duration(c.CheckInterval)}
	if len(c.Endpoints) == 0 {
		fail("endpoints", "required: at least one etcd member, such as 127.0.0.1:2379")
	}
	for i, e := range c.Endpoints {
		e = strings.TrimSpace(e)
		host := e
		if rest, ok := strings.CutPrefix(e, "https://"); ok {
			host = rest
		} else if rest, ok := strings.CutPrefix(e, "http://"); ok {
			host = rest
			if c.TLS != nil {
				fail(fmt.Sprintf("endpoints[%d]", i), "%q says http:// but tls is set", e)
			}
		}
		if host == "" || strings.ContainsAny(host, "/ ") {
			fail(fmt.Sprintf("endpoints[%d]", i), "%q: want host:port, http://host:port or https://host:port", e)
			continue
		}
		conn.Endpoints = append(conn.Endpoints, e)
	}
	if (c.Username == "") != (c.Password == "") {
		fail("username", "username and password go together")
	}
	switch {
	case conn.Timeout == 0:
		conn.Timeout = DefaultTimeout
	case conn.Timeout < 0:
		fail("timeout", "must be positive")
	}
	switch {
	case conn.CheckInterval == 0:
		conn.CheckInterval = DefaultCheckInterval
	case conn.CheckInterval < 0:
		fail("check_interval", "must be positive")
	}
	if c.TLS != nil {
		tc, err := c.TLS.load(baseDir)
		if err != nil {
			fail("tls", "%v", err)
		}
		conn.TLS = tc
	}
	return conn, errors.Join(errs...)
}

func (t *TLSFiles) load(baseDir string) (*tls.Config, error) {
	abs := func(p string) string {
		if p != "" && !filepath.IsAbs(p) {
			return filepath.Join(baseDir, p)
		}
		return p
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(abs(t.CAFile))
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("cert_file and key_file go together (a client certificate needs its key)")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(abs(t.CertFile), abs(t.KeyFile))
		if err != nil {
			return nil, fmt.Errorf("cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Config is an etcd source's own configuration, as decoded from YAML.
type Config struct {
	ClientConfig `yaml:",inline"`
	// Prefix is the watched key prefix. Keys under it are
	// <prefix><target>/<anything>, as go.etcd.io/etcd/client/v3/naming/endpoints
	// writes them (<target>/<addr>). Required.
	Prefix string `yaml:"prefix"`
	// Naming maps targets to authorities.
	Naming Naming `yaml:"naming"`
}

// Naming is the rule that turns a target into an authority.
//
// By default a target's path elements, most specific first, are the host:
// target "web" is host "web", "prod/web" is "web.prod". Domain, when set,
// is appended ("web.prod.etcd.internal"). Port is the authority's port; 0,
// the default, is "any port": a client asking for web.prod:<any> gets the
// endpoints with their own ports. Targets overrides the rule per target.
type Naming struct {
	Domain  string            `yaml:"domain"`
	Port    uint16            `yaml:"port"`
	Targets map[string]string `yaml:"targets"`
}

// naming is a validated Naming.
type naming struct {
	domain  string
	port    uint16
	targets map[string]discovery.Authority
}

func (n Naming) validate() (naming, error) {
	out := naming{port: n.Port, targets: map[string]discovery.Authority{}}
	if d := strings.Trim(n.Domain, "."); d != "" {
		h, err := discovery.CanonicalHost(d)
		if err != nil {
			return out, &discovery.ConfigError{Key: "naming.domain", Err: err}
		}
		out.domain = h
	}
	for t, a := range n.Targets {
		t = strings.Trim(t, "/")
		if t == "" {
			return out, &discovery.ConfigError{Key: "naming.targets", Err: errors.New("empty target")}
		}
		auth, err := discovery.ParseAuthority(a, n.Port)
		if err != nil {
			return out, &discovery.ConfigError{Key: "naming.targets." + t, Err: err}
		}
		out.targets[t] = auth
	}
	return out, nil
}

// authority is the authority of a target (already stripped of the prefix
// and of surrounding slashes).
func (n naming) authority(target string) (discovery.Authority, error) {
	if a, ok := n.targets[target]; ok {
		return a, nil
	}
	parts := strings.Split(target, "/")
	labels := make([]string, 0, len(parts)+1)
	for i := len(parts) - 1; i >= 0; i-- {
		if parts[i] != "" {
			labels = append(labels, parts[i])
		}
	}
	if n.domain != "" {
		labels = append(labels, n.domain)
	}
	host, err := discovery.CanonicalHost(strings.Join(labels, "."))
	if err != nil {
		return discovery.Authority{}, err
	}
	return discovery.Authority{Host: host, Port: n.port}, nil
}

// newFromNode is the kind's constructor.
func newFromNode(node *yaml.Node, bc discovery.BuildContext) (discovery.Source, error) {
	var cfg Config
	if err := discovery.DecodeStrict(node, &cfg); err != nil {
		return nil, err
	}
	src, err := NewSource(cfg, bc)
	if err != nil {
		return nil, discovery.PlaceErrors(node, err)
	}
	return src, nil
}
