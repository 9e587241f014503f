// Package file is the `file` source kind: services read from YAML or JSON
// files that people write by hand or tools drop in a folder.
//
//	sources:
//	  - name: local
//	    kind: file
//	    paths: ["services/*.yaml", "/etc/tributary/more/*.json"]  # globs
//	    refresh_interval: 5m  # the full re-read besides the watch
//	    settle: 250ms         # a change applies once the file is unchanged this long
//	    withdraw_confirm: 5s  # a sharp shrink is held this long
//	    withdraw_max: 50%     # the share of a file's endpoints that is not a sharp shrink
//
// Each file is one group keyed by its absolute path; Parse documents the
// format. The source watches the directories of its globs, so atomic
// renames and Kubernetes ConfigMap symlink swaps are seen, and re-reads
// every file each refresh_interval as well. A change is applied once the
// file has settled, and a sharp shrink (empty, no endpoints, or more than
// withdraw_max of them gone) only once confirmed (Run says how). A file
// that cannot be read or parsed keeps its last good state and marks the
// source stale until it is fixed; a file that is deleted or renamed away
// withdraws its services at once.
package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/tributary-mesh/tributary/discovery"
)

// KindName is the value of `kind:` for this source.
const KindName = "file"

// readDelay is how long the source waits after a filesystem event before
// reading the file, so that one burst of events (a write in several
// system calls, a rename and a create) is one read.
const readDelay = 20 * time.Millisecond

func init() {
	discovery.Register(discovery.Kind{
		Name: KindName,
		New:  newFromNode,
	})
}

// Source is a file source; build it with NewSource.
type Source struct {
	patterns    []string // absolute, cleaned, deduplicated
	interval    time.Duration
	settle      time.Duration
	confirm     time.Duration
	maxWithdraw float64
	readDelay   time.Duration
	log         *slog.Logger

	// newTicker starts the refresh ticker; tests replace it.
	newTicker func(time.Duration) (<-chan time.Time, func())
}

var _ discovery.Source = (*Source)(nil)

// NewSource validates cfg and returns a source ready to Run. It starts
// nothing.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	v, err := cfg.validate(bc.BaseDir)
	if err != nil {
		return nil, err
	}
	log := bc.Log()
	return &Source{
		patterns:    v.patterns,
		interval:    v.interval,
		settle:      v.settle,
		confirm:     v.confirm,
		maxWithdraw: v.maxWithdraw,
		readDelay:   readDelay,
		log:         log,
		newTicker:   realTicker,
	}, nil
}

func realTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// Patterns returns the absolute glob patterns the source reads.
func (s *Source) Patterns() []string { return slices.Clone(s.patterns) }

// Run implements discovery.Source.
//
// When a change is applied (docs/operations.md, "File source: when a change
// is applied"): a file that an event or the periodic refresh finds with
// content other than what is served is read again until two reads at least
// settle apart find the same size, modification time and content, with no
// event on the file in between; then it is parsed and applied. A settled
// content that withdraws every endpoint of the file, or more than
// maxWithdraw of them, is held for confirm and applied only if the file
// still says so then. A file that is deleted or renamed away withdraws at
// once. The first read at start applies at once.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) {
	if ctx.Err() != nil {
		return
	}
	r := &run{
		Source: s,
		sink:   sink,
		files:  make(map[string]*fileState),
		dirty:  make(map[string]bool),
		warned: make(map[string]bool),
	}

	// Watch before the first read, so no change between the two is lost.
	w, err := fsnotify.NewWatcher()
	if err != nil {
		s.log.Warn("cannot watch files; relying on the periodic refresh", "err", err, "refresh_interval", s.interval)
	} else {
		r.watcher = w
		defer func() {
			if err := w.Close(); err != nil {
				s.log.Warn("closing the file watcher", "err", err)
			}
		}()
	}

	r.report(r.scan(time.Now(), scanFirst), scanFirst)

	tick, stopTicker := s.newTicker(s.interval)
	defer stopTicker()
	// wake fires at the earliest of the pending read and the files' due
	// times; it is re-armed after every step.
	wake := time.NewTimer(time.Hour)
	defer wake.Stop()

	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if w != nil {
		events, watchErrs = w.Events, w.Errors
	}
	for {
		r.arm(wake, time.Now())
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			r.event(ev, time.Now())
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			s.log.Warn("file watch error; re-reading everything", "err", err)
			r.relist = true
			r.schedRead(time.Now())
		case <-wake.C:
			r.wakeSet = false
			now := time.Now()
			var changed []discovery.Group
			if !r.readAt.IsZero() && !now.Before(r.readAt) {
				changed = r.scan(now, scanEvents)
			}
			changed = append(changed, r.checkDue(now)...)
			r.report(changed, scanEvents)
		case <-tick:
			now := time.Now()
			changed := r.scan(now, scanAll)
			changed = append(changed, r.checkDue(now)...)
			r.report(changed, scanAll)
		}
	}
}

// snapshot is one read of a file.
type snapshot struct {
	size  int64
	mtime time.Time
	data  []byte
}

func (a *snapshot) same(b *snapshot) bool {
	return a != nil && b != nil && a.size == b.size && a.mtime.Equal(b.mtime) && bytes.Equal(a.data, b.data)
}

// fileState is one matched file: what was last handed over for it, and the
// change that waits to be applied.
type fileState struct {
	// applied: raw and services were handed over (or, at start, found
	// empty); false for a file never applied.
	applied  bool
	raw      []byte
	services []discovery.Service

	// obs is the last read of a content other than raw, taken at obsAt;
	// due is when the file is read again to see whether it has settled
	// (or whether a held withdrawal is confirmed). Zero: nothing to do.
	obs   *snapshot
	obsAt time.Time
	due   time.Time
	// heldSince: a settled content that withdraws sharply has been held
	// since then; zero when nothing is held.
	heldSince time.Time
	// err: the file cannot be read, or its settled content does not
	// parse; the last good state stays and the source reports it failed.
	err error
}

// run is the state of one Run call, owned by its goroutine.
type run struct {
	*Source
	sink    discovery.Sink
	watcher *fsnotify.Watcher // nil when watching is unavailable

	files    map[string]*fileState // by key: every matched file read at least once
	dirty    map[string]bool       // files named by events since the last read
	relist   bool                  // an event that may change any file (a directory, ConfigMap's ..data)
	readAt   time.Time             // when to read the dirty files; zero: none
	listErrs []error               // the last listing's unreadable directories
	wakeSet  bool
	wakeAt   time.Time

	watched map[string]bool // directories of the last listing
	warned  map[string]bool // directories whose watch failed, warned about
}

// event records a filesystem event: the file it names is read after
// readDelay, and its settling wait starts again from that read.
func (r *run) event(ev fsnotify.Event, now time.Time) {
	if !r.relevant(ev) {
		return
	}
	if r.watched[ev.Name] || strings.HasPrefix(filepath.Base(ev.Name), "..") {
		r.relist = true
	} else {
		r.dirty[ev.Name] = true
	}
	r.schedRead(now)
}

func (r *run) schedRead(now time.Time) {
	if r.readAt.IsZero() {
		r.readAt = now.Add(r.readDelay)
	}
}

// arm sets the timer to the earliest thing to do.
func (r *run) arm(t *time.Timer, now time.Time) {
	next := r.readAt
	for _, st := range r.files {
		if !st.due.IsZero() && (next.IsZero() || st.due.Before(next)) {
			next = st.due
		}
	}
	if next.IsZero() {
		if r.wakeSet {
			t.Stop()
			r.wakeSet = false
		}
		return
	}
	if r.wakeSet && r.wakeAt.Equal(next) {
		return
	}
	// Since Go 1.23 a reset timer never delivers a value from before.
	t.Reset(max(next.Sub(now), 0))
	r.wakeSet, r.wakeAt = true, next
}

// listing is what the globs matched.
type listing struct {
	files []string         // matching paths, sorted, unique
	dirs  []string         // directories the globs look in, sorted, unique
	bad   map[string]error // directories that could not be read
}

// list expands the globs. Unlike filepath.Glob it reports directories that
// exist but cannot be read, so their files keep their state instead of
// being withdrawn.
func (s *Source) list() listing {
	l := listing{bad: map[string]error{}}
	files := map[string]bool{}
	dirs := map[string]bool{}
	for _, pat := range s.patterns {
		dirPat, base := filepath.Split(pat)
		dirPat = filepath.Clean(dirPat)
		candidates := []string{dirPat}
		if hasMeta(dirPat) {
			candidates = globDirs(dirPat)
		}
		for _, dir := range candidates {
			dirs[dir] = true
			entries, err := os.ReadDir(dir)
			if err != nil {
				if !errors.Is(err, fs.ErrNotExist) {
					l.bad[dir] = err
				}
				continue
			}
			for _, e := range entries {
				if matchName(base, e.Name()) {
					files[filepath.Join(dir, e.Name())] = true
				}
			}
		}
	}
	l.files = sortedKeys(files)
	l.dirs = sortedKeys(dirs)
	return l
}

// globDirs lists the directories a directory pattern matches, with the
// shell's rule for dot names (so */ does not enter a ConfigMap's ..data).
func globDirs(pattern string) []string {
	matches, _ := filepath.Glob(pattern) // the pattern was validated
	pelems := strings.Split(pattern, string(filepath.Separator))
	dirs := matches[:0]
outer:
	for _, m := range matches {
		melems := strings.Split(m, string(filepath.Separator))
		if len(melems) != len(pelems) {
			continue
		}
		for i, e := range melems {
			if !matchName(pelems[i], e) {
				continue outer
			}
		}
		if fi, err := os.Stat(m); err == nil && fi.IsDir() {
			dirs = append(dirs, m)
		}
	}
	return dirs
}

// matchName matches one path element like a shell does: a leading dot must
// be matched by a leading dot in the pattern.
func matchName(pattern, name string) bool {
	if strings.HasPrefix(name, ".") && !strings.HasPrefix(pattern, ".") {
		return false
	}
	ok, _ := filepath.Match(pattern, name)
	return ok
}

func hasMeta(path string) bool {
	return strings.ContainsAny(path, `*?[\`)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// relevant reports whether a filesystem event can change what the globs
// match or what a matched file holds.
func (r *run) relevant(ev fsnotify.Event) bool {
	if ev.Name == "" || ev.Op == fsnotify.Chmod {
		return false
	}
	if r.watched[ev.Name] {
		return true // a watched directory itself moved or vanished
	}
	dir, base := filepath.Split(ev.Name)
	if strings.HasPrefix(base, "..") {
		// Kubernetes' atomic writer: ..data re-pointed to a new ..<timestamp>.
		return true
	}
	dir = filepath.Clean(dir)
	for _, pat := range r.patterns {
		pdir, pbase := filepath.Split(pat)
		if ok, _ := filepath.Match(filepath.Clean(pdir), dir); ok && matchName(pbase, base) {
			return true
		}
	}
	return false
}

// watch makes the watcher follow exactly the directories of the listing.
// A directory that cannot be watched (typically: it does not exist yet) is
// retried at the next refresh; the periodic refresh covers it meanwhile.
func (r *run) watch(dirs []string) {
	r.watched = make(map[string]bool, len(dirs))
	for _, d := range dirs {
		r.watched[d] = true
	}
	if r.watcher == nil {
		return
	}
	current := map[string]bool{}
	for _, d := range r.watcher.WatchList() {
		current[d] = true
		if !r.watched[d] {
			_ = r.watcher.Remove(d) // a glob directory that no longer matches
		}
	}
	for _, d := range dirs {
		if current[d] {
			continue
		}
		if err := r.watcher.Add(d); err != nil {
			if !r.warned[d] {
				r.warned[d] = true
				r.log.Warn("cannot watch directory; relying on the periodic refresh until it can be", "dir", d, "err", err, "refresh_interval", r.interval)
			}
			continue
		}
		if r.warned[d] {
			delete(r.warned, d)
			r.log.Info("watching directory", "dir", d)
		}
	}
}

// scanMode says what a scan reads.
type scanMode int

const (
	scanFirst  scanMode = iota // at start: read everything, apply at once
	scanEvents                 // the files events named, new files, and everything after a relist
	scanAll                    // the periodic refresh: read everything
)

// scan lists the globs and reads the files the mode asks for. A file whose
// content is what is served is left alone; any other content starts (or,
// if it differs from the last read or an event named the file, restarts)
// the file's settling wait. A file no longer listed withdraws at once. At
// start every file is applied at once. It returns the groups to hand over.
func (r *run) scan(now time.Time, mode scanMode) []discovery.Group {
	l := r.list()
	r.watch(l.dirs)
	all := mode != scanEvents || r.relist
	dirty := r.dirty
	r.dirty, r.relist, r.readAt = make(map[string]bool), false, time.Time{}

	var changed []discovery.Group
	seen := make(map[string]bool, len(l.files))
	r.listErrs = r.listErrs[:0]
	for dir, err := range l.bad {
		r.log.Error("cannot list directory; keeping its files' last state", "dir", dir, "err", err)
		r.listErrs = append(r.listErrs, err)
		for key := range r.files {
			if filepath.Dir(key) == dir {
				seen[key] = true
			}
		}
	}
	for _, path := range l.files {
		st := r.files[path]
		if st != nil && !all && !dirty[path] {
			seen[path] = true
			continue
		}
		snap, err := readFile(path)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular) {
			continue // gone since the listing, a dangling link, or a directory
		}
		seen[path] = true
		if st == nil {
			st = &fileState{}
			r.files[path] = st
		}
		if err != nil {
			r.log.Error("cannot read services file; its last good state, if any, stays served", "path", path, "err", err)
			st.err, st.obs = err, nil
			continue
		}
		if mode == scanFirst {
			changed = append(changed, r.decide(path, st, snap, now, true)...)
			continue
		}
		r.observe(path, st, snap, dirty[path], now)
	}
	for key, st := range r.files {
		if !seen[key] {
			changed = append(changed, r.gone(key, st)...)
		}
	}
	return changed
}

// observe takes one read of a file outside its due time.
func (r *run) observe(path string, st *fileState, snap *snapshot, named bool, now time.Time) {
	if st.applied && bytes.Equal(snap.data, st.raw) {
		r.settledOnServed(path, st)
		return
	}
	if !named && st.obs.same(snap) {
		return // unchanged since the last read: the wait goes on
	}
	st.obs, st.obsAt, st.due = snap, now, now.Add(r.settle)
}

// settledOnServed: the file says again what is served.
func (r *run) settledOnServed(path string, st *fileState) {
	if !st.heldSince.IsZero() {
		r.log.Info("services file: the held withdrawal was undone by newer content; keeping what is served", "path", path)
	}
	st.obs, st.obsAt, st.due, st.heldSince, st.err = nil, time.Time{}, time.Time{}, time.Time{}, nil
}

// checkDue reads every file whose due time has come: a file read the same
// as settle ago has settled and is decided; one that changed waits again.
func (r *run) checkDue(now time.Time) []discovery.Group {
	var changed []discovery.Group
	for _, path := range sortedKeys(r.files) {
		st := r.files[path]
		if st.due.IsZero() || now.Before(st.due) {
			continue
		}
		st.due = time.Time{}
		snap, err := readFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular):
			changed = append(changed, r.gone(path, st)...)
			continue
		case err != nil:
			r.log.Error("cannot read services file; its last good state, if any, stays served", "path", path, "err", err)
			st.err, st.obs = err, nil
			continue
		}
		switch {
		case st.applied && bytes.Equal(snap.data, st.raw):
			r.settledOnServed(path, st)
		case !st.obs.same(snap):
			st.obs, st.obsAt, st.due = snap, now, now.Add(r.settle)
		default:
			changed = append(changed, r.decide(path, st, snap, now, false)...)
		}
	}
	return changed
}

// decide parses a settled content and applies it, unless it shrinks the
// file sharply: then it is held until it has said so for r.confirm. The
// first read at start applies at once.
func (r *run) decide(path string, st *fileState, snap *snapshot, now time.Time, first bool) []discovery.Group {
	services, err := Parse(path, snap.data)
	if err != nil {
		r.log.Error("invalid services file; its last good state, if any, stays served", "path", path, "err", err)
		st.err = err
		// Keep the read: until the file changes there is nothing to redo.
		st.obs, st.obsAt, st.due = snap, now, time.Time{}
		return nil
	}
	st.err = nil
	before, after := countEndpoints(st.services), countEndpoints(services)
	withdrawn := countWithdrawn(st.services, services)
	// Sharp: the file lists no services or no endpoints any more, or its
	// endpoints fall by more than maxWithdraw. Replacing endpoints with as
	// many others is not a shrink.
	sharp := !first && r.confirm > 0 && r.maxWithdraw < 1 && st.applied &&
		((len(st.services) > 0 && len(services) == 0) ||
			(before > 0 && (after == 0 || float64(before-after) > r.maxWithdraw*float64(before))))
	if sharp {
		if st.heldSince.IsZero() {
			st.heldSince = now
			r.log.Info("services file shrinks sharply; holding its last state until the change is confirmed",
				"path", path, "withdrawn", withdrawn, "endpoints", before, "endpoints_after", after,
				"services", len(st.services), "services_after", len(services),
				"max_withdraw", r.maxWithdraw, "withdraw_confirm", r.confirm)
		}
		if until := st.heldSince.Add(r.confirm); now.Before(until) {
			// Read again then: applied only if the file still says this.
			st.obs, st.due = snap, until
			return nil
		}
		r.log.Info("services file: the withdrawal held its ground for the confirmation period; applying it",
			"path", path, "withdrawn", withdrawn, "endpoints", before, "withdraw_confirm", r.confirm)
	} else if !st.heldSince.IsZero() {
		r.log.Info("services file: the held withdrawal was replaced by content that does not shrink sharply; applying it", "path", path)
	}
	st.heldSince = time.Time{}
	return r.apply(path, st, snap.data, services)
}

// apply records what the file says and returns its group, if it changes
// what is served.
func (r *run) apply(path string, st *fileState, raw []byte, services []discovery.Service) []discovery.Group {
	prev, known := st.services, st.applied
	st.applied, st.raw, st.services = true, raw, services
	st.obs, st.obsAt, st.due = nil, time.Time{}, time.Time{}
	if known && servicesEqual(prev, services) {
		return nil
	}
	if !known && len(services) == 0 {
		return nil // nothing to say, nothing to withdraw
	}
	if n := countWithdrawn(prev, services); n > 0 || len(services) < len(prev) {
		r.log.Info("services file withdrew endpoints", "path", path, "withdrawn", n,
			"endpoints_before", countEndpoints(prev), "endpoints_after", countEndpoints(services),
			"services_before", len(prev), "services_after", len(services))
	}
	r.log.Debug("services file changed", "path", path, "services", len(services))
	return []discovery.Group{{Key: path, Services: services}}
}

// gone withdraws a file that is deleted or renamed away: at once, as the
// explicit way to withdraw.
func (r *run) gone(path string, st *fileState) []discovery.Group {
	delete(r.files, path)
	if !st.applied || len(st.services) == 0 {
		return nil
	}
	r.log.Info("services file gone; withdrawing its services", "path", path,
		"withdrawn", countEndpoints(st.services), "services", len(st.services))
	return []discovery.Group{{Key: path}}
}

// report hands over what changed, then says whether the source is healthy.
// Hand over before reporting a failure: Update and Replace imply Healthy,
// which would clear the stale mark.
func (r *run) report(changed []discovery.Group, mode scanMode) {
	slices.SortFunc(changed, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	errs := slices.Clone(r.listErrs)
	for _, path := range sortedKeys(r.files) {
		if err := r.files[path].err; err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case mode == scanFirst:
		r.sink.Replace(changed)
	case len(changed) > 0:
		r.sink.Update(changed...)
	case len(errs) == 0:
		r.sink.Healthy()
	}
	if len(errs) > 0 {
		r.sink.Failed(errors.Join(errs...))
	}
}

func countEndpoints(services []discovery.Service) int {
	n := 0
	for _, s := range services {
		n += len(s.Endpoints)
	}
	return n
}

// countWithdrawn counts the endpoints (authority and address) of before
// that after no longer lists.
func countWithdrawn(before, after []discovery.Service) int {
	type key struct {
		a    discovery.Authority
		addr netip.AddrPort
	}
	have := make(map[key]bool)
	for _, s := range after {
		for _, e := range s.Endpoints {
			have[key{s.Authority, e.Addr}] = true
		}
	}
	n := 0
	for _, s := range before {
		for _, e := range s.Endpoints {
			if !have[key{s.Authority, e.Addr}] {
				n++
			}
		}
	}
	return n
}

var errNotRegular = errors.New("not a regular file")

// readFile reads a matched path, following links, refusing anything but a
// regular file (a FIFO would block) and anything over MaxFileSize. The
// size and modification time are taken after the read, so a write during
// the read shows in the next comparison.
func readFile(path string) (*snapshot, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errNotRegular
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxFileSize)
	}
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	return &snapshot{size: fi.Size(), mtime: fi.ModTime(), data: data}, nil
}

func servicesEqual(a, b []discovery.Service) bool {
	return slices.EqualFunc(a, b, func(x, y discovery.Service) bool {
		return x.Authority == y.Authority && x.Opaque == y.Opaque &&
			slices.EqualFunc(x.Endpoints, y.Endpoints, func(e, f discovery.Endpoint) bool { return e.Equal(&f) })
	})
}
