package kubernetes

import (
	"k8s.io/client-go/tools/cache"

	"github.com/tributary-mesh/tributary/discovery"
)

// setupProfiles creates the ServiceProfile informers (an optionalCRD):
// without them Services are served without profiles.
func (r *run) setupProfiles(api profileAPI) {
	r.profileCRD = optionalCRD{
		kind:    "ServiceProfile",
		plural:  "serviceprofiles",
		gvr:     ServiceProfileGVR.String(),
		grant:   "serviceprofiles.linkerd.io",
		without: "serving Services without profiles",
	}
	if api == nil {
		return
	}
	r.profileCRD.api = api
	r.setupCRD(&r.profileCRD, cache.Indexers{byProfileName: profileNameIndex},
		profileFromUnstructured, r.profileEvent,
		func(set *nsInformers, inf cache.SharedIndexInformer) { set.profiles = inf })
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
