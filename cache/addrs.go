package cache

import (
	"hash/maphash"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tributary-mesh/tributary/discovery"
)

// addrTable finds endpoints by address (a Get by IP). It is not a memdb
// index: an index costs every endpoint a radix-tree key, with its nodes and
// their watch channels, and a copy of its path on every write — at
// 1,000,000 endpoints about 450 MB, 30 % of the registry's heap then, for
// lookups by IP that many deployments never make. Here an address costs
// one map entry naming the service rows that have it; the rows themselves,
// and the watch on each, come from the snapshot's id index.
//
// The table is written under memdb's write lock (by the writer, just before
// Commit), so it follows the transactions in their order, and read at call
// time rather than at a snapshot's version. Readers stay correct because
// of what they watch (see Snapshot.EndpointsByAddr): a row the table
// already names but the snapshot does not yet have is watched by the
// nearest node of the snapshot's tree, which the pending commit closes.
type addrTable struct {
	mu   sync.RWMutex
	rows map[netip.AddrPort][]rowRef
	// bells[i] is closed, and replaced, when an address of bucket i gains
	// or loses a row: what wakes a reader of an address that another
	// service starts (or stops) using. heard[i] says a reader took
	// bells[i] since it was made: a bell nobody took is not replaced (at
	// start, or in an estate nobody asks by IP, that is every bell).
	bells [addrBuckets]chan struct{}
	heard [addrBuckets]atomic.Bool
	seed  maphash.Seed
}

// addrBuckets: a change of one address wakes the readers of about
// 1/addrBuckets of the addresses being watched.
const addrBuckets = 1024

// rowRef names the service row an endpoint is in: its id.
type rowRef struct {
	auth          discovery.Authority
	provider, key string
}

// addrChange is one row gained (add) or lost by an address, recorded by the
// writer and applied at commit.
type addrChange struct {
	addr netip.AddrPort
	ref  rowRef
	add  bool
}

func newAddrTable() *addrTable {
	t := &addrTable{rows: map[netip.AddrPort][]rowRef{}, seed: maphash.MakeSeed()}
	for i := range t.bells {
		t.bells[i] = make(chan struct{})
	}
	return t
}

func (t *addrTable) bucket(a netip.AddrPort) int {
	return int(maphash.Comparable(t.seed, a) % addrBuckets)
}

// apply records a committed transaction's changes and rings the bell of
// every bucket they touched. The caller holds memdb's write lock.
func (t *addrTable) apply(changes []addrChange) {
	if len(changes) == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var rung [addrBuckets / 64]uint64
	for _, c := range changes {
		refs := t.rows[c.addr]
		i := slices.Index(refs, c.ref)
		switch {
		case c.add && i < 0:
			// Usually one row per address: no spare capacity.
			t.rows[c.addr] = append(refs[:len(refs):len(refs)], c.ref)
		case !c.add && i >= 0 && len(refs) == 1:
			delete(t.rows, c.addr)
		case !c.add && i >= 0:
			t.rows[c.addr] = slices.Delete(slices.Clone(refs), i, i+1)
		default:
			continue
		}
		b := t.bucket(c.addr)
		if rung[b/64]&(1<<(b%64)) == 0 && t.heard[b].Load() {
			rung[b/64] |= 1 << (b % 64)
			t.heard[b].Store(false)
			close(t.bells[b])
			t.bells[b] = make(chan struct{})
		}
	}
}

// lookup returns the rows that have a (the slice is not to be modified) and
// the bell that rings when that list changes.
func (t *addrTable) lookup(a netip.AddrPort) ([]rowRef, <-chan struct{}) {
	b := t.bucket(a)
	t.mu.RLock()
	defer t.mu.RUnlock()
	t.heard[b].Store(true)
	return t.rows[a], t.bells[b]
}

// reserve makes room for n addresses in an empty table: the first
// hand-over of a large estate then does not grow the map step by step
// (at 1,000,000 addresses the growing cost a tenth of the start's CPU).
func (t *addrTable) reserve(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.rows) == 0 && n > len(t.bells) {
		t.rows = make(map[netip.AddrPort][]rowRef, n)
	}
}
