// Package cowmap is an immutable map split into shards, changed by copying
// only the shards an edit touches: a map of 100,000 entries changes by one
// entry at the cost of one shard (~400 entries), while readers keep using
// the version they hold. The DNS interface's index of names and the
// virtual IP tables are built on it.
package cowmap

import "hash/maphash"

// Map is an immutable sharded map; the zero Map is empty.
type Map[K comparable, V any] struct {
	s *[shards]map[K]V
}

const shards = 256

var seed = maphash.MakeSeed()

func shard[K comparable](k K) int { return int(maphash.Comparable(seed, k) % shards) }

// Get returns the value of k.
func (m Map[K, V]) Get(k K) (V, bool) {
	var zero V
	if m.s == nil {
		return zero, false
	}
	v, ok := m.s[shard(k)][k]
	return v, ok
}

// Len counts the entries (a pass over the shards).
func (m Map[K, V]) Len() int {
	n := 0
	if m.s != nil {
		for _, sh := range m.s {
			n += len(sh)
		}
	}
	return n
}

// Edit starts a batch of changes; m is not modified.
func (m Map[K, V]) Edit() *Edit[K, V] {
	e := &Edit[K, V]{}
	if m.s != nil {
		e.next = *m.s
	}
	return e
}

// Edit is a batch of changes to a Map, which Done turns into a new Map.
type Edit[K comparable, V any] struct {
	next   [shards]map[K]V
	cloned [shards]bool
}

func (e *Edit[K, V]) shard(k K) map[K]V {
	i := shard(k)
	if !e.cloned[i] {
		n := make(map[K]V, len(e.next[i])+1)
		for k, v := range e.next[i] {
			n[k] = v
		}
		e.next[i], e.cloned[i] = n, true
	}
	return e.next[i]
}

// Get returns the value of k as edited so far.
func (e *Edit[K, V]) Get(k K) (V, bool) {
	v, ok := e.next[shard(k)][k]
	return v, ok
}

// Set sets k to v.
func (e *Edit[K, V]) Set(k K, v V) { e.shard(k)[k] = v }

// Del deletes k.
func (e *Edit[K, V]) Del(k K) { delete(e.shard(k), k) }

// Done returns the edited map; the Edit must not be used afterwards.
func (e *Edit[K, V]) Done() Map[K, V] {
	s := e.next
	return Map[K, V]{s: &s}
}
