package cache

import (
	"github.com/hashicorp/go-memdb"
)

// Reads for edges that answer by name rather than by authority (the DNS
// interface): which ports a host is declared with, and which hosts exist.

// Ports returns the ports the services of host are declared with, sorted
// and without repeats; 0 stands for a service declared for any port. The
// host is compared in its canonical form. It adds to ws (if non-nil) a
// channel that fires when the host's service rows change.
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
// once. It reads the whole services table (not the endpoints), and adds to
// ws (if non-nil) a channel that fires whenever a service row is inserted
// or deleted anywhere: a change of endpoints alone does not fire it, since
// the store does not rewrite service rows that did not change.
func (sn *Snapshot) Hosts(ws memdb.WatchSet) []string {
	var out []string
	it := sn.get(ws, tableServices, indexHost, nil)
	for obj := it.Next(); obj != nil; obj = it.Next() {
		if h := obj.(*serviceRow).auth.Host; len(out) == 0 || out[len(out)-1] != h {
			out = append(out, h)
		}
	}
	return out
}
