package discovery

import (
	"errors"
	"fmt"
	"reflect"
	"time"
)

// Profile is what a service declares about its HTTP requests, as Linkerd's
// ServiceProfile (linkerd.io/v1alpha2) does: named routes with their
// retry and timeout policy, a retry budget, and traffic-split overrides.
// GetProfile sends it (destination/profile.go) as Linkerd's controller
// does (controller/api/destination/profile_translator.go).
//
// A source hands one over as Service.Profile; the registry keeps it with
// the service row, rewriting the row only when the profile is not Equal
// to the one it holds. Like an Endpoint, a Profile is immutable once
// handed over.
type Profile struct {
	Routes []Route
	// RetryBudget replaces Linkerd's default (0.2, 10/s, 10 s) when set.
	RetryBudget *RetryBudget
	// DstOverrides split the service's traffic among other authorities.
	DstOverrides []WeightedDst
}

// Route is one named class of requests.
type Route struct {
	Name            string // the proxy's route metric label
	Condition       RequestMatch
	ResponseClasses []ResponseClass
	IsRetryable     bool
	Timeout         time.Duration // 0: none
}

// RequestMatch matches a request when every kind it sets matches. All and
// Any are set when not nil — an empty list counts as set, as in Linkerd.
type RequestMatch struct {
	All       []RequestMatch
	Any       []RequestMatch
	Method    string // any case; registered methods are sent by their number
	Not       *RequestMatch
	PathRegex string
}

// ResponseClass says whether responses that match are failures.
type ResponseClass struct {
	Condition ResponseMatch
	IsFailure bool
}

// ResponseMatch matches a response when every kind it sets matches; All
// and Any as in RequestMatch.
type ResponseMatch struct {
	All    []ResponseMatch
	Any    []ResponseMatch
	Status *StatusRange
	Not    *ResponseMatch
}

// StatusRange is an inclusive HTTP status range; 0 leaves a bound open.
type StatusRange struct {
	Min, Max uint32
}

// RetryBudget bounds retries: RetryRatio extra requests, at least
// MinRetriesPerSecond, over a TTL window.
type RetryBudget struct {
	RetryRatio          float32
	MinRetriesPerSecond uint32
	TTL                 time.Duration
}

// WeightedDst is a traffic-split target. An authority without a port gets
// the requested port. Weight is in the proto's unit: 10000 is a
// ServiceProfile weight of 1 (Linkerd sends the weight's milli-value × 10).
type WeightedDst struct {
	Authority string
	Weight    uint32
}

// Equal reports whether p and o declare the same thing; nil equals only
// nil. A nil list and an empty one differ, as they do on the wire (an
// empty all or any is still set).
func (p *Profile) Equal(o *Profile) bool {
	if p == o {
		return true
	}
	if p == nil || o == nil {
		return false
	}
	return reflect.DeepEqual(p, o)
}

// SameProfiles reports whether two maps of client profiles are Equal key
// by key; nil equals empty.
func SameProfiles(a, b map[string]*Profile) bool {
	if len(a) != len(b) {
		return false
	}
	for k, p := range a {
		q, ok := b[k]
		if !ok || !p.Equal(q) {
			return false
		}
	}
	return true
}

// ValidateProfiles applies the registry's rules to a service's profiles
// (see ValidateGroup): each Validate accepts, and a client profile is
// non-nil, under a non-empty namespace.
func (s *Service) ValidateProfiles() error {
	if s.Profile != nil {
		if err := s.Profile.Validate(); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	for ns, p := range s.ClientProfiles {
		if ns == "" || p == nil {
			return fmt.Errorf("client profile %q: a client profile needs a namespace and a profile", ns)
		}
		if err := p.Validate(); err != nil {
			return fmt.Errorf("client profile %q: %w", ns, err)
		}
	}
	return nil
}

// Validate applies the rules Linkerd's controller checks before it sends a
// profile (pkg/profiles ValidateRequestMatch and ValidateResponseMatch):
// every match sets some kind, status bounds lie in 100..599 and are
// ordered. Linkerd sends nothing for a profile that fails them; a source
// should reject it, with the error, instead of handing it over.
func (p *Profile) Validate() error {
	for i, r := range p.Routes {
		if err := r.Condition.validate(); err != nil {
			return fmt.Errorf("route %d (%q): condition: %w", i, r.Name, err)
		}
		for j, rc := range r.ResponseClasses {
			if err := rc.Condition.validate(); err != nil {
				return fmt.Errorf("route %d (%q): response class %d: %w", i, r.Name, j, err)
			}
		}
		if r.Timeout < 0 {
			return fmt.Errorf("route %d (%q): negative timeout", i, r.Name)
		}
	}
	if b := p.RetryBudget; b != nil && b.TTL < 0 {
		return errors.New("retry budget: negative ttl")
	}
	return nil
}

func (m *RequestMatch) validate() error {
	set := m.All != nil || m.Any != nil || m.Method != "" || m.Not != nil || m.PathRegex != ""
	if !set {
		return errors.New("a request match must set all, any, method, not or pathRegex")
	}
	for _, seq := range [][]RequestMatch{m.All, m.Any} {
		for i := range seq {
			if err := seq[i].validate(); err != nil {
				return err
			}
		}
	}
	if m.Not != nil {
		return m.Not.validate()
	}
	return nil
}

func (m *ResponseMatch) validate() error {
	set := m.All != nil || m.Any != nil || m.Status != nil || m.Not != nil
	if !set {
		return errors.New("a response match must set all, any, status or not")
	}
	for _, seq := range [][]ResponseMatch{m.All, m.Any} {
		for i := range seq {
			if err := seq[i].validate(); err != nil {
				return err
			}
		}
	}
	if s := m.Status; s != nil {
		for _, v := range []uint32{s.Min, s.Max} {
			if v != 0 && (v < 100 || v > 599) {
				return fmt.Errorf("status %d: must be between 100 and 599", v)
			}
		}
		if s.Min != 0 && s.Max != 0 && s.Max < s.Min {
			return fmt.Errorf("status range %d..%d: the maximum is below the minimum", s.Min, s.Max)
		}
	}
	if m.Not != nil {
		return m.Not.validate()
	}
	return nil
}
