package file

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/tributary-mesh/tributary/discovery"
)

// MaxFileSize bounds a services file; a larger one is an error.
const MaxFileSize = 16 << 20

// maxErrors bounds how many problems Parse reports for one file.
const maxErrors = 20

// Parse reads a services file (YAML, or JSON, which is YAML):
//
//	services:
//	  - name: web.demo            # host of the authority
//	    port: 8080                # omitted: any port
//	    opaque: false
//	    endpoints:
//	      - address: 10.1.0.1:8080
//	        zone: zone-a
//	        weight: 100
//	        health: passing
//	        identity: spiffe://example.org/ns/demo/sa/web
//	        server_name: web.demo.example.org
//	        protocol: h2
//	        labels: {rack: r1}
//
// An empty file, or one whose services list is empty, is valid and lists no
// services. Unknown keys, duplicate keys, a service listed twice (same name
// and port) and an address listed twice in one service are errors. Every
// problem is reported (up to a bound): the error is a *discovery.ConfigError
// with File set to path, or several joined with errors.Join, each printing
// as path:line: key: problem.
//
// Parse is a pure function: path is only used in messages.
func Parse(path string, data []byte) ([]discovery.Service, error) {
	p := &parser{path: path, budget: 4*len(data) + 1024}
	if len(data) > MaxFileSize {
		p.errorf(0, "", "file is larger than %d bytes", MaxFileSize)
		return nil, p.err()
	}
	if !p.checkText(data) {
		return nil, p.err()
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) { // empty, or only comments
			return nil, nil
		}
		p.syntaxError(err, data)
		return nil, p.err()
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.syntaxError(err, data)
		return nil, p.err()
	default:
		p.errorf(extra.Line, "", "a second YAML document (after ---); list every service under the one services key")
		return nil, p.err()
	}
	services := p.file(&doc)
	if err := p.err(); err != nil {
		return nil, err
	}
	return services, nil
}

type parser struct {
	path   string
	errs   []error
	budget int // nodes left to visit; aliases can multiply a small file
}

func (p *parser) errorf(line int, key, format string, args ...any) {
	if len(p.errs) == maxErrors {
		p.errs = append(p.errs, &discovery.ConfigError{File: p.path, Line: line, Err: errors.New("too many errors; stopping")})
	}
	if len(p.errs) > maxErrors {
		return
	}
	p.errs = append(p.errs, &discovery.ConfigError{File: p.path, Line: line, Key: key, Err: fmt.Errorf(format, args...)})
}

func (p *parser) err() error {
	switch len(p.errs) {
	case 0:
		return nil
	case 1:
		return p.errs[0]
	default:
		return errors.Join(p.errs...)
	}
}

func (p *parser) stop() bool { return len(p.errs) > maxErrors || p.budget < 0 }

var (
	unknownAnchorRE = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)
)

// syntaxError records a yaml.v3 error with a 1-based line.
// yaml.v3 leaves the line out when its marks are on the first line (0 means
// "unknown" to it); checkText has ruled out the reader errors that have no
// line either, so a missing line is line 1. An error at the end of the
// input is put on the last line.
func (p *parser) syntaxError(err error, data []byte) {
	line, msg, ok := discovery.YAMLSyntaxLine(err)
	if !ok {
		line = 1
	}
	if m := unknownAnchorRE.FindStringSubmatch(msg); !ok && m != nil {
		// Reported without a line: find the first use of the alias.
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			line = 1 + bytes.Count(data[:i], []byte("\n"))
		}
	}
	last := bytes.Count(data, []byte("\n"))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		last++
	}
	line = max(1, min(line, last))
	p.errorf(line, "", "syntax error: %s", msg)
}

// checkText rejects what the YAML reader would reject without a line
// number: invalid UTF-8 and control characters.
func (p *parser) checkText(data []byte) bool {
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			p.errorf(line, "", "not valid UTF-8 (byte offset %d)", i)
			return false
		case r == '\n':
			line++
		case r == '\t' || r == '\r' || r == 0x85:
		case r < 0x20 || (r >= 0x7f && r <= 0x9f) || r == 0xfffe || r == 0xffff:
			p.errorf(line, "", "control character %U not allowed", r)
			return false
		case r == 0xfeff && i > 0:
			p.errorf(line, "", "byte order mark in the middle of the file")
			return false
		}
		i += size
	}
	return true
}

// deref follows an alias and charges the visit to the budget.
func (p *parser) deref(n *yaml.Node) *yaml.Node {
	p.budget--
	if p.budget == -1 {
		p.errorf(n.Line, "", "document too complex (too many aliases)")
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// fields walks a mapping, rejecting duplicate and merge keys, and calls fn
// for each key. known lists the accepted keys, for the unknown-key message.
func (p *parser) fields(n *yaml.Node, key string, known []string, fn func(name string, k, v *yaml.Node)) {
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content) && !p.stop(); i += 2 {
		k, v := p.deref(n.Content[i]), p.deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errorf(k.Line, key, "keys must be plain strings")
			continue
		}
		if k.ShortTag() == "!!merge" {
			p.errorf(k.Line, join(key, "<<"), "merge keys are not supported")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			p.errorf(k.Line, join(key, k.Value), "duplicate key (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		if known != nil && !contains(known, k.Value) {
			p.errorf(k.Line, join(key, k.Value), "unknown key (want %s)", strings.Join(known, ", "))
			continue
		}
		fn(k.Value, k, v)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func (p *parser) file(doc *yaml.Node) []discovery.Service {
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	root := p.deref(doc)
	if isNull(root) {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		p.errorf(root.Line, "", "the file must be a mapping with a services list")
		return nil
	}
	var services []discovery.Service
	p.fields(root, "", []string{"services"}, func(_ string, k, v *yaml.Node) {
		services = p.services(k, v)
	})
	return services
}

func (p *parser) services(k, v *yaml.Node) []discovery.Service {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.errorf(k.Line, "services", "must be a list")
		return nil
	}
	seen := make(map[discovery.Authority]int, len(v.Content))
	services := make([]discovery.Service, 0, len(v.Content))
	for i, item := range v.Content {
		if p.stop() {
			break
		}
		key := "services[" + strconv.Itoa(i) + "]"
		svc, nameLine, ok := p.service(key, p.deref(item))
		if !ok {
			continue
		}
		if line, dup := seen[svc.Authority]; dup {
			p.errorf(nameLine, key+".name", "service %s listed twice (first at line %d)", describe(svc.Authority), line)
			continue
		}
		seen[svc.Authority] = nameLine
		services = append(services, svc)
	}
	return services
}

func describe(a discovery.Authority) string {
	if a.Port == 0 {
		return a.Host + " (any port)"
	}
	return a.String()
}

var serviceKeys = []string{"name", "port", "opaque", "endpoints"}

// service parses one entry; nameLine is where its name is, for duplicate errors.
func (p *parser) service(key string, n *yaml.Node) (svc discovery.Service, nameLine int, ok bool) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, key, "must be a mapping with name, port and endpoints")
		return svc, 0, false
	}
	before := len(p.errs)
	var (
		name         string
		nameSet      bool
		port         uint16
		endpointsKey *yaml.Node
		endpointsVal *yaml.Node
	)
	p.fields(n, key, serviceKeys, func(field string, k, v *yaml.Node) {
		fk := join(key, field)
		switch field {
		case "name":
			name, nameSet = p.str(fk, k, v)
			nameLine = k.Line
		case "port":
			if isNull(v) {
				return
			}
			x, _ := p.uint(fk, k, v, 1, 65535, "a port from 1 to 65535 (omit it for any port)")
			port = uint16(x)
		case "opaque":
			svc.Opaque = p.bool(fk, k, v)
		case "endpoints":
			endpointsKey, endpointsVal = k, v
		}
	})
	switch {
	case !nameSet && len(p.errs) == before:
		p.errorf(n.Line, join(key, "name"), "missing (the service's host, like web.demo)")
	case nameSet:
		a, err := discovery.ParseAuthority(name, 0)
		switch {
		case err != nil:
			p.errorf(nameLine, join(key, "name"), "%v", err)
		case a.Port != 0:
			p.errorf(nameLine, join(key, "name"), "%q: give the port with the port key, not in the name", name)
		default:
			svc.Authority = discovery.Authority{Host: a.Host, Port: port}
		}
	}
	if endpointsKey != nil {
		svc.Endpoints = p.endpoints(join(key, "endpoints"), endpointsKey, endpointsVal)
	}
	if len(p.errs) != before {
		return svc, nameLine, false
	}
	if nameLine == 0 {
		nameLine = n.Line
	}
	return svc, nameLine, true
}

func (p *parser) endpoints(key string, k, v *yaml.Node) []discovery.Endpoint {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.errorf(k.Line, key, "must be a list")
		return nil
	}
	seen := make(map[netip.AddrPort]int, len(v.Content))
	eps := make([]discovery.Endpoint, 0, len(v.Content))
	for i, item := range v.Content {
		if p.stop() {
			break
		}
		ekey := key + "[" + strconv.Itoa(i) + "]"
		ep, addrLine, ok := p.endpoint(ekey, p.deref(item))
		if !ok {
			continue
		}
		if line, dup := seen[ep.Addr]; dup {
			p.errorf(addrLine, ekey+".address", "address %s listed twice in this service (first at line %d)", ep.Addr, line)
			continue
		}
		seen[ep.Addr] = addrLine
		eps = append(eps, ep)
	}
	return eps
}

var endpointKeys = []string{"address", "zone", "weight", "health", "identity", "server_name", "protocol", "labels"}

func (p *parser) endpoint(key string, n *yaml.Node) (ep discovery.Endpoint, addrLine int, ok bool) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, key, "must be a mapping with at least an address")
		return ep, 0, false
	}
	before := len(p.errs)
	var (
		addrSet                bool
		identity, serverName   string
		identityK, serverNameK *yaml.Node
	)
	p.fields(n, key, endpointKeys, func(field string, k, v *yaml.Node) {
		fk := join(key, field)
		switch field {
		case "address":
			addrLine = k.Line
			s, ok := p.str(fk, k, v)
			if !ok {
				return
			}
			addrSet = true
			if a, ok := p.addr(fk, k.Line, s); ok {
				ep.Addr = a
			}
		case "zone":
			if s, ok := p.str(fk, k, v); ok && s != "" {
				if problem := checkValue(s); problem != "" {
					p.errorf(k.Line, fk, "%s", problem)
				}
				ep.Zone = s
			}
		case "weight":
			if !isNull(v) {
				w, _ := p.uint(fk, k, v, 0, 1<<32-1, "a whole number from 0 to 4294967295 (0: the default)")
				ep.Weight = uint32(w)
			}
		case "health":
			if s, ok := p.str(fk, k, v); ok && s != "" {
				h, err := discovery.ParseHealth(s)
				if err != nil {
					p.errorf(k.Line, fk, "%v", err)
				}
				ep.Health = h
			}
		case "identity":
			identity, _ = p.str(fk, k, v)
			identityK = k
		case "server_name":
			serverName, _ = p.str(fk, k, v)
			serverNameK = k
		case "protocol":
			if s, ok := p.str(fk, k, v); ok {
				pr, err := discovery.ParseProtocol(s)
				if err != nil {
					p.errorf(k.Line, fk, "%v", err)
				}
				ep.Protocol = pr
			}
		case "labels":
			ep.Labels = p.labels(fk, k, v)
		}
	})
	if !addrSet && len(p.errs) == before {
		p.errorf(n.Line, join(key, "address"), "missing (IP:port, like 10.1.0.1:8080 or [::1]:8080)")
	}
	if identityK != nil || serverNameK != nil {
		id, err := discovery.ParseIdentity(identity, serverName)
		// Blame the key the user has to change: server_name when it is
		// given without an identity or beside a DNS-like one.
		blame, field := identityK, "identity"
		if identity == "" || (serverName != "" && !strings.HasPrefix(identity, "spiffe://")) {
			blame, field = serverNameK, "server_name"
		}
		if blame == nil {
			blame, field = identityK, "identity"
		}
		switch {
		case err != nil:
			p.errorf(blame.Line, join(key, field), "%v", err)
		case !printableNoSpace(identity) || !printableNoSpace(serverName):
			p.errorf(blame.Line, join(key, field), "must be printable, without spaces")
		default:
			ep.Identity = id
		}
	}
	if addrLine == 0 {
		addrLine = n.Line
	}
	return ep, addrLine, len(p.errs) == before
}

func (p *parser) addr(key string, line int, s string) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		if _, ipErr := netip.ParseAddr(s); ipErr == nil {
			p.errorf(line, key, "%q has no port (want IP:port, IPv6 as [::1]:8080)", s)
		} else {
			p.errorf(line, key, "%q is not IP:port (IPv6 as [::1]:8080; names belong to the dns source)", s)
		}
		return ap, false
	}
	a := ap.Addr()
	switch {
	case ap.Port() == 0:
		p.errorf(line, key, "%q: port 0 is not a port", s)
	case a.Zone() != "":
		p.errorf(line, key, "%q: IPv6 zones are not supported", s)
	case a.IsUnspecified():
		p.errorf(line, key, "%q: the unspecified address cannot be dialed", s)
	case a.IsMulticast():
		p.errorf(line, key, "%q: a multicast address cannot be dialed", s)
	default:
		return netip.AddrPortFrom(a.Unmap(), ap.Port()), true
	}
	return ap, false
}

// labelKeyRE is a Prometheus label name: labels become metric labels on the proxy.
var labelKeyRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

const (
	maxLabelKey   = 63
	maxLabelValue = 255
)

func (p *parser) labels(key string, k, v *yaml.Node) map[string]string {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.MappingNode {
		p.errorf(k.Line, key, "must be a mapping of name: value")
		return nil
	}
	labels := make(map[string]string, len(v.Content)/2)
	p.fields(v, key, nil, func(name string, lk, lv *yaml.Node) {
		lkey := join(key, name)
		switch {
		case name == "zone" || name == "source":
			p.errorf(lk.Line, lkey, "%q is reserved (Tributary sets it; use the endpoint's zone key for zones)", name)
			return
		case len(name) > maxLabelKey || !labelKeyRE.MatchString(name) || strings.HasPrefix(name, "__"):
			p.errorf(lk.Line, lkey, "label names are letters, digits and _, not starting with a digit or __, at most %d bytes", maxLabelKey)
			return
		}
		if lv.Kind != yaml.ScalarNode || isNull(lv) {
			p.errorf(lk.Line, lkey, "the value must be a non-empty string")
			return
		}
		if problem := checkValue(lv.Value); problem != "" {
			p.errorf(lk.Line, lkey, "%s", problem)
			return
		}
		labels[name] = lv.Value
	})
	if len(labels) == 0 {
		return nil
	}
	return labels
}

// checkValue vets a zone or label value; it returns the problem or "".
func checkValue(s string) string {
	switch {
	case s == "":
		return "must not be empty"
	case len(s) > maxLabelValue:
		return fmt.Sprintf("longer than %d bytes", maxLabelValue)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Sprintf("%q: only printable characters", s)
		}
	}
	return ""
}

func printableNoSpace(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// str reads a scalar as a string; null is "" with ok true.
func (p *parser) str(key string, k, v *yaml.Node) (string, bool) {
	if v.Kind != yaml.ScalarNode {
		p.errorf(k.Line, key, "must be a string")
		return "", false
	}
	if isNull(v) {
		return "", true
	}
	return v.Value, true
}

func (p *parser) uint(key string, k, v *yaml.Node, lo, hi uint64, want string) (uint64, bool) {
	var x int64
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || v.Decode(&x) != nil || x < 0 || uint64(x) < lo || uint64(x) > hi {
		p.errorf(k.Line, key, "%q: want %s", v.Value, want)
		return 0, false
	}
	return uint64(x), true
}

func (p *parser) bool(key string, k, v *yaml.Node) bool {
	var b bool
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" || v.Decode(&b) != nil {
		p.errorf(k.Line, key, "%q: want true or false", v.Value)
	}
	return b
}
