package tlsauth

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tributary-mesh/tributary/discovery"
)

// DefaultReloadInterval is server.tls.reload_interval when not set.
const DefaultReloadInterval = time.Minute

// Config is server.tls: where the server's certificate and the trust
// bundles come from, and who may call which API.
type Config struct {
	// WorkloadAPI is the SPIFFE Workload API address (unix:///path or
	// tcp://ip:port); the server's X.509-SVID and the trust bundles come
	// from it and rotate as the agent pushes new ones. Excludes the files.
	WorkloadAPI string `yaml:"workload_api"`
	// CertFile (certificate chain, leaf first), KeyFile and CAFile (the CAs
	// trusted to sign client certificates) are PEM files, all three
	// required without WorkloadAPI. Relative paths resolve against the
	// config file's folder. They are watched and re-read when they change.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
	// ReloadInterval re-reads the files this often besides watching them;
	// DefaultReloadInterval when not set.
	ReloadInterval discovery.Duration `yaml:"reload_interval"`
	// Admin makes the admin HTTP server speak TLS with the same
	// certificate and require an authorized client certificate, except on
	// /healthz and /readyz.
	Admin bool `yaml:"admin"`
	// TrustDomains may call every API that has no access list of its own;
	// empty means the trust domain of the server's own SPIFFE ID.
	TrustDomains []string `yaml:"trust_domains"`
	// Authorize holds the per-API access lists.
	Authorize Authorize `yaml:"authorize"`
}

// Authorize is server.tls.authorize: one access list per API.
type Authorize struct {
	// Destination: Get and GetProfile.
	Destination APIAccess `yaml:"destination"`
	// Admin: the admin HTTP endpoints (with tls.admin) and gRPC reflection.
	Admin APIAccess `yaml:"admin"`
	// Registration: reserved for the registration API.
	Registration APIAccess `yaml:"registration"`
	// XDS: the xDS server's ADS (destination/xds), on its own port.
	XDS APIAccess `yaml:"xds"`
}

// APIAccess is who may call one API: a peer whose trust domain is listed
// or whose SPIFFE ID matches one of the ID patterns. With both lists empty,
// Config.TrustDomains apply. An ID pattern is a SPIFFE ID in which a
// whole path segment may be "*" (exactly one segment) and the last one
// "**" (one or more segments): spiffe://prod.example/ns/*/sa/web,
// spiffe://prod.example/ops/**.
type APIAccess struct {
	TrustDomains []string `yaml:"trust_domains"`
	IDs          []string `yaml:"ids"`
}

// ParseConfig decodes and checks server.tls and fills in its defaults; nil
// when the section is not given (the API is plaintext). Every problem is
// a discovery.ConfigError with its file:line and key path
// (server.tls.authorize.admin.ids[0]).
func ParseConfig(sec discovery.Section) (*Config, error) {
	if sec.Node == nil {
		return nil, nil
	}
	t := &Config{}
	var errs []error
	if err := sec.Decode(t); err != nil {
		errs = append(errs, err) // and check what could be read
	}
	if !sec.Key("reload_interval").Written() {
		t.ReloadInterval = discovery.Duration(DefaultReloadInterval)
	}
	fail := func(s discovery.Section, format string, args ...any) {
		errs = append(errs, s.Errorf(format, args...))
	}
	files := t.CertFile != "" || t.KeyFile != "" || t.CAFile != ""
	switch {
	case t.WorkloadAPI != "" && files:
		fail(sec.Key("workload_api"), "use either workload_api or cert_file/key_file/ca_file, not both")
	case t.WorkloadAPI != "":
		if !strings.HasPrefix(t.WorkloadAPI, "unix:") && !strings.HasPrefix(t.WorkloadAPI, "tcp://") {
			fail(sec.Key("workload_api"), "%q is not a Workload API address: want unix:///path/to/agent.sock or tcp://ip:port", t.WorkloadAPI)
		}
	default:
		for _, f := range []struct{ key, v string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"ca_file", t.CAFile}} {
			if f.v == "" {
				fail(sec.Key(f.key), "required (or workload_api instead of the files)")
			}
		}
	}
	if time.Duration(t.ReloadInterval) < time.Second {
		fail(sec.Key("reload_interval"), "%s is too short: at least 1s", t.ReloadInterval)
	}
	errs = checkTrustDomains(sec.Key("trust_domains"), t.TrustDomains, errs)
	authorize := sec.Key("authorize")
	for _, api := range []struct {
		name   string
		access APIAccess
	}{{APIDestination, t.Authorize.Destination}, {APIAdmin, t.Authorize.Admin}, {APIRegistration, t.Authorize.Registration}, {APIXDS, t.Authorize.XDS}} {
		as := authorize.Key(api.name)
		errs = checkTrustDomains(as.Key("trust_domains"), api.access.TrustDomains, errs)
		ids := as.Key("ids")
		for i, id := range api.access.IDs {
			if err := CheckSPIFFEIDPattern(id); err != nil {
				fail(ids.Item(i), "%v", err)
			}
		}
	}
	if admin := authorize.Key(APIAdmin); !t.Admin && admin.Written() {
		fail(admin, "has no effect without server.tls.admin: true (the admin endpoints are plain HTTP)")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return t, nil
}

// checkTrustDomains checks a list of trust domain names (sec) and returns
// errs with its problems appended.
func checkTrustDomains(sec discovery.Section, tds []string, errs []error) []error {
	seen := map[string]bool{}
	for i, td := range tds {
		if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "/") {
			errs = append(errs, sec.Item(i).Errorf("%q is not a trust domain name (want e.g. prod.example.org)", td))
		} else if seen[td] {
			errs = append(errs, sec.Item(i).Errorf("trust domain %q listed twice", td))
		}
		seen[td] = true
	}
	return errs
}

// CheckSPIFFEIDPattern reports whether s is a valid SPIFFE ID pattern: a
// SPIFFE ID with a non-empty path in which a whole segment may be "*"
// (exactly one segment) and the last segment may be "**" (one or more).
// The trust domain is literal; idPattern matches them.
func CheckSPIFFEIDPattern(s string) error {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return fmt.Errorf("%q is not a SPIFFE ID pattern: it must start with spiffe://", s)
	}
	td, path, _ := strings.Cut(rest, "/")
	if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "*") {
		return fmt.Errorf("%q: %q is not a trust domain name (wildcards are not allowed there)", s, td)
	}
	if path == "" {
		return fmt.Errorf("%q names a whole trust domain: list it under trust_domains instead", s)
	}
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		switch {
		case seg == "*":
		case seg == "**":
			if i != len(segs)-1 {
				return fmt.Errorf("%q: ** may only be the last segment", s)
			}
		case strings.Contains(seg, "*"):
			return fmt.Errorf("%q: a wildcard must be a whole segment (* or **), not part of %q", s, seg)
		default:
			if err := spiffeid.ValidatePathSegment(seg); err != nil {
				return fmt.Errorf("%q: segment %q: %v", s, seg, err)
			}
		}
	}
	return nil
}
