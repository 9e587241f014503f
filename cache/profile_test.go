package cache

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/go-memdb"

	"github.com/tributary-mesh/tributary/discovery"
)

func withProfile(s discovery.Service, p *discovery.Profile) discovery.Service {
	s.Profile = p
	return s
}

// profileV builds a fresh profile each call, so equal content is compared
// by value, not by pointer.
func profileV(timeout time.Duration) *discovery.Profile {
	return &discovery.Profile{
		Routes: []discovery.Route{{
			Name:      "GET /books",
			Condition: discovery.RequestMatch{All: []discovery.RequestMatch{{Method: "GET"}, {PathRegex: "/books"}}},
			Timeout:   timeout,
		}},
		DstOverrides: []discovery.WeightedDst{{Authority: "web-v2.demo", Weight: 10000}},
	}
}

// A profile is held with its service row: returned by Service and Dump,
// rewritten (and watchers woken) only when its content changes, and gone
// with the row.
func TestProfileCarriedWithService(t *testing.T) {
	s := New()
	apply(t, s, "k", group("web", withProfile(svc("web.demo:80", ep("10.0.0.1:80")), profileV(time.Second))))
	st := s.Snapshot().Service(nil, auth("web.demo:80"))
	if !st.Profile.Equal(profileV(time.Second)) {
		t.Fatalf("Service().Profile = %+v", st.Profile)
	}
	if d := s.Snapshot().Dump(); len(d) != 1 || !d[0].Profile.Equal(profileV(time.Second)) {
		t.Fatalf("Dump = %+v", d)
	}

	ws := watch(s, "web.demo:80")
	if apply(t, s, "k", group("web", withProfile(svc("web.demo:80", ep("10.0.0.1:80")), profileV(time.Second)))) {
		t.Fatal("an equal profile in a new value reported a change")
	}
	if watchFired(ws) {
		t.Fatal("an equal profile woke a watcher")
	}

	if !apply(t, s, "k", group("web", withProfile(svc("web.demo:80", ep("10.0.0.1:80")), profileV(2*time.Second)))) {
		t.Fatal("a changed profile reported no change")
	}
	if !watchFired(ws) {
		t.Fatal("a changed profile woke no watcher")
	}
	if st := s.Snapshot().Service(nil, auth("web.demo:80")); st.Profile.Routes[0].Timeout != 2*time.Second {
		t.Fatalf("after the change: %+v", st.Profile)
	}

	ws = watch(s, "web.demo:80")
	if !apply(t, s, "k", group("web", svc("web.demo:80", ep("10.0.0.1:80")))) {
		t.Fatal("removing the profile reported no change")
	}
	if !watchFired(ws) {
		t.Fatal("removing the profile woke no watcher")
	}
	if st := s.Snapshot().Service(nil, auth("web.demo:80")); st.Profile != nil || !st.Exists {
		t.Fatalf("after removal: %+v", st)
	}
}

// Of two services of one authority in a group, the last declared profile
// wins; the exact port's row is preferred over an any-port row.
func TestProfileMergeAndPortPreference(t *testing.T) {
	s := New()
	apply(t, s, "k", group("web",
		withProfile(svc("web.demo:80"), profileV(time.Second)),
		withProfile(svc("web.demo:80"), profileV(3*time.Second)),
		svc("web.demo:80"),
	))
	if st := s.Snapshot().Service(nil, auth("web.demo:80")); st.Profile == nil || st.Profile.Routes[0].Timeout != 3*time.Second {
		t.Fatalf("merged profile: %+v", st.Profile)
	}
	apply(t, s, "other", group("any", withProfile(svc("web.demo:0"), profileV(time.Minute))))
	if st := s.Snapshot().Service(nil, auth("web.demo:80")); st.Profile.Routes[0].Timeout != 3*time.Second {
		t.Fatalf("the exact port's profile lost to any port's: %+v", st.Profile)
	}
	if st := s.Snapshot().Service(memdb.NewWatchSet(), auth("web.demo:81")); st.Profile == nil || st.Profile.Routes[0].Timeout != time.Minute {
		t.Fatalf("any port's profile: %+v", st.Profile)
	}
}

// A profile Validate refuses is refused with the group, as ValidateGroup says.
func TestApplyRejectsInvalidProfile(t *testing.T) {
	s := New()
	bad := &discovery.Profile{Routes: []discovery.Route{{Name: "empty"}}}
	g := group("web", withProfile(svc("web.demo:80"), bad))
	if _, err := s.Apply("k", []discovery.Group{g}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Apply: %v, want ErrInvalid", err)
	}
	if err := discovery.ValidateGroup(&g); err == nil {
		t.Fatal("ValidateGroup accepted it")
	}
}

// Client profiles are held with the service row like its own profile:
// compared by content, a change wakes watchers, an empty map is none.
func TestClientProfilesCarriedWithService(t *testing.T) {
	s := New()
	withClients := func(timeout time.Duration) discovery.Service {
		v := withProfile(svc("web.demo:80"), profileV(time.Second))
		v.ClientProfiles = map[string]*discovery.Profile{"dev": profileV(timeout)}
		return v
	}
	apply(t, s, "k", group("web", withClients(time.Minute)))
	st := s.Snapshot().Service(nil, auth("web.demo:80"))
	if !st.Profile.Equal(profileV(time.Second)) || len(st.ClientProfiles) != 1 || !st.ClientProfiles["dev"].Equal(profileV(time.Minute)) {
		t.Fatalf("Service() = %+v", st)
	}
	ws := watch(s, "web.demo:80")
	if apply(t, s, "k", group("web", withClients(time.Minute))) {
		t.Fatal("equal client profiles reported a change")
	}
	if !apply(t, s, "k", group("web", withClients(time.Hour))) || !watchFired(ws) {
		t.Fatal("a changed client profile was not a change")
	}
	empty := withProfile(svc("web.demo:80"), profileV(time.Second))
	empty.ClientProfiles = map[string]*discovery.Profile{}
	if !apply(t, s, "k", group("web", empty)) {
		t.Fatal("dropping the client profiles reported no change")
	}
	if st := s.Snapshot().Service(nil, auth("web.demo:80")); st.ClientProfiles != nil {
		t.Fatalf("an empty map is held: %+v", st.ClientProfiles)
	}
	if apply(t, s, "k", group("web", withProfile(svc("web.demo:80"), profileV(time.Second)))) {
		t.Fatal("nil vs empty client profiles reported a change")
	}
	for _, bad := range []map[string]*discovery.Profile{{"": profileV(time.Second)}, {"dev": nil}, {"dev": {Routes: []discovery.Route{{Name: "x"}}}}} {
		v := svc("web.demo:80")
		v.ClientProfiles = bad
		if _, err := s.Apply("k", []discovery.Group{group("web", v)}); !errors.Is(err, ErrInvalid) {
			t.Errorf("client profiles %v: Apply: %v, want ErrInvalid", bad, err)
		}
	}
}
