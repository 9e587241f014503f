package kubernetes

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
)

// A stock linkerd2-proxy discovers by the IP the application dialled: for
// a Kubernetes Service that is its ClusterIP, and Linkerd's controller
// answers GetProfile(ClusterIP:port) with the Service's name
// (controller/api/destination/server.go, getSvcID: an index of every
// spec.clusterIPs entry). LookupVIP gives the destination server the same
// answer from this source's Services; it has the shape of
// destination.VirtualIPs, so the server can ask it as it asks the DNS
// interface's virtual IPs.

// byClusterIP indexes Services by each of their cluster IPs, IPv4 and IPv6.
const byClusterIP = "clusterip"

func serviceClusterIPIndex(obj any) ([]string, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return nil, nil
	}
	return clusterIPs(svc), nil
}

// clusterIPs are a Service's cluster IPs in canonical form; none for a
// headless Service ("None") or one without.
func clusterIPs(svc *corev1.Service) []string {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []string
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			out = append(out, a.Unmap().String())
		}
	}
	return out
}

// clusterIPState lives as long as the Source: a lookup made before Run or
// between runs gets a channel that closes when the answer may change.
type clusterIPState struct {
	run atomic.Pointer[run] // the run whose caches have synced, if any

	mu      sync.Mutex
	changed chan struct{}
}

func newClusterIPState() *clusterIPState {
	return &clusterIPState{changed: make(chan struct{})}
}

func (st *clusterIPState) current() <-chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.changed
}

// bump tells every lookup made so far that its answer may have changed.
func (st *clusterIPState) bump() {
	st.mu.Lock()
	defer st.mu.Unlock()
	close(st.changed)
	st.changed = make(chan struct{})
}

// setupClusterIPs indexes the Services by cluster IP and follows the
// changes of their cluster IPs.
func (r *run) setupClusterIPs() {
	st := r.clusterIPs
	for _, set := range r.sets {
		_ = set.services.AddIndexers(cache.Indexers{byClusterIP: serviceClusterIPIndex})
		_, _ = set.services.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
			AddFunc: afterSync(func(obj any) {
				if s, ok := obj.(*corev1.Service); ok && len(clusterIPs(s)) > 0 {
					st.bump()
				}
			}),
			UpdateFunc: func(old, obj any) {
				o, ok1 := old.(*corev1.Service)
				n, ok2 := obj.(*corev1.Service)
				if ok1 && ok2 && !slices.Equal(clusterIPs(o), clusterIPs(n)) {
					st.bump()
				}
			},
			DeleteFunc: func(any) { st.bump() },
		})
	}
}

// clusterIPsSynced makes the lookups answer from r's caches (once they
// have synced), or stop answering (nil, when the run ends).
func (r *run) clusterIPsSynced(live bool) {
	if live {
		r.clusterIPs.run.Store(r)
	} else {
		r.clusterIPs.run.Store(nil)
	}
	r.clusterIPs.bump()
}

// LookupVIP returns the authority host of the Service whose cluster IP ip
// is (<svc>.<ns>.svc.<cluster_domain>), and a channel that closes when
// that may change. Like Linkerd's controller, it answers nothing for an IP
// that two Services claim, and nothing until the source's caches have
// synced. Headless and ExternalName Services have no cluster IP.
func (s *Source) LookupVIP(ip netip.Addr) (host string, changed <-chan struct{}, ok bool) {
	st := s.clusterIPs
	changed = st.current()
	r := st.run.Load()
	if r == nil || !ip.IsValid() {
		return "", changed, false
	}
	key := ip.Unmap().WithZone("").String()
	var found *corev1.Service
	for _, set := range r.sets {
		objs, _ := set.services.GetIndexer().ByIndex(byClusterIP, key)
		for _, o := range objs {
			svc, isSvc := o.(*corev1.Service)
			if !isSvc {
				continue
			}
			if found != nil {
				r.log.Warn("two Services claim one cluster IP; GetProfile by it answers neither", "ip", key,
					"services", []string{found.Namespace + "/" + found.Name, svc.Namespace + "/" + svc.Name})
				return "", changed, false
			}
			found = svc
		}
	}
	if found == nil || found.Spec.Type == corev1.ServiceTypeExternalName {
		return "", changed, false
	}
	return r.set.builder.host(found.Namespace, found.Name), changed, true
}
