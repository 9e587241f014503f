package destination

import (
	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
)

// serviceDesc describes the Destination service to gRPC as the generated
// code does (same service, methods and proto file), with handlers of our
// own that read the request on a short-lived goroutine.
//
// Why: an open stream costs mostly its handler goroutine's stack, and Go
// never gives back stack that a goroutine has grown into while it stays
// deep: a stack is halved only when less than a quarter of it is in use,
// and gRPC's frames under a handler already use more than a quarter of
// 4 KiB. Two kinds of call on a stream's goroutine go deep enough to
// double its stack from 4 to 8 KiB for good: the generated handler's read
// of the request (its wait for the DATA frame sits about 3 KiB deep in
// gRPC's reader) and every send (gRPC's SendMsg). Both run on goroutines of
// their own (onFreshStack), whose stacks are freed when they return, and
// Get keeps its own frames small. Measured with bin/tributary-bench steady:
// 14.1 -> 9.5 KiB per idle stream and RSS after the churn 255 -> 209 MiB
// (W=10k); goroutine stacks after the churn 49 -> 23 MiB (--streams 5000
// --services 50).
func (s *Server) serviceDesc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "io.linkerd.proxy.destination.Destination",
		HandlerType: (*pb.DestinationServer)(nil),
		Streams: []grpc.StreamDesc{
			{StreamName: "Get", ServerStreams: true, Handler: streamHandler(s.Get)},
			{StreamName: "GetProfile", ServerStreams: true, Handler: streamHandler(s.GetProfile)},
		},
		Metadata: "destination.proto",
	}
}

// streamHandler adapts a server-streaming method to gRPC: it reads the
// request (recvRequest) and hands the method the typed stream.
func streamHandler[Res any](method func(*pb.GetDestination, grpc.ServerStreamingServer[Res]) error) grpc.StreamHandler {
	return func(_ any, st grpc.ServerStream) error {
		req, err := recvRequest(st)
		if err != nil {
			return err
		}
		return method(req, &grpc.GenericServerStream[pb.GetDestination, Res]{ServerStream: st})
	}
}

// recvRequest reads a stream's request on a goroutine of its own (see
// serviceDesc). RecvMsg returns when the request arrives or the stream
// ends.
func recvRequest(st grpc.ServerStream) (*pb.GetDestination, error) {
	req := new(pb.GetDestination)
	return req, onFreshStack(func() error { return st.RecvMsg(req) })
}

// onFreshStack runs f on a new goroutine and waits for it: whatever stack f
// grows is freed when it returns instead of staying with the caller.
func onFreshStack(f func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	return <-errc
}
