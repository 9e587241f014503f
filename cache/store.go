// Package cache is Tributary's registry: every source's groups, stored in
// go-memdb. A service row — one provider's assertion of an authority under
// one group key — holds its endpoints; rows are indexed by id (provider,
// group key, host, port; its prefixes read a group or a provider) and by
// host. Endpoints are found by address through a side table (addrs.go).
//
// Writes come from the manager through Apply and DropProvider and are
// serialised. Reads go through a Snapshot, a lock-free MVCC view, and take a
// memdb.WatchSet that fires when what they read may have changed; a writer
// that changes nothing closes no channel.
package cache

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

// ErrInvalid is wrapped by every error Apply and DropProvider return for
// input that is not well-formed.
var ErrInvalid = errors.New("invalid registry input")

// Store is the registry. Safe for concurrent use; writes are serialised,
// reads are lock-free MVCC snapshots.
type Store struct {
	db    *memdb.MemDB
	addrs *addrTable
	// rows is closed, and replaced, after a commit that inserted a service
	// row where there was none or deleted one: what Snapshot.Hosts
	// watches, since a change of endpoints also rewrites its service row.
	rowsMu sync.Mutex
	rows   chan struct{}
	// version counts the transactions that changed something. Only written
	// inside a write transaction, which memdb serialises.
	version uint64
}

// New returns an empty store.
func New() *Store {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		panic("cache: invalid schema: " + err.Error())
	}
	return &Store{db: db, addrs: newAddrTable(), rows: make(chan struct{})}
}

// Apply writes the groups of one provider (a source instance name) and
// reports whether anything changed. Every host's rows change in one memdb
// write transaction: a reader sees a host's rows all before or all after
// the change. A hand-over is one transaction unless it writes more than
// txnWrites rows: then it is written in several, each a set of whole groups
// that shares no host with the others, so that no transaction grows past
// what go-memdb tracks cheaply.
//
// Each group replaces every row the provider had under group.Key; a group
// without services withdraws the key. When a key is listed twice, the last
// group wins. Two services of one group with the same authority are merged
// (endpoints together, Opaque ORed), and within one authority of a group
// the last endpoint of an address wins.
//
// Rows whose content did not change are not rewritten, and when nothing
// changed the transaction is aborted: watchers are woken only for hosts
// whose rows really changed.
//
// Stored endpoints are copies stamped with Source = provider and Key =
// group.Key; the caller's groups are not modified. Label maps and ForZones
// are kept as they came, not copied: endpoints are immutable once handed over
// (see discovery.Endpoint), and a source that hands over an unchanged
// endpoint again then costs no deep comparison of its labels. Hosts
// are stored canonical: lower case, without a trailing dot.
//
// Input that is not well-formed is rejected as a whole with an error
// wrapping ErrInvalid, and nothing changes: an empty provider, or one with
// a NUL byte, or a group discovery.ValidateGroup rejects (an empty group
// key or one with a NUL byte, a host ParseAuthority would reject, an
// endpoint address that is not valid, has port 0, or has a zone with a NUL
// byte).
//
// One provider's groups are written by one caller at a time (the manager
// has one applier per source): the split reads which hosts a group's rows
// had before its transactions start.
func (s *Store) Apply(provider string, groups []discovery.Group) (changed bool, err error) {
	return s.ApplyAt(provider, groups, time.Now())
}

// txnWrites is the number of row writes after which Apply ends a
// transaction at the next boundary between independent groups.
//
// go-immutable-radix, under go-memdb, remembers the watch channel of every
// node a transaction copies, up to 8,192 per index; past that it forgets
// them and, at commit, walks the whole of the old and the new tree to find
// what to notify. In a registry of 1,000,000 endpoints that walk cost more
// than the writes: a manager that fell behind a burst handed over ever
// larger batches, each commit walked the whole registry, and it fell
// further behind (12 % of the server's CPU at 5,000 changes/s). A row write
// copies one path per index, tens of nodes at most, so 512 writes stay
// well under the bound.
var txnWrites = 512

// ApplyAt is Apply for a change handed over at time at: every host it
// changes records at (ServiceState.Changed), so readers can measure how
// long the change took to reach a client.
func (s *Store) ApplyAt(provider string, groups []discovery.Group, at time.Time) (changed bool, err error) {
	if err := checkName("provider", provider); err != nil {
		return false, err
	}
	if len(groups) == 0 {
		return false, nil
	}
	plans, err := plan(groups)
	if err != nil {
		return false, fmt.Errorf("source %q: %w", provider, err)
	}
	if eps := countEndpoints(plans); eps > txnWrites {
		s.addrs.reserve(eps)
	}
	// One transaction, unless it grows past txnWrites: then it is
	// abandoned, and the hand-over is written in independent sets.
	changed, _, err = s.applyPlans(provider, plans, nil, at)
	if !errors.Is(err, errSplit) {
		return changed, err
	}
	order := s.independent(provider, plans)
	// Sets are packed into transactions as they come; a transaction ends
	// once it has written txnWrites rows.
	for len(order) > 0 {
		c, rest, err := s.applyPlans(provider, plans, order, at)
		changed = changed || c
		if err != nil {
			return changed, err
		}
		order = rest
	}
	return changed, nil
}

func countEndpoints(plans []groupPlan) int {
	n := 0
	for i := range plans {
		n += len(plans[i].eps)
	}
	return n
}

// errSplit: a transaction of every plan would grow past txnWrites.
var errSplit = errors.New("cache: hand-over too large for one transaction")

// applyPlans writes, in one transaction, every plan (order nil; errSplit,
// and nothing written, when more than one plan write more than txnWrites
// rows) or the sets of order until txnWrites rows were written, and returns
// the sets left.
func (s *Store) applyPlans(provider string, plans []groupPlan, order [][]int, at time.Time) (changed bool, rest [][]int, err error) {
	txn := s.db.Txn(true)
	defer txn.Abort()
	w := writer{txn: txn, provider: provider}
	one := func(i int) error {
		c, err := w.syncGroup(&plans[i])
		if err != nil {
			return fmt.Errorf("source %q: group %q: %w", provider, plans[i].key, err)
		}
		changed = changed || c
		return nil
	}
	if order == nil {
		for i := range plans {
			if err := one(i); err != nil {
				return false, nil, err
			}
			if w.writes > txnWrites && len(plans) > 1 {
				return false, nil, errSplit
			}
		}
	} else {
		for len(order) > 0 && w.writes < txnWrites {
			for _, i := range order[0] {
				if err := one(i); err != nil {
					return false, nil, err
				}
			}
			order = order[1:]
		}
	}
	if !changed {
		return false, order, nil
	}
	if err := s.bumpHosts(txn, w.touched, at); err != nil {
		return false, nil, err
	}
	s.addrs.apply(w.addrs)
	txn.Commit()
	if w.rowsAddedOrDeleted {
		s.ringRows()
	}
	return true, order, nil
}

// independent splits plans (indexes into it) into sets that share no host,
// counting the hosts each group's rows have now and will have: writing one
// set per transaction then changes every host in one transaction. Sets come
// in the order of their first plan. A single set means no split.
func (s *Store) independent(provider string, plans []groupPlan) [][]int {
	parent := make([]int, len(plans))
	for i := range parent {
		parent[i] = i
	}
	find := func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	owner := make(map[string]int, len(plans))
	claim := func(host string, i int) {
		if j, ok := owner[host]; ok {
			if a, b := find(i), find(j); a != b {
				parent[max(a, b)] = min(a, b)
			}
			return
		}
		owner[host] = i
	}
	txn := s.db.Txn(false)
	// A provider's first hand-over (a source's initial state) has no rows
	// to look up.
	held, err := txn.First(tableServices, indexID+prefix, providerQuery(provider))
	if err != nil {
		panic("cache: " + err.Error())
	}
	args := make([]any, 1)
	for i := range plans {
		p := &plans[i]
		for _, w := range p.svcs {
			claim(w.auth.Host, i)
		}
		if held == nil {
			continue
		}
		args[0] = groupQuery{provider: provider, key: p.key}
		it, err := txn.Get(tableServices, indexID+prefix, args...)
		if err != nil {
			panic("cache: " + err.Error())
		}
		for obj := it.Next(); obj != nil; obj = it.Next() {
			claim(obj.(*serviceRow).auth.Host, i)
		}
	}
	var sets [][]int
	at := make(map[int]int, len(plans))
	for i := range plans {
		r := find(i)
		k, ok := at[r]
		if !ok {
			k = len(sets)
			at[r] = k
			sets = append(sets, nil)
		}
		sets[k] = append(sets[k], i)
	}
	return sets
}

// bumpHosts gives every touched host the next store version; the caller
// commits.
func (s *Store) bumpHosts(txn *memdb.Txn, hosts map[string]struct{}, at time.Time) error {
	s.version++
	for h := range hosts {
		if err := txn.Insert(tableHosts, &versionRow{host: h, version: s.version, changed: at}); err != nil {
			return err
		}
	}
	return nil
}

// Keys lists the group keys a provider currently has rows for, sorted.
func (s *Store) Keys(provider string) []string {
	if checkName("provider", provider) != nil {
		return nil
	}
	it, err := s.db.Txn(false).Get(tableServices, indexID+prefix, providerQuery(provider))
	if err != nil {
		panic("cache: " + err.Error())
	}
	var keys []string
	for obj := it.Next(); obj != nil; obj = it.Next() {
		if k := obj.(*serviceRow).key; len(keys) == 0 || keys[len(keys)-1] != k {
			keys = append(keys, k)
		}
	}
	return keys
}

// DropProvider deletes every row of a provider in one transaction and
// reports whether anything changed.
func (s *Store) DropProvider(provider string) (changed bool, err error) {
	if err := checkName("provider", provider); err != nil {
		return false, err
	}
	txn := s.db.Txn(true)
	defer txn.Abort()
	// Rows are collected before deleting: a write txn's iterator must not
	// outlive a modification. A service row holds its endpoints.
	svcs, err := appendRows[*serviceRow](nil, txn, tableServices, indexID+prefix, providerQuery(provider))
	if err != nil {
		return false, fmt.Errorf("source %q: %w", provider, err)
	}
	touched := map[string]struct{}{}
	var addrs []addrChange
	for _, r := range svcs {
		touched[r.auth.Host] = struct{}{}
		if err := txn.Delete(tableServices, r); err != nil {
			return false, fmt.Errorf("source %q: %w", provider, err)
		}
		for _, e := range r.eps {
			addrs = append(addrs, addrChange{addr: e.ep.Addr, ref: e.ref()})
		}
	}
	if len(touched) == 0 {
		return false, nil
	}
	if err := s.bumpHosts(txn, touched, time.Now()); err != nil {
		return false, err
	}
	s.addrs.apply(addrs)
	txn.Commit()
	s.ringRows()
	return true, nil
}

// ringRows wakes the readers of the set of service rows. After the commit:
// a reader takes the bell before its snapshot (Store.Snapshot), so one that
// took the new bell has a snapshot with the commit.
func (s *Store) ringRows() {
	s.rowsMu.Lock()
	defer s.rowsMu.Unlock()
	close(s.rows)
	s.rows = make(chan struct{})
}

// appendRows appends to rows the rows of txn.Get(table, index, args...).
func appendRows[R any](rows []R, txn *memdb.Txn, table, index string, args ...any) ([]R, error) {
	it, err := txn.Get(table, index, args...)
	if err != nil {
		return rows, err
	}
	for obj := it.Next(); obj != nil; obj = it.Next() {
		rows = append(rows, obj.(R))
	}
	return rows, nil
}

// Snapshot returns a consistent read-only view of the registry. It is cheap
// and never blocks writers; later writes do not show in it.
func (s *Store) Snapshot() *Snapshot {
	s.rowsMu.Lock()
	rows := s.rows
	s.rowsMu.Unlock()
	return &Snapshot{txn: s.db.Txn(false), addrs: s.addrs, rows: rows}
}

// Planning: validate and normalise a whole Apply before the write lock.

type groupPlan struct {
	key  string
	svcs []svcWant // sorted by authority, unique
	eps  []epWant  // sorted by authority then address, unique
}

type svcWant struct {
	auth    discovery.Authority
	opaque  bool
	profile *discovery.Profile
	clients map[string]*discovery.Profile
}

type epWant struct {
	auth discovery.Authority
	seq  int // input order: the last of an address wins
	ep   *discovery.Endpoint
}

func plan(groups []discovery.Group) ([]groupPlan, error) {
	nsvc, nep := 0, 0
	for i := range groups {
		nsvc += len(groups[i].Services)
		for j := range groups[i].Services {
			nep += len(groups[i].Services[j].Endpoints)
		}
	}
	plans := make([]groupPlan, 0, len(groups))
	svcs := make([]svcWant, 0, nsvc)
	eps := make([]epWant, 0, nep)
	for gi := range groups {
		g := &groups[gi]
		if err := checkName("group key", g.Key); err != nil {
			return nil, err
		}
		s0, e0 := len(svcs), len(eps)
		for si := range g.Services {
			svc := &g.Services[si]
			host, err := canonicalHost(svc.Authority.Host)
			if err != nil {
				return nil, fmt.Errorf("group %q: service %q: %w", g.Key, svc.Authority, err)
			}
			auth := discovery.Authority{Host: host, Port: svc.Authority.Port}
			if err := svc.ValidateProfiles(); err != nil {
				return nil, fmt.Errorf("%w: group %q: service %q: %w", ErrInvalid, g.Key, svc.Authority, err)
			}
			w := svcWant{auth: auth, opaque: svc.Opaque, profile: svc.Profile}
			if len(svc.ClientProfiles) > 0 {
				w.clients = svc.ClientProfiles
			}
			svcs = append(svcs, w)
			for ei := range svc.Endpoints {
				ep := &svc.Endpoints[ei]
				if err := checkAddr(ep.Addr); err != nil {
					return nil, fmt.Errorf("group %q: service %q: endpoint %d: %w", g.Key, svc.Authority, ei, err)
				}
				eps = append(eps, epWant{auth: auth, seq: len(eps), ep: ep})
			}
		}
		plans = append(plans, groupPlan{
			key:  g.Key,
			svcs: uniqueServices(svcs[s0:]),
			eps:  uniqueEndpoints(eps[e0:]),
		})
	}
	if len(plans) > 1 {
		slices.SortStableFunc(plans, func(a, b groupPlan) int { return strings.Compare(a.key, b.key) })
		out := plans[:0]
		for i := range plans {
			if i+1 < len(plans) && plans[i+1].key == plans[i].key {
				continue // a later group of the same key wins
			}
			out = append(out, plans[i])
		}
		plans = out
	}
	return plans, nil
}

func cmpAuth(a, b discovery.Authority) int {
	if c := strings.Compare(a.Host, b.Host); c != 0 {
		return c
	}
	return cmp.Compare(a.Port, b.Port)
}

func uniqueServices(s []svcWant) []svcWant {
	slices.SortStableFunc(s, func(a, b svcWant) int { return cmpAuth(a.auth, b.auth) })
	out := s[:0]
	for _, w := range s {
		if n := len(out); n > 0 && out[n-1].auth == w.auth {
			out[n-1].opaque = out[n-1].opaque || w.opaque
			if w.profile != nil {
				out[n-1].profile = w.profile // the last declared wins
			}
			if len(w.clients) > 0 {
				out[n-1].clients = w.clients // the last declared wins
			}
			continue
		}
		out = append(out, w)
	}
	return out
}

func cmpEndpointKey(a discovery.Authority, addrA netip.AddrPort, b discovery.Authority, addrB netip.AddrPort) int {
	if c := cmpAuth(a, b); c != 0 {
		return c
	}
	return addrA.Compare(addrB)
}

func uniqueEndpoints(s []epWant) []epWant {
	slices.SortFunc(s, func(a, b epWant) int {
		if c := cmpEndpointKey(a.auth, a.ep.Addr, b.auth, b.ep.Addr); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	out := s[:0]
	for _, w := range s {
		if n := len(out); n > 0 && out[n-1].auth == w.auth && out[n-1].ep.Addr == w.ep.Addr {
			out[n-1] = w
			continue
		}
		out = append(out, w)
	}
	return out
}

// Validation: the rules are discovery's (discovery.ValidateGroup lists
// them); the store checks them element by element as it plans, and wraps
// every error in ErrInvalid.

func checkName(what, s string) error {
	if err := discovery.ValidateName(what, s); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// canonicalHost is discovery.CanonicalHost: the host lower case, without one
// trailing dot, and an error for exactly the hosts ParseAuthority rejects,
// since no client could ask for them. It allocates only when h has
// upper-case letters.
func canonicalHost(h string) (string, error) {
	c, err := discovery.CanonicalHost(h)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return c, nil
}

func checkAddr(a netip.AddrPort) error {
	if err := discovery.ValidateAddr(a); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// Writing: merge a group's sorted plan with its sorted rows.

type writer struct {
	txn      *memdb.Txn
	provider string
	writes   int           // rows inserted or deleted
	oldSvcs  []*serviceRow // scratch, reused across groups
	args     []any         // scratch: Get's variadic argument, reused
	touched  map[string]struct{}
	addrs    []addrChange // endpoint rows inserted and deleted, for the addrTable
	// rowsAddedOrDeleted: a service row was inserted where there was none,
	// or deleted (Store.rows).
	rowsAddedOrDeleted bool
}

// touch records that a row of host changed.
func (w *writer) touch(host string) {
	if w.touched == nil {
		w.touched = make(map[string]struct{}, 4)
	}
	w.touched[host] = struct{}{}
}

func (w *writer) syncGroup(p *groupPlan) (changed bool, err error) {
	if w.args == nil {
		w.args = make([]any, 1)
	}
	w.args[0] = groupQuery{provider: w.provider, key: p.key}

	// Rows are collected before writing: a write txn's iterator must not
	// outlive a modification.
	w.oldSvcs, err = appendRows(w.oldSvcs[:0], w.txn, tableServices, indexID+prefix, w.args...)
	if err != nil {
		return false, err
	}
	// The index yields rows in (nearly always exactly) this order, so the
	// sort is linear; it keeps the merge correct regardless.
	slices.SortFunc(w.oldSvcs, func(a, b *serviceRow) int { return cmpAuth(a.auth, b.auth) })

	old, want, eps := w.oldSvcs, p.svcs, p.eps
	for i, j := 0, 0; i < len(old) || j < len(want); {
		var c int
		switch {
		case i == len(old):
			c = 1
		case j == len(want):
			c = -1
		default:
			c = cmpAuth(old[i].auth, want[j].auth)
		}
		if c < 0 {
			w.touch(old[i].auth.Host)
			if err := w.txn.Delete(tableServices, old[i]); err != nil {
				return false, err
			}
			w.noteEndpoints(old[i].eps, nil)
			w.rowsAddedOrDeleted = true
			w.writes++
			changed = true
			i++
			continue
		}
		// want[j]'s endpoints: p.eps is sorted by authority, then address.
		n := 0
		for n < len(eps) && eps[n].auth == want[j].auth {
			n++
		}
		mine := eps[:n]
		eps = eps[n:]
		var prev *serviceRow
		if c == 0 {
			prev = old[i]
			i++
		}
		j++
		r, same := w.serviceRow(p.key, &want[j-1], mine, prev)
		if same {
			continue
		}
		w.touch(r.auth.Host)
		if err := w.txn.Insert(tableServices, r); err != nil {
			return false, err
		}
		var before []*endpointRow
		if prev != nil {
			before = prev.eps
		} else {
			w.rowsAddedOrDeleted = true
		}
		w.noteEndpoints(before, r.eps)
		w.writes++
		changed = true
	}
	return changed, nil
}

// serviceRow returns the row to store for a wanted service with its
// endpoints (sorted by address, unique), reusing the endpoint rows of prev
// (the row it replaces, or nil) that did not change; same reports that
// prev is already exactly that.
func (w *writer) serviceRow(key string, want *svcWant, eps []epWant, prev *serviceRow) (r *serviceRow, same bool) {
	var before []*endpointRow
	if prev != nil {
		before = prev.eps
		// A source that hands over what it has again (a resync) is the
		// common case: tell it without allocating.
		if prev.opaque == want.opaque && prev.profile.Equal(want.profile) && discovery.SameProfiles(prev.clients, want.clients) &&
			len(before) == len(eps) && sameEndpoints(before, eps, w.provider, key) {
			return prev, true
		}
	}
	var rows []*endpointRow
	if len(eps) > 0 {
		rows = make([]*endpointRow, len(eps))
	}
	k := 0
	for n := range eps {
		for k < len(before) && before[k].ep.Addr.Compare(eps[n].ep.Addr) < 0 {
			k++
		}
		if k < len(before) && before[k].ep.Addr == eps[n].ep.Addr && sameEndpoint(&before[k].ep, eps[n].ep, w.provider, key) {
			rows[n] = before[k]
			continue
		}
		rows[n] = w.endpointRow(key, &eps[n])
	}
	return &serviceRow{provider: w.provider, key: key, auth: want.auth, opaque: want.opaque,
		profile: want.profile, clients: want.clients, eps: rows}, false
}

// sameEndpoints reports whether the stored rows are what storing eps (as
// long, both sorted by address) would produce.
func sameEndpoints(rows []*endpointRow, eps []epWant, provider, key string) bool {
	for n := range eps {
		if rows[n].ep.Addr != eps[n].ep.Addr || !sameEndpoint(&rows[n].ep, eps[n].ep, provider, key) {
			return false
		}
	}
	return true
}

// noteEndpoints records, for the addrTable, the addresses a row replacing
// one with endpoints before (nil: none) gains and loses. Both are sorted by
// address.
func (w *writer) noteEndpoints(before, after []*endpointRow) {
	i, j := 0, 0
	for i < len(before) || j < len(after) {
		var c int
		switch {
		case i == len(before):
			c = 1
		case j == len(after):
			c = -1
		default:
			c = before[i].ep.Addr.Compare(after[j].ep.Addr)
		}
		switch {
		case c < 0:
			w.addrs = append(w.addrs, addrChange{addr: before[i].ep.Addr, ref: before[i].ref()})
			i++
		case c > 0:
			w.addrs = append(w.addrs, addrChange{addr: after[j].ep.Addr, ref: after[j].ref(), add: true})
			j++
		default:
			i, j = i+1, j+1
		}
	}
}

// sameEndpoint reports whether stored is what storing in would produce.
func sameEndpoint(stored, in *discovery.Endpoint, provider, key string) bool {
	e := *in
	e.Source, e.Key = provider, key
	return stored.Equal(&e)
}

func (w *writer) endpointRow(key string, want *epWant) *endpointRow {
	r := &endpointRow{auth: want.auth, ep: *want.ep}
	r.ep.Source, r.ep.Key = w.provider, key
	if len(r.ep.Labels) == 0 {
		r.ep.Labels = nil
	}
	return r
}
