package vip

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func mustHash(t *testing.T, cidr string, pins map[string]netip.Addr) *Hash {
	t.Helper()
	h, err := NewHash(netip.MustParsePrefix(cidr), pins)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("svc%d.demo", i)
	}
	return out
}

// The same hosts give the same table in any order, in any process: the
// slot is a pure function of the name (these addresses are pinned in the
// test so that a change of the hash is seen).
func TestHashIsAFunctionOfTheName(t *testing.T) {
	h := mustHash(t, "240.0.0.0/16", nil)
	if got, want := h.Slot("web.demo"), h.Slot("WEB.demo."); got != want {
		t.Fatalf("slot of a non-canonical name %s, want %s", got, want)
	}
	// Golden values: a change here changes every deployment's VIPs.
	for host, want := range map[string]string{"web.demo": h.Slot("web.demo").String()} {
		h2 := mustHash(t, "240.0.0.0/16", nil)
		if got := h2.Slot(host).String(); got != want {
			t.Fatalf("%s: %s then %s", host, want, got)
		}
	}
	a := h.Table(names(500))
	rev := slices.Clone(names(500))
	slices.Reverse(rev)
	b := h.Table(append(rev, rev...))
	if a.Len() != b.Len() {
		t.Fatalf("%d vs %d hosts with a VIP", a.Len(), b.Len())
	}
	for _, n := range names(500) {
		x, okx := a.Lookup(n)
		y, oky := b.Lookup(n)
		if x != y || okx != oky {
			t.Fatalf("%s: %v/%v vs %v/%v", n, x, okx, y, oky)
		}
		if okx {
			if x != h.Slot(n) {
				t.Fatalf("%s got %s, not its slot %s", n, x, h.Slot(n))
			}
			if back, _ := a.Host(x); back != n {
				t.Fatalf("reverse of %s is %q, want %s", x, back, n)
			}
		}
	}
}

func TestHashGolden(t *testing.T) {
	h := mustHash(t, "240.0.0.0/4", nil)
	// A change of these values moves every deployed virtual IP: it must be
	// a deliberate, documented incompatibility.
	got := []string{h.Slot("web.demo").String(), h.Slot("api.demo").String()}
	h6 := mustHash(t, "fd00:7472:6962::/64", nil)
	got = append(got, h6.Slot("web.demo").String())
	want := []string{"248.91.226.223", "240.111.241.150", "fd00:7472:6962:0:dec5:1356:9e79:40fb"}
	if !slices.Equal(got, want) {
		t.Fatalf("slots %q, want %q", got, want)
	}
}

// Adding a host never moves another host's address: it can only take one
// away (a collision), and removing it gives it back.
func TestCollisionTakesAwayNeverMoves(t *testing.T) {
	h := mustHash(t, "10.0.0.0/24", nil) // 254 slots: collisions are common
	base := names(40)
	before := h.Table(base)
	for i := 40; i < 400; i++ {
		extra := fmt.Sprintf("svc%d.demo", i)
		after := h.Table(append(slices.Clone(base), extra))
		for _, n := range base {
			x, okx := before.Lookup(n)
			y, oky := after.Lookup(n)
			if oky && (!okx || x != y) {
				t.Fatalf("adding %s gave %s the address %s (had %v %v)", extra, n, y, x, okx)
			}
			if okx && !oky && h.Slot(n) != h.Slot(extra) {
				t.Fatalf("adding %s took %s's address without a collision", extra, n)
			}
		}
		if again := h.Table(base); again.Len() != before.Len() {
			t.Fatalf("removing %s did not restore the table", extra)
		}
	}
}

func TestCollisionReported(t *testing.T) {
	h := mustHash(t, "10.0.0.0/31", nil) // two usable slots
	tab := h.Table([]string{"a", "b", "c"})
	if tab.Len()+countHosts(tab.Collisions()) != 3 {
		t.Fatalf("hosts with a VIP %d + colliding %v != 3", tab.Len(), tab.Collisions())
	}
	if len(tab.Collisions()) == 0 {
		t.Fatal("three hosts in two slots without a collision")
	}
	for _, c := range tab.Collisions() {
		if _, ok := tab.Host(c.Addr); ok {
			t.Fatalf("a collided address %s maps to a host", c.Addr)
		}
		for _, n := range c.Hosts {
			if _, ok := tab.Lookup(n); ok {
				t.Fatalf("colliding host %s has a VIP", n)
			}
		}
	}
}

func countHosts(cs []Collision) int {
	n := 0
	for _, c := range cs {
		n += len(c.Hosts)
	}
	return n
}

// A pin resolves a collision: the pinned host takes the address, its
// rival has none, and the pin holds while its host is absent.
func TestPins(t *testing.T) {
	h := mustHash(t, "10.0.0.0/24", nil)
	// Find two hosts with one slot.
	seen := map[netip.Addr]string{}
	var x, y string
	for i := 0; x == ""; i++ {
		n := fmt.Sprintf("h%d.demo", i)
		if o, ok := seen[h.Slot(n)]; ok {
			x, y = o, n
		}
		seen[h.Slot(n)] = n
	}
	if tab := h.Table([]string{x, y}); tab.Len() != 0 || len(tab.Collisions()) != 1 {
		t.Fatalf("want one collision, got %d VIPs and %v", tab.Len(), tab.Collisions())
	}
	slot := h.Slot(x)
	other := netip.MustParseAddr("10.0.0.77")
	if other == slot {
		other = netip.MustParseAddr("10.0.0.78")
	}
	p := mustHash(t, "10.0.0.0/24", map[string]netip.Addr{x: slot, y: other})
	tab := p.Table([]string{x, y})
	if a, _ := tab.Lookup(x); a != slot {
		t.Fatalf("pinned %s has %s, want %s", x, a, slot)
	}
	if a, _ := tab.Lookup(y); a != other {
		t.Fatalf("pinned %s has %s, want %s", y, a, other)
	}
	// Only x pinned: y's slot is taken, y has none.
	p = mustHash(t, "10.0.0.0/24", map[string]netip.Addr{x: slot})
	tab = p.Table([]string{y})
	if _, ok := tab.Lookup(y); ok {
		t.Fatalf("%s took the address pinned to an absent %s", y, x)
	}
	if c := tab.Collisions(); len(c) != 1 || c[0].PinnedTo != x {
		t.Fatalf("collisions %+v, want %s's pin", c, x)
	}
}

func TestNewHashRejects(t *testing.T) {
	for _, tc := range []struct {
		cidr string
		pins map[string]netip.Addr
	}{
		{"10.0.0.1/32", nil},
		{"10.0.0.0/24", map[string]netip.Addr{"a": netip.MustParseAddr("10.0.1.1")}},
		{"10.0.0.0/24", map[string]netip.Addr{"a": netip.MustParseAddr("10.0.0.0")}},   // network address
		{"10.0.0.0/24", map[string]netip.Addr{"a": netip.MustParseAddr("10.0.0.255")}}, // last
		{"10.0.0.0/24", map[string]netip.Addr{"a": netip.MustParseAddr("10.0.0.9"), "b": netip.MustParseAddr("10.0.0.9")}},
	} {
		if _, err := NewHash(netip.MustParsePrefix(tc.cidr), tc.pins); err == nil {
			t.Errorf("%s %v accepted", tc.cidr, tc.pins)
		}
	}
}

// Every slot is a usable address of the CIDR, for v4 and v6.
func TestSlotsInRange(t *testing.T) {
	for _, cidr := range []string{"10.9.0.0/30", "240.0.0.0/4", "fd00::/120", "fd00::/8"} {
		h := mustHash(t, cidr, nil)
		for _, n := range names(300) {
			if a := h.Slot(n); !h.usable(a) {
				t.Fatalf("%s: slot %s of %s is not usable", cidr, a, n)
			}
		}
	}
}

func TestAllocatorInterface(t *testing.T) {
	var a Allocator = mustHash(t, "240.0.0.0/16", nil)
	tab, err := a.Allocate(context.Background(), nil, []string{"web.demo"}, nil)
	if err != nil || tab.Len() != 1 {
		t.Fatalf("%v %v", tab, err)
	}
	if !a.Contains(netip.MustParseAddr("240.0.3.4")) || a.Contains(netip.MustParseAddr("10.0.0.1")) {
		t.Fatal("Contains")
	}
	var nilTable *Table
	if _, ok := nilTable.Lookup("x"); ok {
		t.Fatal("nil table")
	}
}

// Reaching a set of hosts by any sequence of additions and removals gives
// the table computed from the set at once: what each host gets never
// depends on history.
func TestIncrementalEqualsFromScratch(t *testing.T) {
	h := mustHash(t, "10.0.0.0/26", map[string]netip.Addr{"p0.demo": netip.MustParseAddr("10.0.0.5")}) // 62 slots: many collisions
	rng := rand.New(rand.NewPCG(1, 2))
	present := map[string]bool{}
	var tab *Table
	for step := range 400 {
		var added, removed []string
		touched := map[string]bool{}
		for range 1 + rng.IntN(8) {
			n := fmt.Sprintf("h%d.demo", rng.IntN(120))
			if step%7 == 0 {
				n = "p0.demo"
			}
			if touched[n] {
				continue // a host is in one list of a call, at most once
			}
			touched[n] = true
			if present[n] {
				removed = append(removed, n)
				delete(present, n)
			} else {
				added = append(added, n)
				present[n] = true
			}
		}
		var err error
		prev := tab
		if tab, err = h.Allocate(context.Background(), tab, added, removed); err != nil {
			t.Fatal(err)
		}
		var all []string
		for n := range present {
			all = append(all, n)
		}
		want := h.Table(all)
		if tab.Len() != want.Len() || tab.Colliding() != want.Colliding() || fmt.Sprint(tab.Collisions()) != fmt.Sprint(want.Collisions()) {
			t.Fatalf("step %d: len %d/%d colliding %d/%d\n%v\n%v", step, tab.Len(), want.Len(), tab.Colliding(), want.Colliding(), tab.Collisions(), want.Collisions())
		}
		for i := range 120 {
			n := fmt.Sprintf("h%d.demo", i)
			a, ok := tab.Lookup(n)
			b, okb := want.Lookup(n)
			if a != b || ok != okb {
				t.Fatalf("step %d: %s: %v %v, from scratch %v %v", step, n, a, ok, b, okb)
			}
			if ok {
				if back, _ := tab.Host(a); back != n {
					t.Fatalf("step %d: Host(%s) = %q, want %s", step, a, back, n)
				}
			}
		}
		_ = prev
	}
}
