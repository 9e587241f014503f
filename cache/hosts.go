package cache

import (
	"github.com/hashicorp/go-memdb"
)

// Reads for edges that answer by name rather than by authority (the DNS
// interface): which ports a host is declared with, and which hosts exist.

// Ports returns the ports the services of host are declared with, sorted
// and without repeats; 0 stands for a service declared for any port. The
// host is compared in its canonical form. It adds to ws (if non-nil) a
// channel that fires when the host's service rows change (their endpoints
// too: a service row holds its endpoints).
func (sn *Snapshot) Ports(ws memdb.WatchSet, host string) []uint16 {
	h, err := canonicalHost(host)
	if err != nil {
		return nil
	}
	var out []uint16
	// The host index orders rows by host, then port.
	it := sn.get(ws, tableServices, indexHost+prefix, hostQuery(h))
	for obj := it.Next(); obj != nil; obj = it.Next() {
		if p := obj.(*serviceRow).auth.Port; len(out) == 0 || out[len(out)-1] != p {
			out = append(out, p)
		}
	}
	return out
}

// Hosts returns every host some service row is declared for, sorted, each
// once. It reads the whole services table, and adds to ws (if non-nil) a
// channel that fires whenever a service row is inserted where there was
// none, or deleted, anywhere: a change of a service's endpoints or
// settings alone does not fire it.
func (sn *Snapshot) Hosts(ws memdb.WatchSet) []string {
	ws.Add(sn.rows)
	var out []string
	it := sn.get(nil, tableServices, indexHost, nil)
	for obj := it.Next(); obj != nil; obj = it.Next() {
		if h := obj.(*serviceRow).auth.Host; len(out) == 0 || out[len(out)-1] != h {
			out = append(out, h)
		}
	}
	return out
}
