package cache

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

const (
	benchServices  = 1000
	benchEndpoints = 10
)

// benchLabels[i][j] are the labels of endpoint j of service i, the same map
// in every version, as a source hands over again an endpoint it did not
// change.
var benchLabels [benchServices][benchEndpoints]map[string]string

func init() {
	for i := range benchLabels {
		for j := range benchLabels[i] {
			benchLabels[i][j] = map[string]string{"pod": fmt.Sprintf("svc-%d-%d", i, j)}
		}
	}
}

// benchGroup is service i with its endpoints; version changes the weight of
// its first endpoint.
func benchGroup(i, version int) discovery.Group {
	eps := make([]discovery.Endpoint, benchEndpoints)
	for j := range eps {
		eps[j] = discovery.Endpoint{
			Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(j + 1)}), 8080),
			Zone:   "zone-a",
			Health: discovery.HealthPassing,
			Labels: benchLabels[i][j],
		}
	}
	eps[0].Weight = uint32(version + 1)
	return discovery.Group{
		Key: fmt.Sprintf("svc-%d", i),
		Services: []discovery.Service{{
			Authority: discovery.Authority{Host: fmt.Sprintf("svc-%d.demo.svc.cluster.local", i), Port: 8080},
			Endpoints: eps,
		}},
	}
}

// benchStore holds benchServices services of benchEndpoints endpoints each,
// all at version 0; versions[v][i] is group i at version v.
func benchStore(b *testing.B) (*Store, [2][]discovery.Group) {
	b.Helper()
	var versions [2][]discovery.Group
	for v := range versions {
		for i := range benchServices {
			versions[v] = append(versions[v], benchGroup(i, v))
		}
	}
	s := New()
	if _, err := s.Apply("bench", versions[0]); err != nil {
		b.Fatal(err)
	}
	return s, versions
}

// BenchmarkApply changes one endpoint per Apply in a store of 1,000
// services x 10 endpoints.
func BenchmarkApply(b *testing.B) {
	b.Run("one-group", func(b *testing.B) {
		s, versions := benchStore(b)
		b.ReportAllocs()
		for n := 0; b.Loop(); n++ {
			g := n % benchServices
			v := (n/benchServices + 1) % 2 // alternates every pass: always a change
			if changed, err := s.Apply("bench", versions[v][g:g+1]); err != nil || !changed {
				b.Fatalf("Apply = %v, %v", changed, err)
			}
		}
	})
	// eight-groups is what a busy applier hands over: several groups that
	// arrived while it was writing, in one transaction. Reported per group.
	b.Run("eight-groups", func(b *testing.B) {
		s, versions := benchStore(b)
		batch := make([]discovery.Group, 8)
		b.ReportAllocs()
		for n := 0; b.Loop(); n++ {
			for k := range batch {
				g := (n*8 + k*benchServices/8) % benchServices // spread, as random picks are
				v := ((n*8+k*benchServices/8)/benchServices + 1) % 2
				batch[k] = versions[v][g]
			}
			if changed, err := s.Apply("bench", batch); err != nil || !changed {
				b.Fatalf("Apply = %v, %v", changed, err)
			}
		}
	})
	b.Run("full-state", func(b *testing.B) {
		s, versions := benchStore(b)
		state := append([]discovery.Group(nil), versions[0]...)
		b.ReportAllocs()
		for n := 0; b.Loop(); n++ {
			g := n % benchServices
			v := (n/benchServices + 1) % 2
			state[g] = versions[v][g]
			if changed, err := s.Apply("bench", state); err != nil || !changed {
				b.Fatalf("Apply = %v, %v", changed, err)
			}
		}
	})
	b.Run("one-group-no-op", func(b *testing.B) {
		s, versions := benchStore(b)
		b.ReportAllocs()
		for n := 0; b.Loop(); n++ {
			g := n % benchServices
			if changed, err := s.Apply("bench", versions[0][g:g+1]); err != nil || changed {
				b.Fatalf("Apply = %v, %v", changed, err)
			}
		}
	})
}

func BenchmarkServiceRead(b *testing.B) {
	s, versions := benchStore(b)
	auths := make([]discovery.Authority, benchServices)
	for i := range auths {
		auths[i] = versions[0][i].Services[0].Authority
	}
	b.ReportAllocs()
	for n := 0; b.Loop(); n++ {
		ws := memdb.NewWatchSet()
		st := s.Snapshot().Service(ws, auths[n%benchServices])
		if len(st.Endpoints) != benchEndpoints {
			b.Fatalf("%d endpoints", len(st.Endpoints))
		}
	}
}

// backlogGroup is service i of the large benchmarks, 10 endpoints, the
// first with weight version+1.
func backlogGroup(i, version int) discovery.Group {
	eps := make([]discovery.Endpoint, benchEndpoints)
	for j := range eps {
		n := i*benchEndpoints + j
		eps[j] = discovery.Endpoint{
			Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}), 8080),
			Weight: 10000,
		}
	}
	eps[0].Weight = uint32(version + 1)
	return discovery.Group{Key: fmt.Sprintf("svc-%d", i), Services: []discovery.Service{{
		Authority: discovery.Authority{Host: fmt.Sprintf("svc-%d.demo.svc.cluster.local", i), Port: 8080},
		Endpoints: eps,
	}}}
}

const largeServices = 20000

func largeState() []discovery.Group {
	all := make([]discovery.Group, largeServices)
	for i := range all {
		all[i] = backlogGroup(i, 0)
	}
	return all
}

// BenchmarkApplyInitial is a source's first hand-over: 20,000 services x 10
// endpoints into an empty store.
func BenchmarkApplyInitial(b *testing.B) {
	all := largeState()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New().Apply("bench", all); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyBacklog is a manager that fell behind a burst: 1,000 groups
// of 10 endpoints, one weight changed in each, handed over at once to a
// store of 20,000 services x 10 endpoints. Reported per Apply.
func BenchmarkApplyBacklog(b *testing.B) {
	const backlog = 1000
	s := New()
	if _, err := s.Apply("bench", largeState()); err != nil {
		b.Fatal(err)
	}
	batch := make([]discovery.Group, backlog)
	b.ReportAllocs()
	for n := 0; b.Loop(); n++ {
		for k := range batch {
			batch[k] = backlogGroup((k*largeServices/backlog+n)%largeServices, n+1) // spread over the registry
		}
		if changed, err := s.Apply("bench", batch); err != nil || !changed {
			b.Fatalf("Apply = %v, %v", changed, err)
		}
	}
}
