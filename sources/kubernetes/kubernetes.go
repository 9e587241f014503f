// Package kubernetes is the `kubernetes` source kind: Services and their
// EndpointSlices from one Kubernetes cluster, served as Linkerd's
// destination controller serves them.
//
//	sources:
//	  - name: east
//	    kind: kubernetes
//	    kubeconfig: east.kubeconfig   # empty: in-cluster config
//	    cluster: east                 # metric label; default the source name
//	    namespaces: [prod]            # default all
//	    identity: linkerd             # linkerd | spiffe | none
//
// Each Service is one group keyed "<namespace>/<name>", rebuilt whole from
// the informers' caches whenever the Service, one of its EndpointSlices or
// one of its pods changes. Its authorities are
// <svc>.<ns>.svc.<cluster_domain>:<service port> and, for endpoints with a
// hostname, <hostname>.<svc>.<ns>.svc.<cluster_domain>:<service port>;
// each endpoint's port is the slice port named like the service port, which
// is how named target ports resolve. docs/sources/kubernetes.md is the user
// documentation.
package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/retry"
)

// KindName is the value of `kind:` for this source.
const KindName = "kubernetes"

func init() {
	discovery.Register(discovery.Kind{Name: KindName, New: newFromNode})
}

// Index names on the EndpointSlice informers.
const (
	byService = "service" // "<ns>/<service>" from the kubernetes.io/service-name label
	byPod     = "pod"     // "<ns>/<pod>" of every endpoint's target reference
)

// maxBatch bounds how many rebuilt groups go to the sink in one Update.
const maxBatch = 512

// Source is a kubernetes source; build it with NewSource.
type Source struct {
	set  *settings
	name string
	log  *slog.Logger

	// Injected by tests.
	inCluster    func() (*rest.Config, error)
	newClient    func(*rest.Config) (listWatchFunc, error)
	newWorkloads func(*rest.Config) (workloadAPI, error) // nil: no ExternalWorkloads
	newProfiles  func(*rest.Config) (profileAPI, error)  // nil: no ServiceProfiles
	crdRecheck   time.Duration                           // 0: DefaultCRDRecheck

	nodes      atomic.Pointer[cache.SharedIndexInformer] // set while Run runs with node_zones
	clusterIPs *clusterIPState                           // LookupVIP's
	rejected   atomic.Uint64
}

var (
	_ discovery.Source    = (*Source)(nil)
	_ discovery.NodeZoner = (*Source)(nil)
)

// NewSource validates cfg and returns a source ready to Run. It loads the
// kubeconfig file, if one is named, but starts nothing.
func NewSource(cfg Config, bc discovery.BuildContext) (*Source, error) {
	set, err := cfg.validate(bc)
	if err != nil {
		return nil, err
	}
	log := bc.Log()
	return &Source{
		set:          set,
		name:         bc.Name,
		log:          log,
		inCluster:    rest.InClusterConfig,
		newClient:    restListWatch,
		newWorkloads: restWorkloads,
		newProfiles:  restProfiles,
		clusterIPs:   newClusterIPState(),
	}, nil
}

// Rejected counts malformed backend objects (or parts of them) the source
// skipped; each is also logged once.
func (s *Source) Rejected() uint64 { return s.rejected.Load() }

// NodeZone implements discovery.NodeZoner: the zone label of a node of this
// cluster, as long as the source runs with node_zones.
func (s *Source) NodeZone(node string) (string, bool) {
	inf := s.nodes.Load()
	if inf == nil || node == "" {
		return "", false
	}
	obj, ok, err := (*inf).GetIndexer().GetByKey(node)
	if err != nil || !ok {
		return "", false
	}
	n, isNode := obj.(*corev1.Node)
	if !isNode {
		return "", false
	}
	return nodeZone(n)
}

func nodeZone(n *corev1.Node) (string, bool) {
	if z := n.Labels[corev1.LabelTopologyZone]; z != "" {
		return z, true
	}
	if z := n.Labels[corev1.LabelFailureDomainBetaZone]; z != "" {
		return z, true
	}
	return "", false
}

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, sink discovery.Sink) {
	client, workloads, profiles, reach := s.connect(ctx, sink)
	if client == nil {
		return
	}
	r := s.newRun(client, sink, reach)
	r.setupWorkloads(workloads)
	r.setupProfiles(profiles)
	r.setupClusterIPs()
	r.run(ctx)
}

// connect builds the API client, with every request observed for
// reachability; in-cluster configuration that is not there yet (or a
// client that cannot be built) is retried with backoff: 1s doubling to
// 30s, jittered (retry.Backoff).
func (s *Source) connect(ctx context.Context, sink discovery.Sink) (listWatchFunc, workloadAPI, profileAPI, *reachability) {
	bo := retry.Backoff{Min: time.Second, Max: 30 * time.Second}
	for {
		rc := s.set.restConfig
		var err error
		if rc == nil {
			rc, err = s.inCluster()
			if err != nil {
				err = fmt.Errorf("in-cluster kubernetes config: %w", err)
			}
		}
		if err == nil {
			rc = rest.CopyConfig(rc)
			rc.UserAgent = "tributary (source " + s.name + ")"
			// Protobuf is cheaper to decode than JSON, which counts for
			// the initial lists of a large cluster.
			rc.ContentType = "application/vnd.kubernetes.protobuf"
			rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
			if rc.QPS == 0 {
				rc.QPS, rc.Burst = 50, 100
			}
			// ExternalWorkloads and ServiceProfiles are optional: their
			// requests are not observed for reachability
			// (workloadWatchError, profileWatchError).
			plain := rest.CopyConfig(rc)
			reach := newReachability(sink, rc.Host)
			rc.Wrap(reach.wrap)
			var client listWatchFunc
			client, err = s.newClient(rc)
			if err == nil {
				var workloads workloadAPI
				if s.newWorkloads != nil {
					var werr error
					if workloads, werr = s.newWorkloads(plain); werr != nil {
						s.log.Warn("serving pods without ExternalWorkloads", "error", werr)
					}
				}
				var profiles profileAPI
				if s.newProfiles != nil {
					var perr error
					if profiles, perr = s.newProfiles(plain); perr != nil {
						s.log.Warn("serving Services without ServiceProfiles", "error", perr)
					}
				}
				return client, workloads, profiles, reach
			}
			err = fmt.Errorf("kubernetes client: %w", err)
		}
		sink.Failed(err)
		if retry.Wait(ctx, bo.Next()) != nil {
			return nil, nil, nil, nil
		}
	}
}

// nsInformers are the informers of one watched namespace ("" for all).
type nsInformers struct {
	services  cache.SharedIndexInformer
	slices    cache.SharedIndexInformer
	pods      cache.SharedIndexInformer
	workloads cache.SharedIndexInformer // nil without a workloadAPI
	profiles  cache.SharedIndexInformer // nil without a profileAPI
}

// run is one Run call's state.
type run struct {
	*Source
	sink  discovery.Sink
	reach *reachability

	informers []cache.SharedIndexInformer
	sets      map[string]*nsInformers
	allNS     bool
	nodeInf   cache.SharedIndexInformer
	queue     *workqueue.Typed[string]

	workloadCRD optionalCRD // ExternalWorkloads
	profileCRD  optionalCRD // ServiceProfiles

	// Owned by the worker (Run's goroutine).
	seed   maphash.Seed
	sent   map[string]uint64 // hash of the group last handed over, by key
	warned map[string]bool   // problems already logged
}

func (s *Source) newRun(lw listWatchFunc, sink discovery.Sink, reach *reachability) *run {
	r := &run{
		Source: s,
		sink:   sink,
		reach:  reach,
		sets:   map[string]*nsInformers{},
		queue:  workqueue.NewTypedWithConfig(workqueue.TypedQueueConfig[string]{}),
		seed:   maphash.MakeSeed(),
		sent:   map[string]uint64{},
		warned: map[string]bool{},
	}
	namespaces := s.set.namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
		r.allNS = true
	}
	selector := s.set.selector.String()
	for _, ns := range namespaces {
		where := "all namespaces"
		if ns != "" {
			where = "namespace " + ns
		}
		set := &nsInformers{
			services: newInformer(lw(resServices, ns, selector), &corev1.Service{}, "services in "+where,
				cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
			slices: newInformer(lw(resEndpointSlices, ns, ""), &discoveryv1.EndpointSlice{}, "endpointslices in "+where,
				cache.Indexers{byService: sliceServiceIndex, byPod: slicePodIndex, byWorkload: sliceWorkloadIndex}),
			pods: newInformer(lw(resPods, ns, ""), &corev1.Pod{}, "pods in "+where, nil),
		}
		r.sets[ns] = set
		r.informers = append(r.informers, set.services, set.slices, set.pods)
		_ = set.services.SetWatchErrorHandlerWithContext(r.watchError("services in " + where))
		_ = set.slices.SetWatchErrorHandlerWithContext(r.watchError("endpointslices in " + where))
		_ = set.pods.SetWatchErrorHandlerWithContext(r.watchError("pods in " + where))
		// Adds of the initial list are skipped: the caches have synced
		// before the first Replace is built from them, so it holds them.
		_, _ = set.services.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc:    afterSync(r.serviceEvent),
			UpdateFunc: func(_, obj any) { r.serviceEvent(obj) },
			DeleteFunc: r.serviceEvent,
		})
		_, _ = set.slices.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: afterSync(r.sliceEvent),
			UpdateFunc: func(old, obj any) {
				r.sliceEvent(old)
				r.sliceEvent(obj)
			},
			DeleteFunc: r.sliceEvent,
		})
		_, _ = set.pods.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: afterSync(r.podEvent),
			UpdateFunc: func(old, obj any) {
				if podChanged(old, obj) {
					r.podEvent(obj)
				}
			},
			DeleteFunc: r.podEvent,
		})
	}
	if s.set.nodeZones {
		r.nodeInf = newInformer(lw(resNodes, metav1.NamespaceAll, ""), &corev1.Node{}, "nodes", nil)
		_ = r.nodeInf.SetWatchErrorHandlerWithContext(r.watchError("nodes"))
		r.informers = append(r.informers, r.nodeInf)
	}
	return r
}

func (r *run) run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	// client-go logs through klog; give it this source's logger.
	logCtx := klog.NewContext(ctx, logr.FromSlogHandler(r.log.Handler()))
	var wg sync.WaitGroup
	for _, inf := range r.informers {
		wg.Go(func() { inf.RunWithContext(logCtx) })
	}
	if r.nodeInf != nil {
		r.nodes.Store(&r.nodeInf)
	}
	stopQueue := context.AfterFunc(ctx, r.queue.ShutDown)
	defer func() {
		stopQueue()
		cancel()
		r.queue.ShutDown()
		r.nodes.Store(nil)
		wg.Wait()
		r.reach.stop()
	}()

	start := time.Now()
	synced := make([]cache.InformerSynced, 0, len(r.informers))
	for _, inf := range r.informers {
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return // cancelled before the caches synced
	}
	r.startCRD(ctx, logCtx, &wg, &r.workloadCRD)
	r.startCRD(ctx, logCtx, &wg, &r.profileCRD)
	if ctx.Err() != nil {
		return
	}

	// Everything, once. Events that arrived since the caches synced are
	// queued and rebuilt after; the memo skips those that changed nothing.
	var groups []discovery.Group
	for _, key := range r.serviceKeys() {
		if g, changed := r.group(key); changed && len(g.Services) > 0 {
			groups = append(groups, g)
		}
	}
	r.log.Info("kubernetes caches synced", "services", len(groups), "took", time.Since(start).Round(time.Millisecond))
	r.sink.Replace(groups)
	r.clusterIPsSynced(true)
	defer r.clusterIPsSynced(false)
	if err := r.reach.failure(); err != nil {
		r.sink.Failed(err)
	}
	r.work()
}

// serviceKeys lists every cached Service's key, sorted.
func (r *run) serviceKeys() []string {
	var keys []string
	for _, set := range r.sets {
		keys = append(keys, set.services.GetIndexer().ListKeys()...)
	}
	sort.Strings(keys)
	return keys
}

// work rebuilds the groups of queued keys until the queue shuts down.
func (r *run) work() {
	for {
		key, shutdown := r.queue.Get()
		if shutdown {
			return
		}
		keys := []string{key}
		for len(keys) < maxBatch && r.queue.Len() > 0 {
			k, shutdown := r.queue.Get()
			if shutdown {
				break
			}
			keys = append(keys, k)
		}
		var groups []discovery.Group
		for _, k := range keys {
			if g, changed := r.group(k); changed {
				groups = append(groups, g)
			}
			r.queue.Done(k)
		}
		if len(groups) == 0 {
			continue
		}
		r.sink.Update(groups...)
		// Update implies Healthy; while some resource still cannot be
		// watched, the source is not.
		if err := r.reach.failure(); err != nil {
			r.sink.Failed(err)
		}
	}
}

// group rebuilds the group of one Service key from the caches and reports
// whether it differs from what was last handed over.
func (r *run) group(key string) (discovery.Group, bool) {
	ns, _, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return discovery.Group{}, false
	}
	var services []discovery.Service
	if set := r.setFor(ns); set != nil {
		if obj, ok, _ := set.services.GetIndexer().GetByKey(key); ok {
			if svc, isSvc := obj.(*corev1.Service); isSvc {
				services = r.set.builder.buildWith(svc, r.slicesOf(set, key), r.lookups(), r.problem)
				if len(services) > 0 {
					host := r.set.builder.host(svc.Namespace, svc.Name)
					if prof, clients := r.profiles(svc.Namespace, host); prof != nil || clients != nil {
						for i := range services {
							if services[i].Authority.Host == host {
								services[i].Profile, services[i].ClientProfiles = prof, clients
							}
						}
					}
				}
			}
		}
	}
	prev, had := r.sent[key]
	if len(services) == 0 {
		if !had {
			return discovery.Group{}, false
		}
		delete(r.sent, key)
		return discovery.Group{Key: key}, true
	}
	h := hashServices(r.seed, services)
	if had && prev == h {
		return discovery.Group{}, false
	}
	r.sent[key] = h
	return discovery.Group{Key: key, Services: services}, true
}

func (r *run) setFor(ns string) *nsInformers {
	if r.allNS {
		return r.sets[metav1.NamespaceAll]
	}
	return r.sets[ns]
}

func (r *run) slicesOf(set *nsInformers, key string) []*discoveryv1.EndpointSlice {
	objs, _ := set.slices.GetIndexer().ByIndex(byService, key)
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, sl)
		}
	}
	// Index order is map order; a stable order keeps rebuilds identical.
	slices.SortFunc(out, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (r *run) pod(ns, name string) *corev1.Pod {
	set := r.setFor(ns)
	if set == nil {
		return nil
	}
	obj, ok, _ := set.pods.GetIndexer().GetByKey(ns + "/" + name)
	if !ok {
		return nil
	}
	p, _ := obj.(*corev1.Pod)
	return p
}

// problem logs a malformed object once and counts it.
func (r *run) problem(obj, msg string) {
	r.rejected.Add(1)
	k := obj + "\x00" + msg
	if r.warned[k] {
		return
	}
	if len(r.warned) > 10000 {
		clear(r.warned)
	}
	r.warned[k] = true
	r.log.Error("skipping malformed kubernetes data; the rest of the object applies", "object", obj, "problem", msg)
}

// watchError reports what a reflector's ListAndWatch returned. Ends of
// watches that are routine (closed, expired) are not failures.
func (r *run) watchError(what string) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		switch {
		case err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled),
			errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
			apierrors.IsResourceExpired(err), apierrors.IsGone(err):
			return
		}
		r.sink.Failed(fmt.Errorf("kubernetes API %s: %s: %w", r.reach.host, what, err))
	}
}

// Event handlers: they only queue keys; the worker reads the caches.

// afterSync adapts an add handler to skip the informer's initial list.
func afterSync(f func(any)) func(any, bool) {
	return func(obj any, isInInitialList bool) {
		if !isInInitialList {
			f(obj)
		}
	}
}

func (r *run) serviceEvent(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		r.queue.Add(key)
	}
}

func (r *run) sliceEvent(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	if svc := sl.Labels[discoveryv1.LabelServiceName]; svc != "" {
		r.queue.Add(sl.Namespace + "/" + svc)
	}
}

func (r *run) podEvent(obj any) {
	var ns, name string
	switch o := obj.(type) {
	case *corev1.Pod:
		ns, name = o.Namespace, o.Name
	case cache.DeletedFinalStateUnknown:
		var err error
		if ns, name, err = cache.SplitMetaNamespaceKey(o.Key); err != nil {
			return
		}
	default:
		return
	}
	set := r.setFor(ns)
	if set == nil {
		return
	}
	objs, _ := set.slices.GetIndexer().ByIndex(byPod, ns+"/"+name)
	for _, o := range objs {
		r.sliceEvent(o)
	}
}

// podChanged reports whether an update changes what the source reads of a
// pod (its identity and owner labels); status churn does not count.
func podChanged(oldObj, newObj any) bool {
	o, ok1 := oldObj.(*corev1.Pod)
	n, ok2 := newObj.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	return o.UID != n.UID || o.Spec.ServiceAccountName != n.Spec.ServiceAccountName ||
		!maps.Equal(o.Labels, n.Labels) || !slices.EqualFunc(o.OwnerReferences, n.OwnerReferences, ownerRefEqual) ||
		!maps.Equal(o.Annotations, n.Annotations) ||
		!reflect.DeepEqual(o.Spec.Containers, n.Spec.Containers) || !reflect.DeepEqual(o.Spec.InitContainers, n.Spec.InitContainers)
}

func ownerRefEqual(a, b metav1.OwnerReference) bool {
	return a.Kind == b.Kind && a.Name == b.Name && a.UID == b.UID &&
		(a.Controller != nil && *a.Controller) == (b.Controller != nil && *b.Controller)
}

func sliceServiceIndex(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	if svc := sl.Labels[discoveryv1.LabelServiceName]; svc != "" {
		return []string{sl.Namespace + "/" + svc}, nil
	}
	return nil, nil
}

func slicePodIndex(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var keys []string
	for i := range sl.Endpoints {
		ref := sl.Endpoints[i].TargetRef
		if ref == nil || ref.Kind != "Pod" || ref.Name == "" {
			continue
		}
		ns := ref.Namespace
		if ns == "" {
			ns = sl.Namespace
		}
		keys = append(keys, ns+"/"+ref.Name)
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

// slim drops what the source never reads before objects reach the caches:
// managed fields, pod specs and statuses, node statuses (their image lists
// alone can be kilobytes). It mutates in place, as client-go allows, and is
// idempotent.
func slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		o.ManagedFields = nil
		var keep map[string]string
		for _, k := range []string{OpaquePortsAnnotation, SkipInboundPortsAnnotation} {
			if v, ok := o.Annotations[k]; ok {
				if keep == nil {
					keep = map[string]string{}
				}
				keep[k] = v
			}
		}
		o.Annotations = keep
		o.Spec = corev1.PodSpec{
			ServiceAccountName: o.Spec.ServiceAccountName, NodeName: o.Spec.NodeName, Hostname: o.Spec.Hostname,
			InitContainers: slimContainers(o.Spec.InitContainers), Containers: slimContainers(o.Spec.Containers),
		}
		o.Status = corev1.PodStatus{}
	case *corev1.Service:
		o.ManagedFields = nil
		if v, ok := o.Annotations[OpaquePortsAnnotation]; ok {
			o.Annotations = map[string]string{OpaquePortsAnnotation: v}
		} else {
			o.Annotations = nil
		}
		o.Status = corev1.ServiceStatus{}
	case *discoveryv1.EndpointSlice:
		o.ManagedFields = nil
		o.Annotations = nil
		for i := range o.Endpoints {
			o.Endpoints[i].DeprecatedTopology = nil
		}
	case *corev1.Node:
		var zl map[string]string
		for _, k := range []string{corev1.LabelTopologyZone, corev1.LabelFailureDomainBetaZone} {
			if v, ok := o.Labels[k]; ok {
				if zl == nil {
					zl = map[string]string{}
				}
				zl[k] = v
			}
		}
		*o = corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: o.Name, UID: o.UID, ResourceVersion: o.ResourceVersion, Labels: zl}}
	}
	return obj, nil
}

// hashServices digests a group's content, to skip handing over a rebuild
// that changed nothing (a relist, a pod update that touches nothing read).
func hashServices(seed maphash.Seed, services []discovery.Service) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	var keys []string
	str := func(s string) {
		h.WriteString(s)
		h.WriteByte(0)
	}
	num := func(v uint64) {
		var b [8]byte
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		h.Write(b[:])
	}
	for i := range services {
		svc := &services[i]
		str(svc.Authority.Host)
		num(uint64(svc.Authority.Port))
		if svc.Opaque {
			h.WriteByte(1)
		} else {
			h.WriteByte(0)
		}
		if svc.Profile != nil || svc.ClientProfiles != nil {
			// Rare, and small: their JSON form stands for their content
			// (map keys sorted).
			b, _ := json.Marshal(svc.Profile)
			h.WriteByte(1)
			h.Write(b)
			b, _ = json.Marshal(svc.ClientProfiles)
			h.Write(b)
		} else {
			h.WriteByte(0)
		}
		num(uint64(len(svc.Endpoints)))
		for j := range svc.Endpoints {
			e := &svc.Endpoints[j]
			b, _ := e.Addr.MarshalBinary()
			h.Write(b)
			h.WriteByte(0)
			num(uint64(e.Weight))
			str(e.Zone)
			h.WriteByte(byte(e.Health))
			h.WriteByte(byte(e.Identity.Kind))
			str(e.Identity.Name)
			str(e.Identity.ServerName)
			h.WriteByte(byte(e.Protocol))
			num(uint64(e.OpaqueTransport))
			keys = keys[:0]
			for k := range e.Labels {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			num(uint64(len(keys)))
			for _, k := range keys {
				str(k)
				str(e.Labels[k])
			}
			num(uint64(len(e.ForZones)))
			for _, z := range e.ForZones {
				str(z)
			}
		}
	}
	return h.Sum64()
}
