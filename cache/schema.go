package cache

import (
	"fmt"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

const (
	// tableServices holds the service rows, each with its endpoints. An
	// endpoint is not a row of its own: a row costs go-memdb a key in each
	// index, its radix-tree nodes and their watch channels, about 580 bytes
	// at 1,000,000 endpoints, against the 8 of a pointer in its service's
	// row.
	tableServices = "services"
	// tableHosts holds one versionRow per host that has ever had rows.
	tableHosts = "hosts"

	// indexID is memdb's primary index: (provider, key, host, port) for a
	// service. Its prefix form takes a groupPrefix: a groupQuery (every row
	// of one group key) or a providerQuery (every row of one provider) —
	// what a group index would answer, without a third key for every row
	// to copy on every write.
	indexID = "id"
	// indexHost (services only): (host, port), read with an authQuery; its
	// prefix form takes a hostQuery and matches every port of that host.
	indexHost = "host"
	// Endpoints by address: the addrTable, not an index.

	prefix = "_prefix"
)

// serviceRow is one provider's assertion, under one group key, that an
// authority exists, with its endpoints. Rows are immutable once inserted: a
// change of one endpoint is a new row, which shares the unchanged endpoint
// rows of the one it replaces.
type serviceRow struct {
	provider, key string
	auth          discovery.Authority
	opaque        bool
	profile       *discovery.Profile            // shared with the source; nil: none
	clients       map[string]*discovery.Profile // ClientProfiles, shared with the source
	eps           []*endpointRow                // sorted by address, unique
}

// endpointRow is one endpoint of a service row; ep.Source and ep.Key hold
// the provider and the group key. Endpoint rows are immutable, shared by
// the service rows that have them, and readers are handed &row.ep.
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
	// groupQuery selects the rows of one group key of one provider.
	groupQuery struct{ provider, key string }
	// providerQuery selects every group of one provider.
	providerQuery string
	// hostQuery selects every port of one host.
	hostQuery string
)

// authQuery selects the rows of one (host, port).
type authQuery discovery.Authority

// groupPrefix is a prefix of service ids made of whole components.
type groupPrefix interface{ groupPrefix() []byte }

func (q groupQuery) groupPrefix() []byte    { return appendGroup(nil, q.provider, q.key) }
func (p providerQuery) groupPrefix() []byte { return appendString(nil, string(p)) }

// schema is the registry's memdb schema. Strings in keys end in a NUL byte
// (Apply rejects NUL inside them), so "consul/dc1" never prefixes
// "consul/dc10"; ports are two bytes big-endian.
func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableServices: servicesTableSchema(),
		tableHosts:    hostsTableSchema(),
	}}
}

func servicesTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableServices,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:   indexID,
				Unique: true,
				Indexer: prefixIndex[serviceID, groupPrefix, *serviceRow]{
					index: index[serviceID, *serviceRow]{
						query:  func(q serviceID) []byte { return appendServiceID(nil, q.provider, q.key, q.auth) },
						object: func(r *serviceRow) []byte { return appendServiceID(nil, r.provider, r.key, r.auth) },
					},
					prefix: func(p groupPrefix) []byte { return p.groupPrefix() },
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
