package destination

import (
	"context"
	"net/netip"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	httppb "github.com/linkerd/linkerd2-proxy-api/go/http_types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/discovery"
)

// A declared profile on the wire, rule by rule as Linkerd's
// profile_translator.go writes a ServiceProfile.
func TestApplyProfile(t *testing.T) {
	get := &pb.RequestMatch{Match: &pb.RequestMatch_Method{Method: &httppb.HttpMethod{Type: &httppb.HttpMethod_Registered_{Registered: httppb.HttpMethod_GET}}}}
	path := func(re string) *pb.RequestMatch {
		return &pb.RequestMatch{Match: &pb.RequestMatch_Path{Path: &pb.PathMatch{Regex: re}}}
	}
	status := func(lo, hi uint32) *pb.ResponseMatch {
		return &pb.ResponseMatch{Match: &pb.ResponseMatch_Status{Status: &pb.HttpStatusRange{Min: lo, Max: hi}}}
	}
	base := func() *pb.DestinationProfile {
		return &pb.DestinationProfile{FullyQualifiedName: "web.prod.svc.cluster.local", RetryBudget: defaultRetryBudget()}
	}
	for _, c := range []struct {
		name string
		prof *discovery.Profile
		port uint16
		want *pb.DestinationProfile
	}{
		{"no profile: unchanged", nil, 80, base()},
		{"an empty profile: the default budget, no routes", &discovery.Profile{}, 80,
			&pb.DestinationProfile{FullyQualifiedName: "web.prod.svc.cluster.local", RetryBudget: defaultRetryBudget()}},
		{"one kind is not wrapped; method by number, in any case", &discovery.Profile{Routes: []discovery.Route{
			{Name: "GET /books", Condition: discovery.RequestMatch{Method: "get"}, IsRetryable: true, Timeout: 300 * time.Millisecond},
		}}, 80, &pb.DestinationProfile{FullyQualifiedName: "web.prod.svc.cluster.local", RetryBudget: defaultRetryBudget(),
			Routes: []*pb.Route{{Condition: get, MetricsLabels: map[string]string{"route": "GET /books"}, IsRetryable: true,
				Timeout: durationpb.New(300 * time.Millisecond)}}}},
		{"several kinds: all of them, in Linkerd's order; an unregistered method upper-cased", &discovery.Profile{Routes: []discovery.Route{{
			Name: "r",
			Condition: discovery.RequestMatch{
				PathRegex: "/books/\\d+", Method: "purge", Not: &discovery.RequestMatch{Method: "GET"},
				Any: []discovery.RequestMatch{{PathRegex: "/a"}, {PathRegex: "/b"}}, All: []discovery.RequestMatch{},
			},
			ResponseClasses: []discovery.ResponseClass{
				{Condition: discovery.ResponseMatch{Status: &discovery.StatusRange{Min: 500, Max: 599}}, IsFailure: true},
				{Condition: discovery.ResponseMatch{Not: &discovery.ResponseMatch{Status: &discovery.StatusRange{Min: 200}}, Any: []discovery.ResponseMatch{{Status: &discovery.StatusRange{Max: 404}}}}},
			},
		}}}, 80, &pb.DestinationProfile{FullyQualifiedName: "web.prod.svc.cluster.local", RetryBudget: defaultRetryBudget(),
			Routes: []*pb.Route{{
				Condition: &pb.RequestMatch{Match: &pb.RequestMatch_All{All: &pb.RequestMatch_Seq{Matches: []*pb.RequestMatch{
					{Match: &pb.RequestMatch_All{All: &pb.RequestMatch_Seq{}}},
					{Match: &pb.RequestMatch_Any{Any: &pb.RequestMatch_Seq{Matches: []*pb.RequestMatch{path("/a"), path("/b")}}}},
					{Match: &pb.RequestMatch_Method{Method: &httppb.HttpMethod{Type: &httppb.HttpMethod_Unregistered{Unregistered: "PURGE"}}}},
					{Match: &pb.RequestMatch_Not{Not: get}},
					path("/books/\\d+"),
				}}}},
				ResponseClasses: []*pb.ResponseClass{
					{Condition: status(500, 599), IsFailure: true},
					{Condition: &pb.ResponseMatch{Match: &pb.ResponseMatch_All{All: &pb.ResponseMatch_Seq{Matches: []*pb.ResponseMatch{
						{Match: &pb.ResponseMatch_Any{Any: &pb.ResponseMatch_Seq{Matches: []*pb.ResponseMatch{status(0, 404)}}}},
						{Match: &pb.ResponseMatch_Not{Not: status(200, 0)}},
					}}}}},
				},
				MetricsLabels: map[string]string{"route": "r"},
			}}}},
		{"a retry budget replaces the default, a zero TTL left unset", &discovery.Profile{RetryBudget: &discovery.RetryBudget{RetryRatio: 0.5, MinRetriesPerSecond: 3}}, 80,
			&pb.DestinationProfile{FullyQualifiedName: "web.prod.svc.cluster.local", RetryBudget: &pb.RetryBudget{RetryRatio: 0.5, MinRetriesPerSecond: 3}}},
		{"traffic split: the requested port where the authority has none", &discovery.Profile{
			RetryBudget: &discovery.RetryBudget{RetryRatio: 0.1, MinRetriesPerSecond: 5, TTL: time.Minute},
			DstOverrides: []discovery.WeightedDst{
				{Authority: "web-v2.prod.svc.cluster.local", Weight: 9000},
				{Authority: "web-v1.prod.svc.cluster.local:8080", Weight: 1000},
				{Authority: "fd00::1", Weight: 10000},
			}}, 443,
			&pb.DestinationProfile{FullyQualifiedName: "web.prod.svc.cluster.local",
				RetryBudget: &pb.RetryBudget{RetryRatio: 0.1, MinRetriesPerSecond: 5, Ttl: durationpb.New(time.Minute)},
				DstOverrides: []*pb.WeightedDst{
					{Authority: "web-v2.prod.svc.cluster.local:443", Weight: 9000},
					{Authority: "web-v1.prod.svc.cluster.local:8080", Weight: 1000},
					{Authority: "[fd00::1]:443", Weight: 10000},
				}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.prof != nil {
				if err := c.prof.Validate(); err != nil {
					t.Fatalf("Validate: %v", err)
				}
			}
			got := base()
			applyProfile(got, c.prof, c.port)
			if !proto.Equal(got, c.want) {
				t.Errorf("got  %v\nwant %v", got, c.want)
			}
			if _, err := proto.Marshal(got); err != nil {
				t.Error(err)
			}
		})
	}
}

// The profiles Linkerd's controller refuses to send.
func TestProfileValidate(t *testing.T) {
	route := func(r discovery.Route) *discovery.Profile { return &discovery.Profile{Routes: []discovery.Route{r}} }
	class := func(m discovery.ResponseMatch) *discovery.Profile {
		return route(discovery.Route{Condition: discovery.RequestMatch{Method: "GET"}, ResponseClasses: []discovery.ResponseClass{{Condition: m}}})
	}
	for name, p := range map[string]*discovery.Profile{
		"a route without a condition":        route(discovery.Route{Name: "r"}),
		"a nested request match without one": route(discovery.Route{Condition: discovery.RequestMatch{Any: []discovery.RequestMatch{{}}}}),
		"a negated empty request match":      route(discovery.Route{Condition: discovery.RequestMatch{Not: &discovery.RequestMatch{}}}),
		"a response class without one":       class(discovery.ResponseMatch{}),
		"a status below 100":                 class(discovery.ResponseMatch{Status: &discovery.StatusRange{Min: 99}}),
		"a status above 599":                 class(discovery.ResponseMatch{Status: &discovery.StatusRange{Max: 600}}),
		"an inverted status range":           class(discovery.ResponseMatch{Status: &discovery.StatusRange{Min: 500, Max: 400}}),
		"a nested empty response match":      class(discovery.ResponseMatch{All: []discovery.ResponseMatch{{}}}),
		"a negative timeout":                 route(discovery.Route{Condition: discovery.RequestMatch{Method: "GET"}, Timeout: -1}),
		"a negative TTL":                     {RetryBudget: &discovery.RetryBudget{TTL: -time.Second}},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
	ok := class(discovery.ResponseMatch{Status: &discovery.StatusRange{Min: 500}, All: []discovery.ResponseMatch{}})
	if err := ok.Validate(); err != nil {
		t.Errorf("an open-ended range and an empty all: %v", err)
	}
}

// GetProfile serves the profile the registry holds for the service, by
// name and by virtual IP, and a new one when it changes or goes.
func TestGetProfileServesDeclaredRoutes(t *testing.T) {
	vip := netip.MustParseAddr("240.0.0.9")
	vips := &fakeVIPs{hosts: map[netip.Addr]string{vip: "web.demo"}, changed: make(chan struct{})}
	h := newHarness(t, Options{VirtualIPs: []VirtualIPs{vips}})
	decl := func(timeout time.Duration) discovery.Group {
		g := group("f", "web.demo", 8080, "10.0.0.1:8080")
		g.Services[0].Profile = &discovery.Profile{
			Routes:       []discovery.Route{{Name: "books", Condition: discovery.RequestMatch{PathRegex: "/books"}, IsRetryable: true, Timeout: timeout}},
			RetryBudget:  &discovery.RetryBudget{RetryRatio: 0.5, MinRetriesPerSecond: 3, TTL: time.Minute},
			DstOverrides: []discovery.WeightedDst{{Authority: "web-v2.demo", Weight: 10000}},
		}
		return g
	}
	h.apply("p", decl(time.Second))

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var streams []pb.Destination_GetProfileClient
	for _, path := range []string{"web.demo:8080", "240.0.0.9:8080"} {
		st, err := h.client.GetProfile(ctx, &pb.GetDestination{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	for i, st := range streams {
		p, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		r := p.GetRoutes()
		if p.GetFullyQualifiedName() != "web.demo" || len(r) != 1 || !r[0].GetIsRetryable() ||
			r[0].GetTimeout().AsDuration() != time.Second || r[0].GetCondition().GetPath().GetRegex() != "/books" ||
			p.GetRetryBudget().GetRetryRatio() != 0.5 || len(p.GetDstOverrides()) != 1 ||
			p.GetDstOverrides()[0].GetAuthority() != "web-v2.demo:8080" {
			t.Fatalf("stream %d: %v", i, p)
		}
	}
	h.apply("p", decl(2*time.Second))
	for i, st := range streams {
		if p, err := st.Recv(); err != nil || p.GetRoutes()[0].GetTimeout().AsDuration() != 2*time.Second {
			t.Fatalf("stream %d after the change: %v %v", i, p, err)
		}
	}
	h.apply("p", group("f", "web.demo", 8080, "10.0.0.1:8080"))
	for i, st := range streams {
		p, err := st.Recv()
		if err != nil || len(p.GetRoutes()) != 0 || len(p.GetDstOverrides()) != 0 ||
			p.GetRetryBudget().GetRetryRatio() != 0.2 || p.GetFullyQualifiedName() != "web.demo" {
			t.Fatalf("stream %d after removal: %v %v", i, p, err)
		}
	}
}

// A client whose namespace has its own profile for the service gets it;
// others get the service's, as Linkerd prefers the client's namespace.
func TestGetProfilePrefersClientNamespace(t *testing.T) {
	h := newHarness(t, Options{})
	g := group("f", "web.demo", 8080, "10.0.0.1:8080")
	route := func(name string) []discovery.Route {
		return []discovery.Route{{Name: name, Condition: discovery.RequestMatch{Method: "GET"}}}
	}
	g.Services[0].Profile = &discovery.Profile{Routes: route("own")}
	g.Services[0].ClientProfiles = map[string]*discovery.Profile{"dev": {Routes: route("dev's")}}
	h.apply("p", g)

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for token, want := range map[string]string{`{"ns":"dev"}`: "dev's", `{"ns":"prod"}`: "own", "": "own"} {
		st, err := h.client.GetProfile(ctx, &pb.GetDestination{Path: "web.demo:8080", ContextToken: token})
		if err != nil {
			t.Fatal(err)
		}
		p, err := st.Recv()
		if err != nil || len(p.GetRoutes()) != 1 || p.GetRoutes()[0].GetMetricsLabels()["route"] != want {
			t.Errorf("token %q: %v %v, want route %q", token, p, err, want)
		}
	}
}
