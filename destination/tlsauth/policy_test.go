package tlsauth

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPatternMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		id      string
		want    bool
	}{
		{"spiffe://prod.test/ns/web/sa/proxy", "spiffe://prod.test/ns/web/sa/proxy", true},
		{"spiffe://prod.test/ns/web/sa/proxy", "spiffe://prod.test/ns/web/sa/proxy2", false},
		{"spiffe://prod.test/ns/web/sa/proxy", "spiffe://other.test/ns/web/sa/proxy", false},
		{"spiffe://prod.test/ns/*/sa/proxy", "spiffe://prod.test/ns/billing/sa/proxy", true},
		{"spiffe://prod.test/ns/*/sa/proxy", "spiffe://prod.test/ns/a/b/sa/proxy", false},
		{"spiffe://prod.test/ns/*/sa/proxy", "spiffe://prod.test/ns/billing/sa", false},
		{"spiffe://prod.test/ops/**", "spiffe://prod.test/ops/alice", true},
		{"spiffe://prod.test/ops/**", "spiffe://prod.test/ops/team/alice", true},
		{"spiffe://prod.test/ops/**", "spiffe://prod.test/ops", false},
		{"spiffe://prod.test/ops/**", "spiffe://prod.test/opsx/alice", false},
		{"spiffe://prod.test/*", "spiffe://prod.test/a", true},
		{"spiffe://prod.test/*", "spiffe://prod.test/a/b", false},
		{"spiffe://prod.test/**", "spiffe://prod.test/a/b/c", true},
		{"spiffe://prod.test/**", "spiffe://prod.test", false},
	} {
		p, err := parsePattern(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		if got := p.match(spiffeid.RequireFromString(tc.id)); got != tc.want {
			t.Errorf("%s matches %s: %v, want %v", tc.pattern, tc.id, got, tc.want)
		}
	}
}

func TestPatternSyntax(t *testing.T) {
	for _, bad := range []string{
		"", "prod.test/ns/web", "https://prod.test/x", "spiffe://prod.test", "spiffe://prod.test/",
		"spiffe://*.test/x", "spiffe://Prod.test/x", "spiffe://prod.test/web-*", "spiffe://prod.test/**/x",
		"spiffe://prod.test/a//b", "spiffe://prod.test/a/../b", "spiffe://prod.test/a b",
	} {
		if _, err := parsePattern(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestMethodAPI(t *testing.T) {
	for method, want := range map[string]string{
		"/io.linkerd.proxy.destination.Destination/Get":                                    APIDestination,
		"/io.linkerd.proxy.destination.Destination/GetProfile":                             APIDestination,
		"/grpc.health.v1.Health/Check":                                                     "",
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":                        APIAdmin,
		"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo":                   APIAdmin,
		"/tributary.registration.v1.Registration/Register":                                 APIRegistration,
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources": APIXDS,
		"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources":  APIXDS,
		"/envoy.service.discovery.v3.ClusterDiscoveryService/StreamClusters":               "-",
		"/io.linkerd.proxy.destination.DestinationX/Get":                                   "-",
		"/io.linkerd.proxy.identity.Identity/Certify":                                      "-",
		"/grpc.health.v1.HealthX/Check":                                                    "-",
		"/tributary.registrationx/Register":                                                "-",
		"":                                                                                 "-",
		"/io.linkerd.proxy.destination.Destination":                                        "-",
		"/io.linkerd.proxy.destination.Destination/../../grpc.health.v1/x/":                APIDestination,
	} {
		api, ok := MethodAPI(method)
		if !ok {
			api = "-"
		}
		if api != want {
			t.Errorf("%q: %q, want %q", method, api, want)
		}
	}
}

func TestPolicy(t *testing.T) {
	own := spiffeid.RequireTrustDomainFromString("prod.test")
	id := spiffeid.RequireFromString
	cfg := &Config{
		Authorize: Authorize{
			Destination: APIAccess{TrustDomains: []string{"partner.test"}, IDs: []string{"spiffe://prod.test/ns/*/sa/proxy"}},
			Admin:       APIAccess{IDs: []string{"spiffe://prod.test/ops/**"}},
		},
	}
	p, err := newPolicy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		api, id string
		want    bool
	}{
		{APIDestination, "spiffe://partner.test/anything", true},              // listed trust domain
		{APIDestination, "spiffe://prod.test/ns/web/sa/proxy", true},          // ID pattern
		{APIDestination, "spiffe://prod.test/ns/web/sa/intruder", false},      // own trust domain is not implied once a list exists
		{APIAdmin, "spiffe://prod.test/ops/alice", true},                      //
		{APIAdmin, "spiffe://partner.test/ops/alice", false},                  //
		{APIAdmin, "spiffe://prod.test/ns/web/sa/proxy", false},               //
		{APIRegistration, "spiffe://prod.test/ns/web/sa/proxy", true},         // no list: the own trust domain
		{APIRegistration, "spiffe://partner.test/ns/web/sa/proxy", false},     //
		{"unknown", "spiffe://prod.test/ns/web/sa/proxy", false},              // fails closed
		{APIDestination, "spiffe://partner.test.evil/ns/web/sa/proxy", false}, //
	} {
		if got := p.allowed(tc.api, id(tc.id), own); got != tc.want {
			t.Errorf("%s by %s: %v, want %v", tc.api, tc.id, got, tc.want)
		}
	}
	if !p.needsOwnTrustDomain() {
		t.Error("registration inherits: the own trust domain is needed")
	}
	// Global trust domains replace the own one for inheriting APIs.
	cfg.TrustDomains = []string{"a.test", "b.test"}
	if p, err = newPolicy(cfg); err != nil {
		t.Fatal(err)
	}
	if p.allowed(APIRegistration, id("spiffe://prod.test/x"), own) || !p.allowed(APIRegistration, id("spiffe://b.test/x"), own) {
		t.Error("tls.trust_domains should replace the own trust domain")
	}
	if p.needsOwnTrustDomain() {
		t.Error("with trust_domains the own trust domain is not needed")
	}
	// A server without a SPIFFE ID admits nobody by default.
	if p, _ := newPolicy(&Config{}); p.allowed(APIDestination, id("spiffe://prod.test/x"), spiffeid.TrustDomain{}) {
		t.Error("no own trust domain, no list: nobody")
	}
}
