package cache

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

const (
	tableServices  = "services"
	tableEndpoints = "endpoints"
	// tableHosts holds one versionRow per host that has ever had rows.
	tableHosts = "hosts"

	// indexID is memdb's primary index: (provider, key, host, port) for a
	// service; (host, port, provider, key, address) for an endpoint, so that
	// its prefix reads by host, by authority and by service (idPrefix)
	// replace a host index.
	indexID = "id"
	// indexHost (services only): (host, port), read with an authQuery; its
	// prefix form takes a hostQuery and matches every port of that host.
	indexHost = "host"
	// indexGroup: (provider, key), read with a groupQuery; its prefix form
	// takes a providerQuery and matches every key of exactly that provider.
	// Endpoints by address: the addrTable, not an index.
	indexGroup = "group"

	prefix = "_prefix"
)

// serviceRow is one provider's assertion, under one group key, that an
// authority exists. Rows are immutable once inserted.
type serviceRow struct {
	provider, key string
	auth          discovery.Authority
	opaque        bool
	profile       *discovery.Profile            // shared with the source; nil: none
	clients       map[string]*discovery.Profile // ClientProfiles, shared with the source
}

// endpointRow is one endpoint of a service row; ep.Source and ep.Key hold
// the provider and the group key. Rows are immutable once inserted, and
// readers are handed &row.ep.
type endpointRow struct {
	auth discovery.Authority
	ep   discovery.Endpoint
}

func (r *endpointRow) ref() rowRef {
	return rowRef{auth: r.auth, provider: r.ep.Source, key: r.ep.Key}
}

// versionRow records the last change to any row of a host: the store-wide
// version of the transaction and the time the change was handed over.
// Readers use it to tell whether a view they computed is still current and
// how long a change took to reach a client.
type versionRow struct {
	host    string
	version uint64
	changed time.Time
}

// Read arguments. Every index takes exactly one, of the type documented on
// its constant, so that a compound prefix is always made of whole components.
type (
	serviceID struct {
		provider, key string
		auth          discovery.Authority
	}
	endpointID struct {
		serviceID
		addr netip.AddrPort
	}
	groupQuery struct{ provider, key string }
	// providerQuery selects every group of one provider.
	providerQuery string
	// hostQuery selects every port of one host.
	hostQuery string
)

// authQuery selects the rows of one (host, port). Service reads pass the
// same argument to both tables.
type authQuery discovery.Authority

// idPrefix is a prefix of endpoint ids made of whole components: every
// port of a host (hostQuery), one authority (authQuery), or the endpoints of
// one service row (*serviceRow: its host, port, provider and key).
type idPrefix interface{ idPrefix() []byte }

func (h hostQuery) idPrefix() []byte { return appendString(nil, string(h)) }
func (a authQuery) idPrefix() []byte { return appendHostPort(nil, discovery.Authority(a)) }
func (r *serviceRow) idPrefix() []byte {
	return appendServicePrefix(nil, r.auth, r.provider, r.key)
}

// schema is the registry's memdb schema. Strings in keys end in a NUL byte
// (Apply rejects NUL inside them), so "consul/dc1" never prefixes
// "consul/dc10"; ports are two bytes big-endian.
func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableServices:  servicesTableSchema(),
		tableEndpoints: endpointsTableSchema(),
		tableHosts:     hostsTableSchema(),
	}}
}

func servicesTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableServices,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:   indexID,
				Unique: true,
				Indexer: index[serviceID, *serviceRow]{
					query:  func(q serviceID) []byte { return appendServiceID(nil, q.provider, q.key, q.auth) },
					object: func(r *serviceRow) []byte { return appendServiceID(nil, r.provider, r.key, r.auth) },
				},
			},
			indexHost: {
				Name: indexHost,
				Indexer: prefixIndex[authQuery, hostQuery, *serviceRow]{
					index: index[authQuery, *serviceRow]{
						query: func(a authQuery) []byte { return appendHostPort(nil, discovery.Authority(a)) },
						object: func(r *serviceRow) []byte {
							return appendHostPort(make([]byte, 0, hostPortLen(r.auth)+serviceIDLen(r)), r.auth)
						},
					},
					prefix: func(h hostQuery) []byte { return appendString(nil, string(h)) },
				},
			},
			indexGroup: {
				Name: indexGroup,
				Indexer: prefixIndex[groupQuery, providerQuery, *serviceRow]{
					index: index[groupQuery, *serviceRow]{
						query: func(q groupQuery) []byte { return appendGroup(nil, q.provider, q.key) },
						object: func(r *serviceRow) []byte {
							return appendGroup(make([]byte, 0, groupLen(r.provider, r.key)+serviceIDLen(r)), r.provider, r.key)
						},
					},
					prefix: func(p providerQuery) []byte { return appendString(nil, string(p)) },
				},
			},
		},
	}
}

func hostsTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableHosts,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:   indexID,
				Unique: true,
				Indexer: index[hostQuery, *versionRow]{
					query:  func(h hostQuery) []byte { return appendString(nil, string(h)) },
					object: func(r *versionRow) []byte { return appendString(nil, r.host) },
				},
			},
		},
	}
}

func endpointsTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableEndpoints,
		Indexes: map[string]*memdb.IndexSchema{
			// The id starts with the authority: its prefix reads answer the
			// reads by host and by authority, which would otherwise need a
			// host index costing every row another key of the id's length,
			// its radix nodes and their copies on every write. Reads by
			// group or provider find the service rows first (an endpoint
			// row never exists without its service row), then read each
			// service's endpoints by id prefix.
			indexID: {
				Name:   indexID,
				Unique: true,
				Indexer: prefixIndex[endpointID, idPrefix, *endpointRow]{
					index: index[endpointID, *endpointRow]{
						query: func(q endpointID) []byte {
							return appendAddr(appendServicePrefix(nil, q.auth, q.provider, q.key), q.addr)
						},
						object: func(r *endpointRow) []byte { return appendEndpointID(nil, r) },
					},
					prefix: func(q idPrefix) []byte { return q.idPrefix() },
				},
			},
		},
	}
}

// index adapts typed key builders to memdb: reads take exactly one argument
// of type Q, rows are of type R. Non-unique indexes size their keys with room
// for the primary key memdb appends.
type index[Q, R any] struct {
	query  func(Q) []byte
	object func(R) []byte
}

func (ix index[Q, R]) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("cache: index takes one argument, got %d", len(args))
	}
	q, ok := args[0].(Q)
	if !ok {
		return nil, fmt.Errorf("cache: index argument is %T, want %T", args[0], q)
	}
	return ix.query(q), nil
}

func (ix index[Q, R]) FromObject(raw any) (bool, []byte, error) {
	r, ok := raw.(R)
	if !ok {
		return false, nil, fmt.Errorf("cache: row is %T, want %T", raw, r)
	}
	return true, ix.object(r), nil
}

// prefixIndex is an index that also answers "_prefix" reads with an
// argument of type P.
type prefixIndex[Q, P, R any] struct {
	index[Q, R]
	prefix func(P) []byte
}

func (ix prefixIndex[Q, P, R]) PrefixFromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("cache: prefix index takes one argument, got %d", len(args))
	}
	p, ok := args[0].(P)
	if !ok {
		return nil, fmt.Errorf("cache: prefix index argument is %T, want %T", args[0], p)
	}
	return ix.prefix(p), nil
}

// Key encoding.

func appendString(b []byte, s string) []byte { return append(append(b, s...), 0) }

func appendPort(b []byte, p uint16) []byte { return append(b, byte(p>>8), byte(p)) }

func hostPortLen(a discovery.Authority) int { return len(a.Host) + 1 + 2 }

func appendHostPort(b []byte, a discovery.Authority) []byte {
	return appendPort(appendString(b, a.Host), a.Port)
}

func groupLen(provider, key string) int { return len(provider) + 1 + len(key) + 1 }

func appendGroup(b []byte, provider, key string) []byte {
	return appendString(appendString(b, provider), key)
}

func serviceIDLen(r *serviceRow) int { return groupLen(r.provider, r.key) + hostPortLen(r.auth) }

func appendServiceID(b []byte, provider, key string, a discovery.Authority) []byte {
	if b == nil {
		b = make([]byte, 0, groupLen(provider, key)+hostPortLen(a))
	}
	return appendHostPort(appendGroup(b, provider, key), a)
}

// appendServicePrefix appends the prefix shared by the endpoint ids of one
// service row: host, port, provider, key.
func appendServicePrefix(b []byte, a discovery.Authority, provider, key string) []byte {
	if b == nil {
		b = make([]byte, 0, hostPortLen(a)+groupLen(provider, key))
	}
	return appendGroup(appendHostPort(b, a), provider, key)
}

func endpointIDLen(r *endpointRow) int {
	return hostPortLen(r.auth) + groupLen(r.ep.Source, r.ep.Key) + addrLen(r.ep.Addr)
}

func appendEndpointID(b []byte, r *endpointRow) []byte {
	if b == nil {
		b = make([]byte, 0, endpointIDLen(r))
	}
	return appendAddr(appendServicePrefix(b, r.auth, r.ep.Source, r.ep.Key), r.ep.Addr)
}

// An address is a family byte (4 or 6, so 1.2.3.4 and ::ffff:1.2.3.4 stay
// distinct), its 4 or 16 bytes (the family byte says which, so keys stay
// prefix-free), the port, and the zone as a terminated string. IPv4 keys
// are 12 bytes shorter than the 16-byte form would make them: shorter
// radix-tree keys to store and compare in the id index.
func addrLen(a netip.AddrPort) int {
	n := 16
	if a.Addr().Is4() {
		n = 4
	}
	return 1 + n + 2 + len(a.Addr().Zone()) + 1
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	ip := a.Addr()
	if ip.Is4() {
		a4 := ip.As4()
		b = append(b, 4)
		b = append(b, a4[:]...)
	} else {
		a16 := ip.As16()
		b = append(b, 6)
		b = append(b, a16[:]...)
	}
	b = appendPort(b, a.Port())
	return appendString(b, ip.Zone())
}
