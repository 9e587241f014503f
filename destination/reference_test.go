package destination

import (
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	pbnet "github.com/linkerd/linkerd2-proxy-api/go/net"
)

// diff returns the updates that take a client holding prev (nil: nothing
// sent yet) to cur, by the wire contract's rules (see delta), as protobuf
// structs built from changes(prev, cur). The hub sends the same updates
// encoded directly (encodeDiff); this form is the reference the tests hold
// it to.
func diff(prev, cur *view, clientZone string) []*pb.Update {
	c := changes(prev, cur)
	switch {
	case c.none:
		return nil
	case c.noEndpoints:
		return []*pb.Update{noEndpoints(cur.exists)}
	}
	var out []*pb.Update
	if len(c.add) > 0 {
		add := make([]*pb.WeightedAddr, len(c.add))
		for i, e := range c.add {
			add[i] = weightedAddr(e, clientZone)
		}
		out = append(out, &pb.Update{Update: &pb.Update_Add{Add: &pb.WeightedAddrSet{Addrs: add}}})
	}
	if len(c.remove) > 0 {
		remove := make([]*pbnet.TcpAddress, len(c.remove))
		for i, a := range c.remove {
			remove[i] = tcpAddress(a)
		}
		out = append(out, &pb.Update{Update: &pb.Update_Remove{Remove: &pb.AddrSet{Addrs: remove}}})
	}
	return out
}

// translator applies diff to successive views of one stream; the tests use
// it to drive the contract step by step.
type translator struct {
	clientZone string
	last       *view
}

func newTranslator(clientZone string) *translator { return &translator{clientZone: clientZone} }

func (t *translator) next(v view) []*pb.Update {
	out := diff(t.last, &v, t.clientZone)
	t.last = &v
	return out
}

func noEndpoints(exists bool) *pb.Update {
	return &pb.Update{Update: &pb.Update_NoEndpoints{NoEndpoints: &pb.NoEndpoints{Exists: exists}}}
}
