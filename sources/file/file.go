// Package file is the `file` source kind: services read from YAML or JSON
// files that people write by hand or tools drop in a folder.
//
//	sources:
//	  - name: local
//	    kind: file
//	    paths: ["services/*.yaml", "/etc/tributary/more/*.json"]  # globs
//	    refresh_interval: 5m  # the full re-read besides the watch
//
// Each file is one group keyed by its absolute path; Parse documents the
// format. The source watches the directories of its globs, so atomic
// renames and Kubernetes ConfigMap symlink swaps are seen, and re-reads
// every file each refresh_interval as well. A file that cannot be read or
// parsed keeps its last good state and marks the source stale until it is
// fixed; a file that is gone or valid but empty withdraws its services.
package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
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

// DefaultDebounce is how long the source waits after the first filesystem
// event of a burst before re-reading, so one save is one re-read.
const DefaultDebounce = 100 * time.Millisecond

func init() {
	discovery.Register(discovery.Kind{
		Name: KindName,
		New:  newFromNode,
	})
}

// Source is a file source; build it with NewSource.
type Source struct {
	patterns []string // absolute, cleaned, deduplicated
	interval time.Duration
	debounce time.Duration
	log      *slog.Logger

	// newTicker starts the refresh ticker; tests replace it.
	newTicker func(time.Duration) (<-chan time.Time, func())
}

var _ discovery.Source = (*Source)(nil)

// NewSource validates cfg and returns a source ready to Run. It starts
// nothing.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	patterns, interval, err := cfg.validate(bc.BaseDir)
	if err != nil {
		return nil, err
	}
	log := bc.Log()
	return &Source{
		patterns:  patterns,
		interval:  interval,
		debounce:  DefaultDebounce,
		log:       log,
		newTicker: realTicker,
	}, nil
}

func realTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// Patterns returns the absolute glob patterns the source reads.
func (s *Source) Patterns() []string { return slices.Clone(s.patterns) }

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) {
	if ctx.Err() != nil {
		return
	}
	r := &run{
		Source: s,
		sink:   sink,
		files:  make(map[string]fileState),
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

	r.refresh(true)

	tick, stopTicker := s.newTicker(s.interval)
	defer stopTicker()
	debounce := time.NewTimer(s.debounce)
	debounce.Stop()
	defer debounce.Stop()
	pending := false

	var events <-chan fsnotify.Event
	var watchErrs <-chan error
	if w != nil {
		events, watchErrs = w.Events, w.Errors
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !pending && r.relevant(ev) {
				// The first event of a burst starts the timer; later ones
				// ride along, so a steady stream cannot postpone the read.
				debounce.Reset(s.debounce)
				pending = true
			}
		case err, ok := <-watchErrs:
			if !ok {
				watchErrs = nil
				continue
			}
			s.log.Warn("file watch error; re-reading everything", "err", err)
			if !pending {
				debounce.Reset(s.debounce)
				pending = true
			}
		case <-debounce.C:
			pending = false
			r.refresh(false)
		case <-tick:
			debounce.Stop()
			pending = false
			r.refresh(false)
		}
	}
}

// fileState is what was last handed over for one file.
type fileState struct {
	raw      []byte
	services []discovery.Service
}

// run is the state of one Run call, owned by its goroutine.
type run struct {
	*Source
	sink    discovery.Sink
	watcher *fsnotify.Watcher // nil when watching is unavailable

	files   map[string]fileState // by key; files that parsed at least once
	watched map[string]bool      // directories of the last listing
	warned  map[string]bool      // directories whose watch failed, warned about
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

func sortedKeys(m map[string]bool) []string {
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

// refresh re-reads every matched file and hands over what changed: on the
// first call everything with Replace, later the changed groups with Update.
// A file that cannot be read or parsed keeps its last state and makes the
// refresh report Failed.
func (r *run) refresh(first bool) {
	l := r.list()
	r.watch(l.dirs)

	var (
		changed []discovery.Group
		errs    []error
		seen    = make(map[string]bool, len(l.files))
	)
	for dir, err := range l.bad {
		r.log.Error("cannot list directory; keeping its files' last state", "dir", dir, "err", err)
		errs = append(errs, err)
		for key := range r.files {
			if filepath.Dir(key) == dir {
				seen[key] = true
			}
		}
	}
	for _, path := range l.files {
		data, err := readFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular):
			continue // gone since the listing, a dangling link, or a directory
		case err != nil:
			r.log.Error("cannot read services file; its last good state, if any, stays served", "path", path, "err", err)
			errs = append(errs, err)
			seen[path] = true
			continue
		}
		seen[path] = true
		prev, known := r.files[path]
		if known && bytes.Equal(prev.raw, data) {
			continue
		}
		services, err := Parse(path, data)
		if err != nil {
			r.log.Error("invalid services file; its last good state, if any, stays served", "path", path, "err", err)
			errs = append(errs, err)
			continue
		}
		r.files[path] = fileState{raw: data, services: services}
		if known && servicesEqual(prev.services, services) {
			continue
		}
		if !known && len(services) == 0 {
			continue // nothing to say, nothing to withdraw
		}
		r.log.Debug("services file changed", "path", path, "services", len(services))
		changed = append(changed, discovery.Group{Key: path, Services: services})
	}
	for key, st := range r.files {
		if seen[key] {
			continue
		}
		delete(r.files, key)
		if len(st.services) > 0 {
			r.log.Info("services file gone; withdrawing its services", "path", key)
			changed = append(changed, discovery.Group{Key: key})
		}
	}
	slices.SortFunc(changed, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })

	// Hand over before reporting a failure: Update and Replace imply Healthy,
	// which would clear the stale mark.
	switch {
	case first:
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

var errNotRegular = errors.New("not a regular file")

// readFile reads a matched path, following links, refusing anything but a
// regular file (a FIFO would block) and anything over MaxFileSize.
func readFile(path string) ([]byte, error) {
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
	return data, nil
}

func servicesEqual(a, b []discovery.Service) bool {
	return slices.EqualFunc(a, b, func(x, y discovery.Service) bool {
		return x.Authority == y.Authority && x.Opaque == y.Opaque &&
			slices.EqualFunc(x.Endpoints, y.Endpoints, func(e, f discovery.Endpoint) bool { return e.Equal(&f) })
	})
}
