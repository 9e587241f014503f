package destination

import (
	"net"
	"strconv"
	"strings"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	httppb "github.com/linkerd/linkerd2-proxy-api/go/http_types"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/discovery"
)

// The wire form of a declared profile (discovery.Profile), field by field
// as Linkerd's controller writes a ServiceProfile
// (controller/api/destination/profile_translator.go): each route's
// condition with several kinds set becomes an `all` of them in the order
// all, any, method, not, path (one kind alone is not wrapped); its
// metrics_labels are {route: name}; a retry budget replaces the default
// field by field, its TTL left unset when zero; a traffic-split authority
// without a port gets the requested one.
//
// GetProfile calls it for a service's authority and for a virtual IP's
// service (serviceProfile), with the profile the registry holds for the
// service (cache.ServiceState.Profile).

// applyProfile adds prof's routes, retry budget and traffic split for port
// to p.
func applyProfile(p *pb.DestinationProfile, prof *discovery.Profile, port uint16) {
	if prof == nil {
		return
	}
	p.Routes = make([]*pb.Route, 0, len(prof.Routes))
	for i := range prof.Routes {
		p.Routes = append(p.Routes, routeProto(&prof.Routes[i]))
	}
	p.RetryBudget = defaultRetryBudget()
	if b := prof.RetryBudget; b != nil {
		p.RetryBudget = &pb.RetryBudget{RetryRatio: b.RetryRatio, MinRetriesPerSecond: b.MinRetriesPerSecond, Ttl: durationProto(b.TTL)}
	}
	p.DstOverrides = make([]*pb.WeightedDst, 0, len(prof.DstOverrides))
	for _, d := range prof.DstOverrides {
		auth := d.Authority
		if _, _, err := net.SplitHostPort(auth); err != nil {
			auth = net.JoinHostPort(auth, strconv.Itoa(int(port)))
		}
		p.DstOverrides = append(p.DstOverrides, &pb.WeightedDst{Authority: auth, Weight: d.Weight})
	}
}

// durationProto is nil for 0, as Linkerd's toDuration.
func durationProto(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func routeProto(r *discovery.Route) *pb.Route {
	out := &pb.Route{
		Condition:       requestMatchProto(&r.Condition),
		ResponseClasses: make([]*pb.ResponseClass, 0, len(r.ResponseClasses)),
		MetricsLabels:   map[string]string{"route": r.Name},
		IsRetryable:     r.IsRetryable,
		Timeout:         durationProto(r.Timeout),
	}
	for i := range r.ResponseClasses {
		rc := &r.ResponseClasses[i]
		out.ResponseClasses = append(out.ResponseClasses, &pb.ResponseClass{Condition: responseMatchProto(&rc.Condition), IsFailure: rc.IsFailure})
	}
	return out
}

func requestMatchProto(m *discovery.RequestMatch) *pb.RequestMatch {
	var matches []*pb.RequestMatch
	seq := func(ms []discovery.RequestMatch) *pb.RequestMatch_Seq {
		s := &pb.RequestMatch_Seq{Matches: make([]*pb.RequestMatch, 0, len(ms))}
		for i := range ms {
			s.Matches = append(s.Matches, requestMatchProto(&ms[i]))
		}
		return s
	}
	if m.All != nil {
		matches = append(matches, &pb.RequestMatch{Match: &pb.RequestMatch_All{All: seq(m.All)}})
	}
	if m.Any != nil {
		matches = append(matches, &pb.RequestMatch{Match: &pb.RequestMatch_Any{Any: seq(m.Any)}})
	}
	if m.Method != "" {
		matches = append(matches, &pb.RequestMatch{Match: &pb.RequestMatch_Method{Method: methodProto(m.Method)}})
	}
	if m.Not != nil {
		matches = append(matches, &pb.RequestMatch{Match: &pb.RequestMatch_Not{Not: requestMatchProto(m.Not)}})
	}
	if m.PathRegex != "" {
		matches = append(matches, &pb.RequestMatch{Match: &pb.RequestMatch_Path{Path: &pb.PathMatch{Regex: m.PathRegex}}})
	}
	if len(matches) == 1 {
		return matches[0]
	}
	return &pb.RequestMatch{Match: &pb.RequestMatch_All{All: &pb.RequestMatch_Seq{Matches: matches}}}
}

func responseMatchProto(m *discovery.ResponseMatch) *pb.ResponseMatch {
	var matches []*pb.ResponseMatch
	seq := func(ms []discovery.ResponseMatch) *pb.ResponseMatch_Seq {
		s := &pb.ResponseMatch_Seq{Matches: make([]*pb.ResponseMatch, 0, len(ms))}
		for i := range ms {
			s.Matches = append(s.Matches, responseMatchProto(&ms[i]))
		}
		return s
	}
	if m.All != nil {
		matches = append(matches, &pb.ResponseMatch{Match: &pb.ResponseMatch_All{All: seq(m.All)}})
	}
	if m.Any != nil {
		matches = append(matches, &pb.ResponseMatch{Match: &pb.ResponseMatch_Any{Any: seq(m.Any)}})
	}
	if s := m.Status; s != nil {
		matches = append(matches, &pb.ResponseMatch{Match: &pb.ResponseMatch_Status{Status: &pb.HttpStatusRange{Min: s.Min, Max: s.Max}}})
	}
	if m.Not != nil {
		matches = append(matches, &pb.ResponseMatch{Match: &pb.ResponseMatch_Not{Not: responseMatchProto(m.Not)}})
	}
	if len(matches) == 1 {
		return matches[0]
	}
	return &pb.ResponseMatch{Match: &pb.ResponseMatch_All{All: &pb.ResponseMatch_Seq{Matches: matches}}}
}

// methodProto is a registered method by its number, any other in upper
// case, as Linkerd's util.ParseMethod.
func methodProto(method string) *httppb.HttpMethod {
	up := strings.ToUpper(method)
	if v, ok := httppb.HttpMethod_Registered_value[up]; ok {
		return &httppb.HttpMethod{Type: &httppb.HttpMethod_Registered_{Registered: httppb.HttpMethod_Registered(v)}}
	}
	return &httppb.HttpMethod{Type: &httppb.HttpMethod_Unregistered{Unregistered: up}}
}
