package destination

import (
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-memdb"
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

// The hub shares work between the streams of one service. Every Get
// stream for the same (authority, client zone) uses one hubEntry; the entry
// holds the newest snapshot — the view at one registry version with its
// messages encoded once. A stream keeps only a pointer to the snapshot it
// last sent, so an idle stream costs one pointer beyond gRPC's own state,
// and a change to a service watched by 10,000 streams is resolved and
// encoded once, not 10,000 times.
type hub struct {
	mu      sync.Mutex
	entries map[hubKey]*hubEntry
}

type hubKey struct {
	authority string // canonical host:port
	zone      string // the client's zone: it decides zone_locality labels
}

type hubEntry struct {
	key  hubKey
	refs int // streams using the entry; guarded by hub.mu

	build sync.Mutex // one builder at a time per entry
	cur   atomic.Pointer[snapshot]
}

func newHub() *hub { return &hub{entries: map[hubKey]*hubEntry{}} }

// acquire returns the entry for key, creating it; release it when the
// stream ends.
func (h *hub) acquire(key hubKey) *hubEntry {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.entries[key]
	if e == nil {
		e = &hubEntry{key: key}
		h.entries[key] = e
	}
	e.refs++
	return e
}

func (h *hub) release(e *hubEntry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(h.entries, e.key)
	}
}

// current returns the entry's snapshot at registry version version or
// newer, building it with build when the entry has none that recent.
// Concurrent callers for the same version build once.
func (e *hubEntry) current(version uint64, build func() view) *snapshot {
	if cur := e.cur.Load(); cur != nil && cur.version >= version {
		return cur
	}
	e.build.Lock()
	defer e.build.Unlock()
	if cur := e.cur.Load(); cur != nil && cur.version >= version {
		return cur
	}
	sn := &snapshot{version: version, view: build(), zone: e.key.zone}
	e.cur.Store(sn)
	return sn
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
}

// messagesFrom returns what a stream that was last sent prev (nil: nothing
// yet) must be sent to hold this snapshot. The result is shared: callers
// must not modify it.
func (sn *snapshot) messagesFrom(prev *snapshot) []encoded {
	if prev == nil {
		sn.firstOnce.Do(func() { sn.first = encodeAll(diff(nil, &sn.view, sn.zone)) })
		return sn.first
	}
	if m, ok := sn.diffs.Load(prev.version); ok {
		return m.([]encoded)
	}
	m, _ := sn.diffs.LoadOrStore(prev.version, encodeAll(diff(&prev.view, &sn.view, sn.zone)))
	return m.([]encoded)
}

func encodeAll(us []*pb.Update) []encoded {
	if len(us) == 0 {
		return nil
	}
	out := make([]encoded, len(us))
	for i, u := range us {
		b, err := proto.Marshal(u)
		if err != nil {
			panic("destination: marshal update: " + err.Error()) // our own message: a bug
		}
		out[i] = encoded{kind: updateKind(u), b: b}
	}
	return out
}

func updateKind(u *pb.Update) string {
	switch u.GetUpdate().(type) {
	case *pb.Update_Add:
		return "add"
	case *pb.Update_Remove:
		return "remove"
	default:
		return "no_endpoints"
	}
}

// hostsVersion adds watches for every member authority and returns the
// newest version among them. Store versions are global and increase with
// every change, so the maximum over the members moves whenever any member
// changes: it identifies the view.
func hostsVersion(snap *cache.Snapshot, ws memdb.WatchSet, members []discovery.Authority) uint64 {
	var v uint64
	for _, m := range members {
		if mv := snap.Watch(ws, m); mv > v {
			v = mv
		}
	}
	return v
}
