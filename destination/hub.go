package destination

import (
	"sync"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/destination/fanout"
	"github.com/tributary-mesh/tributary/discovery"
)

// Get streams share their work through the fan-out engine
// (destination/fanout): every Get stream for the same (authority, client
// zone) subscribes to one entry, whose goroutine follows the registry and
// publishes a snapshot — the view at one version — per change; each
// stream's send job (getStream.Send) sends the difference from the
// snapshot it last sent to the newest. This file is the Get edge's half:
// what a snapshot holds and how its messages are encoded once and shared.

// hub is the fan-out engine as Get streams use it.
type hub = fanout.Hub[snapshot]

// newHub builds a hub whose entries publish the view (federation rules,
// then topology hints for the client's zone) of their authority.
func newHub(s *Server) *hub {
	return fanout.New(fanout.Options[snapshot]{
		Store:      s.store,
		Federation: s.fed,
		Build: func(snap *cache.Snapshot, ws memdb.WatchSet, key fanout.Key, members []discovery.Authority) (*snapshot, uint64) {
			v := s.view(snap, ws, key.Authority, members)
			v.endpoints = discovery.PreferZone(v.endpoints, key.Zone)
			return &snapshot{version: v.version, view: v, zone: key.Zone}, v.version
		},
	})
}

// snapshot is a view at one registry version, immutable once built, with
// the messages that lead to it encoded lazily and shared by every stream.
type snapshot struct {
	version uint64
	view    view
	zone    string

	firstOnce sync.Once
	first     []encoded
	diffs     sync.Map // previous snapshot's version (uint64) → []encoded
}

// encoded is one Update marshalled once and sent as is on every stream
// that needs it (see rawCodec).
type encoded struct {
	kind string // add, remove, no_endpoints: for metrics
	b    []byte
	msg  *preEncoded // b as SendMsg takes it
}

// messagesFrom returns what a stream that was last sent prev (nil: nothing
// yet) must be sent to hold this snapshot. The result is shared: callers
// must not modify it.
func (sn *snapshot) messagesFrom(prev *snapshot) []encoded {
	if prev == nil {
		sn.firstOnce.Do(func() { sn.first = encodeDiff(nil, &sn.view, sn.zone) })
		return sn.first
	}
	if m, ok := sn.diffs.Load(prev.version); ok {
		return m.([]encoded)
	}
	m, _ := sn.diffs.LoadOrStore(prev.version, encodeDiff(&prev.view, &sn.view, sn.zone))
	return m.([]encoded)
}
