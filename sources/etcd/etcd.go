// Package etcd is the `etcd` source kind: services that register
// themselves in etcd in the format of go.etcd.io/etcd/client/v3/naming/endpoints
// (what gRPC services using etcd's resolver already write).
//
//	sources:
//	  - name: grpc-registry
//	    kind: etcd
//	    endpoints: [10.0.0.10:2379, 10.0.0.11:2379]   # or https://…
//	    prefix: services/           # keys are <prefix><target>/<addr>
//	    username: tributary         # optional, with password
//	    password: secret
//	    tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client-key.pem}  # optional
//	    timeout: 5s                 # one request (listing, probe)
//	    check_interval: 5s          # reachability probe while watching
//	    naming:
//	      domain: etcd.internal     # appended to the derived host
//	      port: 0                   # authority port; 0 answers any port
//	      targets:                  # explicit authorities per target
//	        payments: payments.internal:9000
//
// # Keys and values
//
// A key is <prefix><target>/<last element>; the value is the JSON that
// endpoints.Manager writes: {"Op":0,"Addr":"10.0.0.5:8080","Metadata":…}.
// The target may itself contain slashes; the last element (the address, by
// the format's convention) only makes the key unique. The endpoint's address
// is Addr, an IP and a port (host names are not resolved). Metadata, when it
// is a JSON object, may carry "zone" (string), "weight" (number),
// "labels" (object of strings), "identity" and "server_name" (a SPIFFE ID
// needs a server name), and "protocol" ("h2", "opaque"); other metadata is
// ignored. A key whose value does not decode, or whose address is not
// IP:port, is skipped and logged; its target's other endpoints are served.
//
// # Naming
//
// Each target is one group (key: the target) with one service. Its
// authority is naming.targets[target] when listed; otherwise its path
// elements, most specific first, then naming.domain: target "prod/web" with
// domain "etcd.internal" is host "web.prod.etcd.internal", with
// naming.port (0: any port).
//
// # Revisions, compaction, failures
//
// The source lists the prefix at revision R, hands over everything with
// Replace, and watches from R+1; each watch response becomes one Update of
// the targets it touched (whole groups; a target with no keys left is
// withdrawn). If etcd has compacted R+1 away (the source was behind), the
// watch is not resumed: the prefix is listed again and handed over with
// Replace, so nothing is lost or handed over twice. When etcd cannot be
// read (listing failed, probe failed, watch cancelled) the source is marked
// failed and keeps its last state, served stale; the next successful
// listing reconciles it.
package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"

	"github.com/tributary-mesh/tributary/discovery"
)

// KindName is the value of `kind:` for this source.
const KindName = "etcd"

func init() {
	discovery.Register(discovery.Kind{Name: KindName, New: newFromNode})
}

// Source is an etcd source; build it with NewSource.
type Source struct {
	conn   Conn
	prefix string
	naming naming
	log    *slog.Logger

	// beforeWatch is passed to the Follower (tests).
	beforeWatch func(rev int64)
}

var _ discovery.Source = (*Source)(nil)

// NewSource validates cfg and returns a source ready to Run. It starts
// nothing; the etcd client is made by Run.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	conn, err := cfg.ClientConfig.Validate(bc.BaseDir)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	if cfg.Prefix == "" {
		errs = append(errs, &discovery.ConfigError{Key: "prefix", Err: errors.New("required: the key prefix to watch, such as services/")})
	}
	n, err := cfg.Naming.validate()
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Source{conn: conn, prefix: cfg.Prefix, naming: n, log: bc.Log()}, nil
}

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) {
	cli, err := s.conn.NewClient()
	if err != nil {
		// Only a malformed config fails here; it stays failed.
		sink.Failed(fmt.Errorf("etcd client: %w", err))
		<-ctx.Done()
		return
	}
	defer cli.Close()
	f := &Follower{Client: cli, Prefix: s.prefix, Timeout: s.conn.Timeout, CheckInterval: s.conn.CheckInterval, Log: s.log, beforeWatch: s.beforeWatch}
	f.Run(ctx, &state{Source: s, sink: sink, targets: map[string]map[string]discovery.Endpoint{}})
}

// state is what one Run knows: per target, its keys' endpoints.
type state struct {
	*Source
	sink    discovery.Sink
	targets map[string]map[string]discovery.Endpoint
}

// split cuts a key into its target and last element; ok is false for a
// key that is not <prefix><target>/<element>.
func (s *state) split(key string) (target string, ok bool) {
	rest := strings.TrimLeft(strings.TrimPrefix(key, s.prefix), "/")
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 || i == len(rest)-1 {
		return "", false
	}
	return strings.TrimRight(rest[:i], "/"), true
}

// Listed implements Handler: the whole state, handed over with Replace.
func (s *state) Listed(kvs []*mvccpb.KeyValue) {
	clear(s.targets)
	for _, kv := range kvs {
		s.put(kv)
	}
	groups := make([]discovery.Group, 0, len(s.targets))
	for t := range s.targets {
		if g, ok := s.group(t); ok {
			groups = append(groups, g)
		}
	}
	slices.SortFunc(groups, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	s.sink.Replace(groups)
}

// Changed implements Handler: the touched targets, handed over with Update.
func (s *state) Changed(events []*clientv3.Event) {
	touched := map[string]bool{}
	for _, ev := range events {
		key := string(ev.Kv.Key)
		target, ok := s.split(key)
		if !ok {
			continue
		}
		touched[target] = true
		switch ev.Type {
		case clientv3.EventTypePut:
			delete(s.targets[target], key)
			s.put(ev.Kv)
		case clientv3.EventTypeDelete:
			delete(s.targets[target], key)
		}
		if len(s.targets[target]) == 0 {
			delete(s.targets, target)
		}
	}
	groups := make([]discovery.Group, 0, len(touched))
	for t := range touched {
		if g, ok := s.group(t); ok {
			groups = append(groups, g)
		} else {
			groups = append(groups, discovery.Group{Key: t})
		}
	}
	slices.SortFunc(groups, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	if len(groups) > 0 {
		s.sink.Update(groups...)
	}
}

// Failed implements Handler.
func (s *state) Failed(err error) { s.sink.Failed(err) }

// put records one key's endpoint, or logs why it cannot.
func (s *state) put(kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	target, ok := s.split(key)
	if !ok {
		s.log.Warn("etcd key is not <prefix><target>/<address>; skipped", "key", key)
		return
	}
	ep, err := decodeEndpoint(kv.Value)
	if err != nil {
		s.log.Warn("etcd key skipped", "key", key, "err", err)
		return
	}
	m := s.targets[target]
	if m == nil {
		m = map[string]discovery.Endpoint{}
		s.targets[target] = m
	}
	m[key] = ep
}

// group builds a target's group: its endpoints by key, one per address
// (the first key wins). ok is false when it has none or its authority is
// not valid.
func (s *state) group(target string) (discovery.Group, bool) {
	m := s.targets[target]
	if len(m) == 0 {
		return discovery.Group{}, false
	}
	auth, err := s.naming.authority(target)
	if err != nil {
		s.log.Warn("etcd target has no valid authority; give it one in naming.targets", "target", target, "err", err)
		return discovery.Group{}, false
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
	eps := make([]discovery.Endpoint, 0, len(keys))
	seen := make(map[netip.AddrPort]bool, len(keys))
	for _, k := range keys {
		e := m[k]
		if seen[e.Addr] {
			continue
		}
		seen[e.Addr] = true
		eps = append(eps, e)
	}
	return discovery.Group{Key: target, Services: []discovery.Service{{Authority: auth, Endpoints: eps}}}, true
}

// value is the JSON endpoints.Manager writes: the Update of its internal
// package, whose Addr and Metadata are endpoints.Endpoint's fields.
type value struct {
	endpoints.Endpoint
	Op int `json:"Op"`
}

// metadata is what the source reads of an endpoint's Metadata.
type metadata struct {
	Zone       string            `json:"zone"`
	Weight     *float64          `json:"weight"`
	Labels     map[string]string `json:"labels"`
	Identity   string            `json:"identity"`
	ServerName string            `json:"server_name"`
	Protocol   string            `json:"protocol"`
}

// reservedLabels are set by Tributary itself.
var reservedLabels = []string{"zone", "source"}

// decodeEndpoint reads one value.
func decodeEndpoint(b []byte) (discovery.Endpoint, error) {
	var v value
	if err := json.Unmarshal(b, &v); err != nil {
		return discovery.Endpoint{}, fmt.Errorf("value is not an endpoints.Endpoint in JSON: %v", err)
	}
	if v.Op != 0 {
		return discovery.Endpoint{}, fmt.Errorf("value has Op %d, not an addition", v.Op)
	}
	ap, err := netip.ParseAddrPort(v.Addr)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		return discovery.Endpoint{}, fmt.Errorf("address %q (Addr) is not an IP address with a port", v.Addr)
	}
	ep := discovery.Endpoint{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
	obj, ok := v.Metadata.(map[string]any)
	if !ok {
		return ep, nil
	}
	raw, _ := json.Marshal(obj)
	var md metadata
	if err := json.Unmarshal(raw, &md); err != nil {
		return discovery.Endpoint{}, fmt.Errorf("metadata: %v", err)
	}
	ep.Zone = md.Zone
	if md.Weight != nil {
		w := *md.Weight
		if w < 1 || w > 1<<31 || w != float64(uint32(w)) {
			return discovery.Endpoint{}, fmt.Errorf("metadata weight %v: want a whole number from 1 to 2147483648", w)
		}
		ep.Weight = uint32(w)
	}
	for _, r := range reservedLabels {
		if _, bad := md.Labels[r]; bad {
			return discovery.Endpoint{}, fmt.Errorf("metadata label %q is set by Tributary itself", r)
		}
	}
	if len(md.Labels) > 0 {
		ep.Labels = md.Labels
	}
	if ep.Identity, err = discovery.ParseIdentity(md.Identity, md.ServerName); err != nil {
		return discovery.Endpoint{}, fmt.Errorf("metadata: %v", err)
	}
	if ep.Protocol, err = discovery.ParseProtocol(md.Protocol); err != nil {
		return discovery.Endpoint{}, fmt.Errorf("metadata: %v", err)
	}
	return ep, nil
}
