package kubernetes

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"

	"github.com/tributary-mesh/tributary/discovery"
)

// The ServiceProfile informers follow the ExternalWorkload informers'
// pattern (workloads_run.go): optional, started once the CRD is known to
// be installed, rechecked every crdRecheck while it is not, never making
// the source stale or failed, each refusal logged once.

// setupProfiles creates the ServiceProfile informers, one per watched
// namespace; they start in startProfiles.
func (r *run) setupProfiles(api profileAPI) {
	r.profileAPI = api
	if api == nil {
		return
	}
	for ns, set := range r.sets {
		where := "all namespaces"
		if ns != "" {
			where = "namespace " + ns
		}
		inf := cache.NewSharedIndexInformerWithOptions(api.listWatch(ns), &unstructured.Unstructured{}, cache.SharedIndexInformerOptions{
			Indexers:          cache.Indexers{byProfileName: profileNameIndex},
			ObjectDescription: "serviceprofiles in " + where,
		})
		_ = inf.SetTransform(profileFromUnstructured)
		_ = inf.SetWatchErrorHandlerWithContext(r.profileWatchError("serviceprofiles in " + where))
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: afterSync(r.profileEvent),
			UpdateFunc: func(old, obj any) {
				r.profileEvent(old)
				r.profileEvent(obj)
			},
			DeleteFunc: r.profileEvent,
		})
		set.profiles = inf
	}
}

// startProfiles runs the ServiceProfile informers and waits for their
// caches when the CRD is installed, so that the first hand-over carries
// the profiles. When it is not (or the API server will not say), Services
// are served without profiles, it is logged once, and checked again every
// crdRecheck; once the CRD appears, the informers start and, when synced,
// every Service is rebuilt.
func (r *run) startProfiles(ctx, logCtx context.Context, wg *sync.WaitGroup) {
	if r.profileAPI == nil {
		return
	}
	ok, err := r.profilesInstalled(ctx)
	if ok {
		r.runProfileInformers(logCtx, wg)
		if !r.waitProfiles(ctx) {
			wg.Go(func() { r.rebuildWhenProfilesSynced(ctx) })
		}
		return
	}
	every := r.crdRecheck
	if every <= 0 {
		every = DefaultCRDRecheck
	}
	if err != nil {
		r.log.Warn("cannot tell whether the ServiceProfile CRD is installed; serving Services without profiles until it can",
			"resource", ServiceProfileGVR.String(), "error", err, "recheck", every)
	} else {
		r.log.Info("the ServiceProfile CRD is not installed; serving Services without profiles",
			"resource", ServiceProfileGVR.String(), "recheck", every)
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
			if ok, _ := r.profilesInstalled(ctx); !ok {
				continue
			}
			r.log.Info("the ServiceProfile CRD is installed now; reading ServiceProfiles", "resource", ServiceProfileGVR.String())
			r.runProfileInformers(logCtx, wg)
			r.rebuildWhenProfilesSynced(ctx)
			return
		}
	})
}

func (r *run) profilesInstalled(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return r.profileAPI.installed(ctx)
}

// rebuildWhenProfilesSynced waits until the ServiceProfile caches have
// synced and then queues every Service: their first list raises no events.
func (r *run) rebuildWhenProfilesSynced(ctx context.Context) {
	synced := make([]cache.InformerSynced, 0, len(r.sets))
	for _, set := range r.sets {
		synced = append(synced, set.profiles.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return
	}
	r.log.Info("reading ServiceProfiles", "resource", ServiceProfileGVR.String())
	for _, key := range r.serviceKeys() {
		r.queue.Add(key)
	}
}

func (r *run) runProfileInformers(logCtx context.Context, wg *sync.WaitGroup) {
	for _, set := range r.sets {
		inf := set.profiles
		wg.Go(func() { inf.RunWithContext(logCtx) })
	}
}

// waitProfiles waits until the ServiceProfile caches have synced, or their
// list was refused; it reports whether they synced.
func (r *run) waitProfiles(ctx context.Context) bool {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		synced := true
		for _, set := range r.sets {
			synced = synced && set.profiles.HasSynced()
		}
		if synced {
			return true
		}
		if r.profilesRefused.Load() {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// profileWatchError reports the ServiceProfile informers' errors; like
// workloadWatchError's, they never make the source stale.
func (r *run) profileWatchError(what string) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		switch {
		case err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled),
			errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
			apierrors.IsResourceExpired(err), apierrors.IsGone(err):
			return
		case apierrors.IsForbidden(err) || apierrors.IsNotFound(err):
			if !r.profilesRefused.Swap(true) {
				r.log.Warn("ServiceProfiles cannot be read; serving Services without profiles (grant list and watch on serviceprofiles.linkerd.io)",
					"what", what, "error", err)
			}
		default:
			r.log.Warn("reading ServiceProfiles failed; retrying", "what", what, "error", err)
		}
	}
}

// profileEvent queues the Service a ServiceProfile describes.
func (r *run) profileEvent(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*serviceProfile)
	if !ok {
		return
	}
	if ns, svc, ok := serviceOfProfile(p.Name, r.set.builder.domain); ok {
		r.queue.Add(ns + "/" + svc)
	}
}

// byProfileName indexes ServiceProfiles by name (a Service's FQN), to find
// those of every namespace.
const byProfileName = "name"

func profileNameIndex(obj any) ([]string, error) {
	if p, ok := obj.(*serviceProfile); ok {
		return []string{p.Name}, nil
	}
	return nil, nil
}

// profiles returns the profiles of the Service of FQN host in namespace
// ns: its ServiceProfile in ns, when there is one and it is valid, and
// those of the same name in the other watched namespaces, by namespace.
// An invalid one in another namespace is there as an empty profile: as
// with Linkerd, a client's namespace's ServiceProfile shadows the
// Service's even when it cannot be served. Problems are reported (once
// each).
func (r *run) profiles(ns, host string) (own *discovery.Profile, clients map[string]*discovery.Profile) {
	for _, set := range r.sets {
		if set.profiles == nil {
			continue
		}
		objs, _ := set.profiles.GetIndexer().ByIndex(byProfileName, host)
		for _, obj := range objs {
			p, _ := obj.(*serviceProfile)
			if p == nil {
				continue
			}
			for _, msg := range p.problems {
				r.problem(objName("serviceprofile", p.Namespace, p.Name), msg)
			}
			switch {
			case p.Namespace == ns:
				own = p.profile
			case p.Namespace == "":
			default:
				if clients == nil {
					clients = map[string]*discovery.Profile{}
				}
				if clients[p.Namespace] = p.profile; p.profile == nil {
					clients[p.Namespace] = &discovery.Profile{}
				}
			}
		}
	}
	return own, clients
}
