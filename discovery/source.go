package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Source turns one backend's state into Groups.
//
// Run is called once, in its own goroutine, and returns when ctx is done.
// It hands state to sink:
//
//   - The first call of Update or Replace carries everything the source knows
//     (possibly nothing); it marks the source synced.
//   - Later calls carry whole groups, never diffs: each group replaces what
//     the source said before under its key, and a group without services
//     withdraws that key. Replace additionally withdraws every key not listed.
//   - When the backend cannot be read, the source calls Failed and hands over
//     nothing: the last good state stays served, marked stale. Stale beats
//     partial. A later successful contact that changed nothing calls Healthy.
//   - An authoritative empty answer (a valid empty file, NXDOMAIN, a Consul
//     index with no instances) is not a failure: it withdraws the key.
//
// Sink methods never block on the store, so a source needs no buffering of
// its own; they must not be called after Run returns. Cancellation is not an
// error and is not reported with Failed.
type Source interface {
	Run(ctx context.Context, sink Sink)
}

// Sink receives a running source's state. The manager implements it; tests
// may use their own.
type Sink interface {
	// Update hands over complete groups. Groups of the same key that have not
	// reached the store yet are coalesced: the newest wins.
	Update(groups ...Group)
	// Replace hands over the source's complete state: keys it handed over
	// before and does not list here are withdrawn.
	Replace(groups []Group)
	// Healthy records a successful contact with the backend that brought no
	// change. Update and Replace imply it.
	Healthy()
	// Failed records that the backend could not be read. The source's
	// endpoints stay served and are marked stale until the next success.
	Failed(err error)
}

// BuildContext is what a kind's constructor gets besides its own config.
type BuildContext struct {
	// Name of the source instance, unique in the config (provenance, metrics).
	Name string
	// BaseDir is the folder of the config file; relative paths in a source's
	// config are resolved against it.
	BaseDir string
	Logger  *slog.Logger
}

// Log is the logger a source should use: Logger, or one that discards when
// none was given.
func (bc BuildContext) Log() *slog.Logger {
	if bc.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return bc.Logger
}

// Kind builds sources of one kind from their YAML config.
type Kind struct {
	// Name is the value of `kind:` in the config.
	Name string
	// New decodes the kind's own keys from node (use DecodeStrict, so
	// unknown keys are rejected with their line) and returns the source. It
	// must not start goroutines: the manager calls Run. Errors should name
	// the key at fault; the loader prefixes file:line.
	New func(node *yaml.Node, bc BuildContext) (Source, error)
}

var (
	kindsMu sync.RWMutex
	kinds   = map[string]Kind{}
)

// Register makes a kind available to the config loader. Adapters call it
// from init; a duplicate name is a programming error and panics.
func Register(k Kind) {
	kindsMu.Lock()
	defer kindsMu.Unlock()
	if k.Name == "" || k.New == nil {
		panic("discovery: Register with an empty name or nil constructor")
	}
	if _, dup := kinds[k.Name]; dup {
		panic(fmt.Sprintf("discovery: source kind %q registered twice", k.Name))
	}
	kinds[k.Name] = k
}

// LookupKind returns the registered kind of that name.
func LookupKind(name string) (Kind, bool) {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	k, ok := kinds[name]
	return k, ok
}

// KindNames lists the registered kinds, sorted.
func KindNames() []string {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	names := make([]string, 0, len(kinds))
	for n := range kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NodeZoner is implemented by sources that know the zone of the nodes their
// clients run on (Kubernetes: the node's topology.kubernetes.io/zone
// label). The destination server asks it for a client that sends a
// nodeName but no zone in its context token, to set zone_locality.
type NodeZoner interface {
	NodeZone(node string) (zone string, ok bool)
}
