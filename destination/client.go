package destination

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
)

// EndpointSet replays a Get stream the way a proxy does and checks the wire
// contract while it does: `tributary watch`, the tests and the benchmark
// use it to know what a client currently holds.
type EndpointSet struct {
	// Started: at least one message arrived.
	Started bool
	// Exists is what the last no_endpoints said; true once an add arrived.
	Exists bool
	Addrs  map[netip.AddrPort]*pb.WeightedAddr
}

// ErrContract is wrapped by the errors Apply returns for messages the
// destination contract forbids.
var ErrContract = errors.New("destination contract violated")

// Apply folds one update into the set. It returns an error wrapping
// ErrContract for an empty add or remove, a remove as the first message, or
// an address it cannot read.
func (s *EndpointSet) Apply(u *pb.Update) error {
	first := !s.Started
	s.Started = true
	if s.Addrs == nil {
		s.Addrs = map[netip.AddrPort]*pb.WeightedAddr{}
	}
	switch x := u.GetUpdate().(type) {
	case *pb.Update_Add:
		if len(x.Add.GetAddrs()) == 0 {
			return fmt.Errorf("%w: empty add", ErrContract)
		}
		s.Exists = true
		for _, wa := range x.Add.GetAddrs() {
			ap, ok := AddrPortFromTCP(wa.GetAddr())
			if !ok {
				return fmt.Errorf("%w: add with an unreadable address %v", ErrContract, wa.GetAddr())
			}
			s.Addrs[ap] = wa
		}
	case *pb.Update_Remove:
		if first {
			return fmt.Errorf("%w: remove as the first message", ErrContract)
		}
		if len(x.Remove.GetAddrs()) == 0 {
			return fmt.Errorf("%w: empty remove", ErrContract)
		}
		for _, a := range x.Remove.GetAddrs() {
			ap, ok := AddrPortFromTCP(a)
			if !ok {
				return fmt.Errorf("%w: remove with an unreadable address %v", ErrContract, a)
			}
			delete(s.Addrs, ap)
		}
	case *pb.Update_NoEndpoints:
		s.Exists = x.NoEndpoints.GetExists()
		clear(s.Addrs)
	default:
		return fmt.Errorf("%w: update with no content", ErrContract)
	}
	return nil
}

// Sorted returns the current addresses in order.
func (s *EndpointSet) Sorted() []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(s.Addrs))
	for ap := range s.Addrs {
		out = append(out, ap)
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out
}
