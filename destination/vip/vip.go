// Package vip gives services virtual IPs: one stable address per host
// (a DNS name of the registry), which the DNS interface answers instead of
// the endpoints' addresses, and which the destination server turns back
// into the host when a proxy asks GetProfile(VIP:port). A stock
// linkerd2-proxy discovers by the IP the application dialled, so a service
// without a Kubernetes ClusterIP becomes reachable, load-balanced, through
// its virtual IP.
//
// # What is allocated
//
// One address per host, whatever its ports: the proxy keeps the port the
// application dialled and asks Get(host:port). Hosts come from the
// registry (every host with a service row in a zone with virtual IPs).
//
// # The deterministic allocator, and what is stable
//
// Hash (the only Allocator today) needs no shared state: every replica, and
// every restart, computes the same table from the same set of hosts.
//
//   - A host's slot is a pure function of its name and the CIDR: the
//     SHA-256 of the name, as a number, modulo the number of usable
//     addresses (the CIDR without its first and last address when it has
//     four or more). Its virtual IP is either that slot's address or none:
//     it never gets another address, so a virtual IP never moves from one
//     service to another while both exist.
//   - Collision: when two or more hosts have the same slot, none of them
//     gets it (they have no virtual IP, and the DNS interface answers their
//     endpoints' addresses), and the address maps to no host. This is the
//     one way the set of hosts matters: a host loses its virtual IP while
//     another host with the same slot exists, and gets it back when that
//     host leaves. Probing for a free slot instead (linear or by a second
//     hash) would give every host an address, but which host got which
//     would depend on the other hosts and on their order: a new host could
//     take the address an existing one's clients have cached, and their
//     traffic would reach the wrong service. Refusing both is the safe
//     failure.
//   - Pins (configured host → address) take their address first; a hashed
//     host whose slot is pinned to another host has no virtual IP. Pins
//     resolve collisions by hand and survive any change of the set.
//   - Exhaustion does not exist as such: more hosts than slots means more
//     collisions. With n hosts and m usable addresses, a host collides with
//     probability about n/m (1,000 hosts in a /16: 1.5%; 100,000 hosts in
//     240.0.0.0/4: 0.04%; in an IPv6 /64, never in practice). Size the CIDR
//     for that, and watch Table.Collisions.
//
// # Stored allocations (etcd), later
//
// Consul keeps a counter and a free list in its replicated store
// (assignServiceVirtualIP): every service gets an address, collisions
// cannot happen, and freed addresses are reused; exhaustion is an error.
// The same in etcd (a transaction per new host: create the host's key if
// absent with the next free address) is an Allocator too, for when the
// etcd backend is configured: Allocate would then read and extend the
// stored allocation instead of hashing. Everything that uses a table
// (the DNS interface, GetProfile) goes through Allocator and Table only.
package vip

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	"github.com/tributary-mesh/tributary/destination/internal/cowmap"
)

// Table is one allocation: hosts to virtual IPs and back. Immutable once
// built, safe for concurrent use; Allocate derives the next one from it,
// copying only what the change touches.
type Table struct {
	pins     map[string]netip.Addr // host → pinned address (the allocator's)
	pinOwner map[netip.Addr]string // and back
	// slotOf is every hashed (not pinned) host's slot; owners every
	// slot's hosts, sorted.
	slotOf cowmap.Map[string, netip.Addr]
	owners cowmap.Map[netip.Addr, []string]
	// contested holds the slots more than one host wants, or that some
	// host wants and a pin holds: nobody hashes into them.
	contested map[netip.Addr]struct{}
	hashed    int // hosts in slotOf
	losers    int // hosts of slotOf whose slot is contested
}

// Collision is a set of hosts that hash to one address; none of them has
// a virtual IP.
type Collision struct {
	Addr  netip.Addr
	Hosts []string // sorted; a pinned owner is not listed
	// PinnedTo is the host the address is pinned to, if any.
	PinnedTo string
}

// Lookup returns host's virtual IP.
func (t *Table) Lookup(host string) (netip.Addr, bool) {
	if t == nil {
		return netip.Addr{}, false
	}
	if a, ok := t.pins[host]; ok {
		return a, true
	}
	a, ok := t.slotOf.Get(host)
	if !ok {
		return netip.Addr{}, false
	}
	if _, bad := t.contested[a]; bad {
		return netip.Addr{}, false
	}
	return a, true
}

// Host returns the host a virtual IP belongs to.
func (t *Table) Host(addr netip.Addr) (string, bool) {
	if t == nil {
		return "", false
	}
	addr = addr.Unmap()
	if h, ok := t.pinOwner[addr]; ok {
		return h, true
	}
	if _, bad := t.contested[addr]; bad {
		return "", false
	}
	if ow, _ := t.owners.Get(addr); len(ow) == 1 {
		return ow[0], true
	}
	return "", false
}

// Len is how many hosts have a virtual IP (pins included).
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.pins) + t.hashed - t.losers
}

// Collisions lists the hosts that have no virtual IP because of another
// host with the same address, by address.
func (t *Table) Collisions() []Collision {
	if t == nil || len(t.contested) == 0 {
		return nil
	}
	out := make([]Collision, 0, len(t.contested))
	for a := range t.contested {
		ow, _ := t.owners.Get(a)
		out = append(out, Collision{Addr: a, Hosts: ow, PinnedTo: t.pinOwner[a]})
	}
	slices.SortFunc(out, func(x, y Collision) int { return x.Addr.Compare(y.Addr) })
	return out
}

// Colliding is how many hosts have no virtual IP because of a collision.
func (t *Table) Colliding() int {
	if t == nil {
		return 0
	}
	return t.losers
}

// Allocator assigns virtual IPs to hosts.
type Allocator interface {
	// Allocate returns prev's allocation with the added hosts in and the
	// removed ones out (prev nil: an empty allocation); a host is in one
	// of the lists at most. Hosts are
	// canonical (lower case, no trailing dot): every host of the zones
	// with virtual IPs. prev is not modified. Calls are serialised by the
	// caller. A deterministic allocator gives the same table for the same
	// set of hosts, however it was reached; a stored one (etcd) may keep
	// the addresses of hosts that left for a while, and fails when its
	// store does, in which case the caller keeps prev.
	Allocate(ctx context.Context, prev *Table, added, removed []string) (*Table, error)
	// Contains reports whether addr is in the allocator's range: an
	// address in range with no host is a virtual IP nobody has.
	Contains(addr netip.Addr) bool
}

// Hash is the deterministic allocator (see the package doc).
type Hash struct {
	prefix   netip.Prefix
	first    *big.Int // the first usable address, as a number
	size     *big.Int // how many usable addresses
	pins     map[string]netip.Addr
	pinOwner map[netip.Addr]string
}

// ErrConfig is wrapped by NewHash's errors.
var ErrConfig = errors.New("virtual IPs")

// NewHash returns the deterministic allocator for cidr, with pins (host →
// address; hosts are made canonical). Every pin must be a usable address of
// cidr, and no two hosts may share one.
func NewHash(cidr netip.Prefix, pins map[string]netip.Addr) (*Hash, error) {
	if !cidr.IsValid() {
		return nil, fmt.Errorf("%w: invalid CIDR", ErrConfig)
	}
	cidr = cidr.Masked()
	bits := cidr.Addr().BitLen() - cidr.Bits()
	if bits < 1 {
		return nil, fmt.Errorf("%w: CIDR %s holds one address; a range needs at least two", ErrConfig, cidr)
	}
	h := &Hash{prefix: cidr, pins: map[string]netip.Addr{}, pinOwner: map[netip.Addr]string{}}
	h.first = addrInt(cidr.Addr())
	h.size = new(big.Int).Lsh(big.NewInt(1), uint(bits))
	if bits >= 2 { // leave out the network and the broadcast-looking address
		h.first.Add(h.first, big.NewInt(1))
		h.size.Sub(h.size, big.NewInt(2))
	}
	owner := map[netip.Addr]string{}
	for host, a := range pins {
		host = canonical(host)
		a = a.Unmap()
		if !h.usable(a) {
			return nil, fmt.Errorf("%w: pin %s: %s is not a usable address of %s", ErrConfig, host, a, cidr)
		}
		if o, dup := owner[a]; dup && o != host {
			x, y := min(o, host), max(o, host)
			return nil, fmt.Errorf("%w: pins %s and %s have the same address %s", ErrConfig, x, y, a)
		}
		owner[a] = host
		h.pins[host] = a
		h.pinOwner[a] = host
	}
	return h, nil
}

// Prefix is the allocator's CIDR.
func (h *Hash) Prefix() netip.Prefix { return h.prefix }

// Contains reports whether addr is in the CIDR.
func (h *Hash) Contains(addr netip.Addr) bool { return h.prefix.Contains(addr.Unmap()) }

func (h *Hash) usable(a netip.Addr) bool {
	if !h.prefix.Contains(a) {
		return false
	}
	n := addrInt(a)
	last := new(big.Int).Add(h.first, h.size)
	return n.Cmp(h.first) >= 0 && n.Cmp(last) < 0
}

// Slot returns the address host hashes to (its virtual IP unless it
// collides or another host is pinned there).
func (h *Hash) Slot(host string) netip.Addr {
	sum := sha256.Sum256([]byte(canonical(host)))
	n := new(big.Int).SetBytes(sum[:])
	n.Mod(n, h.size)
	n.Add(n, h.first)
	return intAddr(n, h.prefix.Addr().Is4())
}

// Allocate implements Allocator; it never fails. It costs a hash per
// added host and a copy of the shards the change touches, not a pass over
// every host.
func (h *Hash) Allocate(_ context.Context, prev *Table, added, removed []string) (*Table, error) {
	if prev == nil {
		prev = &Table{pins: h.pins, pinOwner: h.pinOwner}
	}
	t := *prev
	t.contested = prev.contested
	slots, owners := prev.slotOf.Edit(), prev.owners.Edit()
	contestedCopied := false
	// update sets a slot's hosts and keeps contested and losers in step.
	update := func(a netip.Addr, ow []string) {
		_, wasBad := t.contested[a]
		old, _ := owners.Get(a)
		_, pinned := t.pinOwner[a]
		bad := len(ow) > 1 || (len(ow) == 1 && pinned)
		if wasBad {
			t.losers -= len(old)
		}
		if bad {
			t.losers += len(ow)
		}
		if bad != wasBad {
			if !contestedCopied {
				c := make(map[netip.Addr]struct{}, len(t.contested)+1)
				for k := range t.contested {
					c[k] = struct{}{}
				}
				t.contested, contestedCopied = c, true
			}
			if bad {
				t.contested[a] = struct{}{}
			} else {
				delete(t.contested, a)
			}
		}
		if len(ow) == 0 {
			owners.Del(a)
		} else {
			owners.Set(a, ow)
		}
	}
	for _, host := range removed {
		host = canonical(host)
		a, ok := slots.Get(host)
		if !ok {
			continue
		}
		slots.Del(host)
		t.hashed--
		old, _ := owners.Get(a)
		update(a, slices.DeleteFunc(slices.Clone(old), func(x string) bool { return x == host }))
	}
	for _, host := range added {
		host = canonical(host)
		if _, pinned := h.pins[host]; pinned {
			continue
		}
		if _, ok := slots.Get(host); ok {
			continue
		}
		a := h.Slot(host)
		slots.Set(host, a)
		t.hashed++
		old, _ := owners.Get(a)
		ow := slices.Clone(old)
		i, _ := slices.BinarySearch(ow, host)
		update(a, slices.Insert(ow, i, host))
	}
	t.slotOf, t.owners = slots.Done(), owners.Done()
	return &t, nil
}

// Table computes the allocation for hosts (any order, repeats ignored):
// pinned hosts take their pins (whether listed or not: a pin holds its
// address even while its host is absent, so no hashed host takes it in the
// meantime), every other host its slot unless another host wants it too.
func (h *Hash) Table(hosts []string) *Table {
	t, _ := h.Allocate(context.Background(), nil, hosts, nil)
	return t
}

func canonical(host string) string { return strings.ToLower(strings.TrimSuffix(host, ".")) }

func addrInt(a netip.Addr) *big.Int {
	b := a.AsSlice()
	return new(big.Int).SetBytes(b)
}

func intAddr(n *big.Int, is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		n.FillBytes(b[:])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	n.FillBytes(b[:])
	return netip.AddrFrom16(b)
}
