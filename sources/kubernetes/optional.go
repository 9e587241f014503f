package kubernetes

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
)

// DefaultCRDRecheck is how often a source whose cluster lacks an optional
// CRD (ExternalWorkload, ServiceProfile) checks again whether it has been
// installed.
const DefaultCRDRecheck = time.Minute

// crdAPI is how the source reaches one optional custom resource; tests
// inject their own.
type crdAPI interface {
	// installed reports whether the API server serves the resource (its
	// CRD is installed). A Forbidden answer is an error.
	installed(ctx context.Context) (bool, error)
	listWatch(namespace string) cache.ListerWatcher
}

// optionalCRD is one custom resource the source reads beside Services,
// EndpointSlices and pods, when the cluster has it. Its informers, one per
// watched namespace, start once the CRD is known to be installed and are
// rechecked every crdRecheck while it is not. They never make the source
// stale or failed: an unreachable API server shows in the other resources,
// and a cluster that refuses the resource (RBAC not granted yet, CRD
// removed) still has its Services served without it. Each kind of refusal
// is logged once.
type optionalCRD struct {
	kind    string // "ExternalWorkload", for the log
	plural  string // "externalworkloads", for informer descriptions
	gvr     string // the resource, for the log
	grant   string // what RBAC must allow, for the refusal's log
	without string // what is served without it, for the log

	api       crdAPI
	informers []cache.SharedIndexInformer
	refused   atomic.Bool // a list was forbidden or not found
}

// setup creates c's informers, one per watched namespace; place stores
// each in its namespace's set (for the lookups). They start in start.
func (r *run) setupCRD(c *optionalCRD, indexers cache.Indexers, transform cache.TransformFunc, event func(any), place func(*nsInformers, cache.SharedIndexInformer)) {
	if c.api == nil {
		return
	}
	for ns, set := range r.sets {
		where := "all namespaces"
		if ns != "" {
			where = "namespace " + ns
		}
		what := c.plural + " in " + where
		inf := cache.NewSharedIndexInformerWithOptions(c.api.listWatch(ns), &unstructured.Unstructured{}, cache.SharedIndexInformerOptions{
			Indexers:          indexers,
			ObjectDescription: what,
		})
		_ = inf.SetTransform(transform)
		_ = inf.SetWatchErrorHandlerWithContext(r.crdWatchError(c, what))
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: afterSync(event),
			UpdateFunc: func(old, obj any) {
				event(old)
				event(obj)
			},
			DeleteFunc: event,
		})
		place(set, inf)
		c.informers = append(c.informers, inf)
	}
}

// startCRD runs c's informers and waits for their caches when the CRD is
// installed, so that the first hand-over carries the resource. When it is
// not (or the API server will not say), Services are served without it,
// that is logged once, and it is checked again every crdRecheck; once the
// CRD appears, the informers start and, when synced, every Service is
// rebuilt.
func (r *run) startCRD(ctx, logCtx context.Context, wg *sync.WaitGroup, c *optionalCRD) {
	if c.api == nil {
		return
	}
	ok, err := r.crdInstalled(ctx, c)
	if ok {
		r.runCRDInformers(logCtx, wg, c)
		if !r.waitCRD(ctx, c) {
			wg.Go(func() { r.rebuildWhenCRDSynced(ctx, c) })
		}
		return
	}
	every := r.crdRecheck
	if every <= 0 {
		every = DefaultCRDRecheck
	}
	if err != nil {
		r.log.Warn("cannot tell whether the "+c.kind+" CRD is installed; "+c.without+" until it can",
			"resource", c.gvr, "error", err, "recheck", every)
	} else {
		r.log.Info("the "+c.kind+" CRD is not installed; "+c.without,
			"resource", c.gvr, "recheck", every)
	}
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if ok, _ := r.crdInstalled(ctx, c); !ok {
				continue
			}
			r.log.Info("the "+c.kind+" CRD is installed now; reading "+c.kind+"s", "resource", c.gvr)
			r.runCRDInformers(logCtx, wg, c)
			r.rebuildWhenCRDSynced(ctx, c)
			return
		}
	})
}

// crdInstalled asks whether c's CRD is installed, within a bound: the API
// server answered the other lists a moment ago.
func (r *run) crdInstalled(ctx context.Context, c *optionalCRD) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.api.installed(ctx)
}

func (r *run) runCRDInformers(logCtx context.Context, wg *sync.WaitGroup, c *optionalCRD) {
	for _, inf := range c.informers {
		wg.Go(func() { inf.RunWithContext(logCtx) })
	}
}

// rebuildWhenCRDSynced waits until c's caches have synced (after a late
// start, or once a refused list is allowed) and then queues every Service:
// the objects of their first list raise no events.
func (r *run) rebuildWhenCRDSynced(ctx context.Context, c *optionalCRD) {
	synced := make([]cache.InformerSynced, 0, len(c.informers))
	for _, inf := range c.informers {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	r.log.Info("reading "+c.kind+"s", "resource", c.gvr)
	for _, key := range r.serviceKeys() {
		r.queue.Add(key)
	}
}

// waitCRD waits until c's caches have synced, or their list was refused
// (forbidden, or the CRD went away): a source that may not read the
// resource still serves its Services. It reports whether they synced.
func (r *run) waitCRD(ctx context.Context, c *optionalCRD) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		synced := true
		for _, inf := range c.informers {
			synced = synced && inf.HasSynced()
		}
		if synced {
			return true
		}
		if c.refused.Load() {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// crdWatchError reports the errors of c's informers; they never make the
// source stale, and each kind of refusal is logged once.
func (r *run) crdWatchError(c *optionalCRD, what string) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		switch {
		case err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled),
			errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
			apierrors.IsResourceExpired(err), apierrors.IsGone(err):
			return
		case apierrors.IsForbidden(err) || apierrors.IsNotFound(err):
			if !c.refused.Swap(true) {
				r.log.Warn(c.kind+"s cannot be read; "+c.without+" (grant list and watch on "+c.grant+")",
					"what", what, "error", err)
			}
		default:
			r.log.Warn("reading "+c.kind+"s failed; retrying", "what", what, "error", err)
		}
	}
}
