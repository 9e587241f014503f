package tools

// The import rules of docs/architecture.md ("Import rules"), checked on the
// real graph: `go list` over every package of the module, with the
// integration tests' files, their tests' imports included. A wrong-way
// import fails here, and so does a new package that no rule covers: add
// its rule to the table below and to docs/architecture.md together.

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/tributary-mesh/tributary"

// importRule says what a package may import of ours. Patterns are module
// paths: "x" is the package x, "x/..." is x and every package under it,
// "..." is any.
type importRule struct {
	pkg     string   // which packages the rule is for; the first rule that matches applies
	imports []string // what the package may import
	tests   []string // what its tests may import besides
}

// importRules is docs/architecture.md's table.
var importRules = []importRule{
	{pkg: "cmd/...", imports: []string{"..."}},
	{pkg: "discovery", tests: []string{"discovery/..."}},
	{pkg: "discovery/...", imports: []string{"discovery", "discovery/..."}},
	{pkg: "sources/all", imports: []string{"sources/..."}},
	// Registrations kept in etcd use the etcd source's client and follower.
	{pkg: "sources/register", imports: []string{"discovery", "discovery/...", "sources/etcd"}, tests: []string{"sources/etcd/..."}},
	{pkg: "sources/...", imports: []string{"discovery", "discovery/..."}},
	{pkg: "cache", imports: []string{"discovery"}},
	// The registration edge writes into the register source, which owns
	// registrations, and speaks our own proto.
	{pkg: "destination/registration", imports: []string{"discovery", "proto/...", "sources/register"}, tests: []string{"destination/..."}},
	{pkg: "destination/fanout", imports: []string{"cache", "discovery"}},
	{pkg: "destination/served", imports: []string{"cache", "discovery"}},
	{pkg: "destination/xds", imports: []string{"cache", "discovery", "destination/fanout", "destination/internal/admit"}, tests: []string{"discovery/configdoc", "destination/tlsauth/tlstest"}},
	{pkg: "destination/...", imports: []string{"cache", "discovery", "destination/..."}},
	{pkg: "integration/harness", imports: []string{"destination/..."}},
	// Registration tests run etcd with integration/etcd's member and call the API.
	{pkg: "integration/register", imports: []string{"integration/harness", "integration/etcd", "destination/...", "proto/..."}},
	// integration/etcd cuts the source off etcd with the proxy the etcd
	// source's own tests use.
	{pkg: "integration/etcd", imports: []string{"integration/harness", "sources/etcd/etcdtest"}},
	{pkg: "integration/browser", imports: []string{"integration/harness"}},
	{pkg: "integration/...", imports: []string{"integration/harness", "destination/..."}},
	{pkg: "proto/..."},
	{pkg: "tools"},
}

// testOnly reports whether pkg is a helper for tests, which only test
// files may import: one whose name ends in "test" (sinktest, tlstest,
// etcdtest), and discovery/configdoc.
func testOnly(pkg string) bool {
	return strings.HasSuffix(pkg[strings.LastIndexByte(pkg, '/')+1:], "test") || pkg == "discovery/configdoc"
}

func matches(pattern, pkg string) bool {
	if pattern == "..." {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == base || strings.HasPrefix(pkg, base+"/")
	}
	return pkg == pattern
}

func matchesAny(patterns []string, pkg string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return matches(p, pkg) })
}

// listedPackage is one package of `go list`, paths relative to the module.
type listedPackage struct {
	path        string
	imports     []string
	testImports []string // of its _test.go files, in the package or not
}

// checkImports returns every import that breaks a rule.
func checkImports(pkgs []listedPackage) []string {
	var bad []string
	for _, p := range pkgs {
		i := slices.IndexFunc(importRules, func(r importRule) bool { return matches(r.pkg, p.path) })
		if i < 0 {
			bad = append(bad, fmt.Sprintf("%s: no import rule covers this package (add one to docs/architecture.md and tools/imports_test.go)", p.path))
			continue
		}
		r := importRules[i]
		for _, imp := range p.imports {
			switch {
			case imp == p.path:
			case testOnly(imp):
				bad = append(bad, fmt.Sprintf("%s imports %s, which only tests may import", p.path, imp))
			case !matchesAny(r.imports, imp):
				bad = append(bad, fmt.Sprintf("%s imports %s (rule %q allows %v)", p.path, imp, r.pkg, r.imports))
			}
		}
		for _, imp := range p.testImports {
			// Tests may also use the package's own helpers below it.
			if imp != p.path && !matchesAny(r.imports, imp) && !matchesAny(r.tests, imp) && !strings.HasPrefix(imp, p.path+"/") {
				bad = append(bad, fmt.Sprintf("%s's tests import %s (rule %q allows %v, and in tests %v)", p.path, imp, r.pkg, r.imports, r.tests))
			}
		}
	}
	return bad
}

// goList lists the module's packages, integration tests included.
func goList(t *testing.T) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-tags", "integration", "-f",
		"{{.ImportPath}}\t{{join .Imports \" \"}}\t{{join .TestImports \" \"}} {{join .XTestImports \" \"}}", module+"/...")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	ours := func(list string) []string {
		var r []string
		for _, imp := range strings.Fields(list) {
			if rel, ok := strings.CutPrefix(imp, module+"/"); ok {
				r = append(r, rel)
			}
		}
		return r
	}
	var pkgs []listedPackage
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 3 {
			t.Fatalf("go list: unexpected line %q", sc.Text())
		}
		path, ok := strings.CutPrefix(f[0], module+"/")
		if !ok {
			t.Fatalf("go list: %q is not in %s", f[0], module)
		}
		pkgs = append(pkgs, listedPackage{path: path, imports: ours(f[1]), testImports: ours(f[2])})
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages:\n%s", len(pkgs), out)
	}
	return pkgs
}

func TestImportRules(t *testing.T) {
	for _, b := range checkImports(goList(t)) {
		t.Error(b)
	}
}

// The rules catch what they are for, on a made-up graph.
func TestImportRulesRejectWrongWayImports(t *testing.T) {
	for _, tc := range []struct {
		pkg      listedPackage
		wantFail bool
	}{
		{listedPackage{path: "sources/consul", imports: []string{"discovery", "discovery/retry"}, testImports: []string{"discovery/sinktest"}}, false},
		{listedPackage{path: "cmd/tributary", imports: []string{"cache", "destination", "sources/all"}}, false},
		{listedPackage{path: "discovery", imports: []string{"cache"}}, true},
		{listedPackage{path: "discovery/sinktest", imports: []string{"cache"}}, true},
		{listedPackage{path: "discovery/refresh", imports: []string{"sources/dnssrv"}}, true},
		{listedPackage{path: "sources/consul", imports: []string{"cache"}}, true},
		{listedPackage{path: "sources/consul", imports: []string{"discovery/sinktest"}}, true},
		{listedPackage{path: "sources/consul", imports: []string{"sources/file"}}, true},
		{listedPackage{path: "cache", imports: []string{"destination"}}, true},
		{listedPackage{path: "destination", imports: []string{"sources/file"}}, true},
		{listedPackage{path: "destination", imports: []string{"cmd/tributary"}}, true},
		{listedPackage{path: "integration/harness", imports: []string{"discovery/sinktest"}}, true},
		{listedPackage{path: "sources/etcd", imports: []string{"sources/etcd/etcdtest"}}, true},
		{listedPackage{path: "sources/etcd", testImports: []string{"sources/etcd/etcdtest"}}, false},
		{listedPackage{path: "sources/consul", testImports: []string{"sources/etcd/etcdtest"}}, true},
		{listedPackage{path: "sources/register", imports: []string{"sources/etcd"}}, false},
		{listedPackage{path: "sources/etcd", imports: []string{"sources/register"}}, true},
		{listedPackage{path: "discovery", testImports: []string{"discovery/configdoc"}}, false},
		{listedPackage{path: "proto/x/v1", imports: []string{"discovery"}}, true},
		{listedPackage{path: "integration/consul", testImports: []string{"cache"}}, true},
		{listedPackage{path: "newpkg"}, true},
	} {
		if bad := checkImports([]listedPackage{tc.pkg}); (len(bad) > 0) != tc.wantFail {
			t.Errorf("%+v: %v, want failing = %v", tc.pkg, bad, tc.wantFail)
		}
	}
}

// TestCoreLinksNoTLSStack holds the core to the model and the contracts:
// the SPIFFE ID pattern grammar and the TLS settings belong to
// destination/tlsauth, so discovery does not link go-spiffe. (A source may:
// Consul's builds SPIFFE IDs for its endpoints.)
func TestCoreLinksNoTLSStack(t *testing.T) {
	for _, pkg := range []string{"discovery"} {
		out, err := exec.Command("go", "list", "-deps", module+"/"+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for dep := range strings.FieldsSeq(string(out)) {
			if strings.HasPrefix(dep, "github.com/spiffe/") {
				t.Errorf("%s links %s; TLS and SPIFFE IDs are destination/tlsauth's", pkg, dep)
			}
		}
	}
}
