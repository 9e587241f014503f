package cache

import (
	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

// Reads for followers of the whole registry (the served-state tracker, the
// admin API's service list): which hosts changed since a store version,
// and every declared authority in order. Both read whole tables, once per
// call, without copying rows.

// HostsChangedSince calls fn with every host whose last change has a store
// version above since, and returns the highest version it saw (at least
// since). It adds to ws (if non-nil) a channel that fires when any host
// changes. Hosts that lost all their rows are included: their version row
// stays.
func (sn *Snapshot) HostsChangedSince(ws memdb.WatchSet, since uint64, fn func(host string)) uint64 {
	top := since
	it := sn.get(ws, tableHosts, indexID, nil)
	for obj := it.Next(); obj != nil; obj = it.Next() {
		v := obj.(*versionRow)
		if v.version > since {
			fn(v.host)
			top = max(top, v.version)
		}
	}
	return top
}

// EachAuthority calls fn with every service assertion's authority and
// provider, sorted by host, then port (an authority asserted by several
// providers or keys comes once per assertion, consecutively), until fn
// returns false.
func (sn *Snapshot) EachAuthority(fn func(a discovery.Authority, provider string) bool) {
	it := sn.get(nil, tableServices, indexHost, nil)
	for obj := it.Next(); obj != nil; obj = it.Next() {
		r := obj.(*serviceRow)
		if !fn(r.auth, r.provider) {
			return
		}
	}
}
