package cache

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

// Snapshot is a consistent, read-only view of the registry (a memdb read
// transaction). It is safe for concurrent use and may be kept as long as
// needed; it holds on to the rows it sees.
//
// Endpoints it returns are shared with the store and every other reader:
// callers must not modify them.
type Snapshot struct {
	txn   *memdb.Txn
	addrs *addrTable
	rows  <-chan struct{} // Store.rows when the snapshot was taken
}

// ServiceState is what the registry holds for one requested authority.
type ServiceState struct {
	// Exists: at least one provider asserts the service exists, possibly
	// with zero endpoints.
	Exists bool
	// Opaque: some matching assertion marks the service opaque.
	Opaque bool
	// Profile: the declared profile of the first matching assertion that
	// has one, rows of the exact port before those of any port, then by
	// provider and key. Shared and immutable; nil: none.
	Profile *discovery.Profile
	// ClientProfiles: the client profiles (discovery.Service.ClientProfiles)
	// of the same assertion as Profile when it has any, else of the first
	// that has some, in the same order. Shared and immutable.
	ClientProfiles map[string]*discovery.Profile
	// Endpoints of every provider and health state (eviction is the
	// reader's business), sorted by Addr, then Source, then Key. Shared and
	// immutable.
	Endpoints []*discovery.Endpoint
	// Version is the store version of the host's last change (0: never
	// had rows); equal versions mean equal content for the host.
	Version uint64
	// Changed is when that change was handed over to the store.
	Changed time.Time
}

// AddrMatch is an endpoint row found by address, with the authority it serves.
type AddrMatch struct {
	Authority discovery.Authority
	Endpoint  *discovery.Endpoint
}

// ServiceRow is one provider's assertion of one service under one group
// key, with its endpoints.
type ServiceRow struct {
	Provider, Key string
	Authority     discovery.Authority
	Opaque        bool
	Profile       *discovery.Profile
	Clients       map[string]*discovery.Profile // ClientProfiles
	Endpoints     []*discovery.Endpoint
}

// ProviderStats counts what one provider holds.
type ProviderStats struct {
	Keys, Services, Endpoints int
}

// Service returns what the registry holds for an authority as a client asks
// for it: the rows of services of the same host whose port is a.Port or 0
// ("any port"); with a.Port == 0, the rows of every port of the host. The
// host is compared in its canonical form (see discovery.ParseAuthority).
//
// It adds to ws (if non-nil) channels that fire when rows of that host
// change, endpoints or service assertions, and not when the rows of another
// host change. Being radix-tree nodes, they may also fire when nothing the
// read returned changed: for another port of the host; when a host sharing
// a name prefix with this one appears or disappears; and, for a host the
// registry does not hold, when a host near it in the index changes.
func (sn *Snapshot) Service(ws memdb.WatchSet, a discovery.Authority) ServiceState {
	host, err := canonicalHost(a.Host)
	if err != nil {
		return ServiceState{} // no row can ever have this host
	}
	var (
		st ServiceState
		// Most services have a few endpoints: their rows are gathered on
		// the stack, without growing a slice on the heap step by step.
		buf  [16]*endpointRow
		rows = buf[:0]
	)
	if raw, err := sn.txn.First(tableHosts, indexID, hostQuery(host)); err == nil && raw != nil {
		v := raw.(*versionRow)
		st.Version, st.Changed = v.version, v.changed
	}
	visit := func(svcIndex string, q any) {
		it := sn.get(ws, tableServices, svcIndex, q)
		for obj := it.Next(); obj != nil; obj = it.Next() {
			r := obj.(*serviceRow)
			st.Exists = true
			st.Opaque = st.Opaque || r.opaque
			if st.Profile == nil && st.ClientProfiles == nil {
				st.Profile, st.ClientProfiles = r.profile, r.clients
			}
			rows = append(rows, r.eps...)
		}
	}
	if a.Port == 0 {
		visit(indexHost+prefix, hostQuery(host))
	} else {
		visit(indexHost, authQuery{Host: host, Port: a.Port})
		visit(indexHost, authQuery{Host: host})
	}
	if len(rows) == 0 {
		return st
	}
	slices.SortFunc(rows, func(x, y *endpointRow) int {
		if c := x.ep.Addr.Compare(y.ep.Addr); c != 0 {
			return c
		}
		if c := strings.Compare(x.ep.Source, y.ep.Source); c != 0 {
			return c
		}
		if c := strings.Compare(x.ep.Key, y.ep.Key); c != 0 {
			return c
		}
		return cmp.Compare(x.auth.Port, y.auth.Port)
	})
	st.Endpoints = make([]*discovery.Endpoint, len(rows))
	for i, r := range rows {
		st.Endpoints[i] = &r.ep
	}
	return st
}

// EndpointsByAddr returns every endpoint row with exactly that address, with
// the authority it serves, sorted by host, port, Source and Key. It adds to
// ws (if non-nil) channels that fire when rows of that address change or
// when the address gains or loses a row.
//
// Which rows have the address is read at call time (the addrTable), the
// rows from the snapshot: a row added since the snapshot is missing from
// the answer and its watch is already closed; a row deleted since is left
// out. Either way a watcher re-reads and converges.
func (sn *Snapshot) EndpointsByAddr(ws memdb.WatchSet, addr netip.AddrPort) []AddrMatch {
	refs, bell := sn.addrs.lookup(addr)
	ws.Add(bell)
	var out []AddrMatch
	for _, ref := range refs {
		watch, obj, err := sn.txn.FirstWatch(tableServices, indexID, serviceID{provider: ref.provider, key: ref.key, auth: ref.auth})
		if err != nil {
			panic("cache: " + err.Error())
		}
		ws.Add(watch)
		if obj == nil {
			continue
		}
		eps := obj.(*serviceRow).eps
		if i, ok := slices.BinarySearchFunc(eps, addr, func(r *endpointRow, a netip.AddrPort) int { return r.ep.Addr.Compare(a) }); ok {
			out = append(out, AddrMatch{Authority: eps[i].auth, Endpoint: &eps[i].ep})
		}
	}
	slices.SortFunc(out, func(x, y AddrMatch) int {
		if c := cmpAuth(x.Authority, y.Authority); c != 0 {
			return c
		}
		if c := strings.Compare(x.Endpoint.Source, y.Endpoint.Source); c != 0 {
			return c
		}
		return strings.Compare(x.Endpoint.Key, y.Endpoint.Key)
	})
	return out
}

// Dump returns every service assertion with its endpoints (sorted by Addr),
// sorted by host, port, provider and key. It reads the whole registry: it
// is meant for the admin API, not for a hot path.
func (sn *Snapshot) Dump() []ServiceRow {
	var out []ServiceRow
	it := sn.get(nil, tableServices, indexID, nil)
	for obj := it.Next(); obj != nil; obj = it.Next() {
		r := obj.(*serviceRow)
		row := ServiceRow{Provider: r.provider, Key: r.key, Authority: r.auth, Opaque: r.opaque, Profile: r.profile, Clients: r.clients}
		for _, e := range r.eps {
			row.Endpoints = append(row.Endpoints, &e.ep)
		}
		out = append(out, row)
	}
	slices.SortFunc(out, func(x, y ServiceRow) int {
		if c := cmpAuth(x.Authority, y.Authority); c != 0 {
			return c
		}
		if c := strings.Compare(x.Provider, y.Provider); c != 0 {
			return c
		}
		return strings.Compare(x.Key, y.Key)
	})
	return out
}

// Providers returns, per provider, how many group keys, services and
// endpoints it holds. It reads the whole registry (for metrics scrapes).
func (sn *Snapshot) Providers() map[string]ProviderStats {
	out := map[string]ProviderStats{}
	var lastProvider, lastKey string
	it := sn.get(nil, tableServices, indexID, nil)
	for obj := it.Next(); obj != nil; obj = it.Next() {
		r := obj.(*serviceRow)
		st := out[r.provider]
		st.Services++
		// The id index orders rows by provider, then key.
		if r.provider != lastProvider || r.key != lastKey {
			st.Keys++
			lastProvider, lastKey = r.provider, r.key
		}
		st.Endpoints += len(r.eps)
		out[r.provider] = st
	}
	return out
}

// get runs a read the schema supports; an error is a bug in this package.
// A nil arg reads the whole index.
func (sn *Snapshot) get(ws memdb.WatchSet, table, index string, arg any) memdb.ResultIterator {
	var (
		it  memdb.ResultIterator
		err error
	)
	if arg == nil {
		it, err = sn.txn.Get(table, index)
	} else {
		it, err = sn.txn.Get(table, index, arg)
	}
	if err != nil {
		panic("cache: " + err.Error())
	}
	ws.Add(it.WatchCh())
	return it
}
