// Package registration is the edge that serves the registration API
// (proto/tributary/registration/v1): workloads register endpoints, keep
// their leases alive, and deregister. It writes into a register source
// (sources/register), which holds the registrations and hands them to the
// registry like any source — this edge is the one that writes, not reads,
// and so depends on that source's package rather than on the cache.
//
// Who may call: the tlsauth guard's access list for the registration API
// comes first (with mTLS). Then, with mTLS, the caller may register only
// endpoints whose identity is its own SPIFFE ID (or none), under the
// authorities the source's allow rules give its ID. Without mTLS the API
// is off unless the caller's address is in the source's
// insecure_networks; such a caller is trusted with any authority and
// identity.
//
// Errors: INVALID_ARGUMENT for bad input, PERMISSION_DENIED for a
// registration the caller may not make, NOT_FOUND for a Deregister of an
// unknown lease, UNAVAILABLE when the backend (etcd) cannot be reached;
// each message says what is wrong.
package registration

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/discovery"
	pb "github.com/tributary-mesh/tributary/proto/tributary/registration/v1"
	"github.com/tributary-mesh/tributary/sources/register"
)

// Registry is what the API writes to: a *register.Source.
type Registry interface {
	Name() string
	Register(ctx context.Context, r register.Registration) (register.Lease, error)
	KeepAlive(ctx context.Context, id string) (time.Duration, error)
	Deregister(ctx context.Context, id string) error
	List(ctx context.Context) ([]register.Lease, error)
	Lease(ctx context.Context, id string) (register.Lease, error)
	Policy() register.Policy
}

var _ Registry = (*register.Source)(nil)

// Server implements pb.RegistrationServer.
type Server struct {
	pb.UnimplementedRegistrationServer
	reg Registry
	log *slog.Logger
}

// New returns the API over reg. log may be nil.
func New(reg Registry, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{reg: reg, log: log}
}

// Attach registers the service on a gRPC server.
func (s *Server) Attach(g *grpc.Server) { pb.RegisterRegistrationServer(g, s) }

// caller is who is calling.
type caller struct {
	id   string // SPIFFE ID with mTLS, else ""
	name string // id, or the peer's IP address
}

// who identifies the caller and refuses one the API is off for.
func (s *Server) who(ctx context.Context) (caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return caller{}, status.Error(codes.PermissionDenied, "the registration API cannot tell who is calling")
	}
	if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
		id, err := x509svid.IDFromCert(info.State.PeerCertificates[0])
		if err != nil {
			return caller{}, status.Errorf(codes.PermissionDenied, "the registration API needs an X.509-SVID: %v", err)
		}
		return caller{id: id.String(), name: id.String()}, nil
	}
	addr := addrOf(p.Addr)
	if !addr.IsValid() || !s.reg.Policy().InNetworks(addr) {
		return caller{}, status.Errorf(codes.PermissionDenied,
			"the registration API is off without mTLS for %s: list its network in the %s source's insecure_networks, or call with mTLS", p.Addr, s.reg.Name())
	}
	return caller{name: addr.String()}, nil
}

func addrOf(a net.Addr) netip.Addr {
	if tcp, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(tcp.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

var protocols = map[pb.Protocol]discovery.Protocol{
	pb.Protocol_PROTOCOL_UNSPECIFIED: discovery.ProtocolUnknown,
	pb.Protocol_PROTOCOL_H2:          discovery.ProtocolH2,
	pb.Protocol_PROTOCOL_OPAQUE:      discovery.ProtocolOpaque,
}

// registration reads a request; its errors are InvalidArgument.
func registration(req *pb.RegisterRequest) (register.Registration, error) {
	var r register.Registration
	ep := req.GetEndpoint()
	if ep == nil {
		return r, invalid("endpoint is required")
	}
	if ep.GetAuthority() == "" {
		return r, invalid("endpoint.authority is required (host:port, such as web.vm.internal:8080)")
	}
	a, err := discovery.ParseAuthority(ep.GetAuthority(), 0)
	if err != nil {
		return r, invalid("endpoint.authority: %v", err)
	}
	if a.Port == 0 {
		return r, invalid("endpoint.authority %q: a port is required", ep.GetAuthority())
	}
	ip, err := netip.ParseAddr(ep.GetAddress())
	if err != nil {
		return r, invalid("endpoint.address %q is not an IP address", ep.GetAddress())
	}
	if ep.GetPort() == 0 || ep.GetPort() > 65535 {
		return r, invalid("endpoint.port %d: want 1 to 65535", ep.GetPort())
	}
	id, err := discovery.ParseIdentity(ep.GetIdentity(), ep.GetServerName())
	if err != nil {
		return r, invalid("endpoint.identity: %v", err)
	}
	proto, ok := protocols[ep.GetProtocol()]
	if !ok {
		return r, invalid("endpoint.protocol %d is not a known protocol", ep.GetProtocol())
	}
	if req.GetTtl() == nil {
		return r, invalid("ttl is required")
	}
	if err := req.GetTtl().CheckValid(); err != nil {
		return r, invalid("ttl: %v", err)
	}
	r.Authority = a
	r.Endpoint = discovery.Endpoint{
		Addr: netip.AddrPortFrom(ip.Unmap(), uint16(ep.GetPort())), Weight: ep.GetWeight(), Zone: ep.GetZone(),
		Identity: id, Protocol: proto,
	}
	if len(ep.GetLabels()) > 0 {
		r.Endpoint.Labels = maps.Clone(ep.GetLabels())
	}
	r.TTL = req.GetTtl().AsDuration()
	return r, nil
}

// backendError maps a registry error to a status.
func backendError(err error) error {
	switch {
	case errors.Is(err, register.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, register.ErrUnknownLease):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, register.ErrTaken):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	default:
		return status.Error(codes.Unavailable, err.Error())
	}
}

// Register implements pb.RegistrationServer.
func (s *Server) Register(ctx context.Context, req *pb.RegisterRequest) (*pb.RegisterResponse, error) {
	c, err := s.who(ctx)
	if err != nil {
		return nil, err
	}
	r, err := registration(req)
	if err != nil {
		return nil, err
	}
	if c.id != "" {
		if id := r.Endpoint.Identity.Name; id != "" && id != c.id {
			return nil, status.Errorf(codes.PermissionDenied, "%s may not register an endpoint with identity %s: only its own", c.id, id)
		}
		if !s.reg.Policy().AuthorityAllowed(c.id, r.Authority.String()) {
			return nil, status.Errorf(codes.PermissionDenied, "%s may not register under %s: no allow rule of the %s source gives it that authority", c.id, r.Authority, s.reg.Name())
		}
	}
	r.By, r.Exclusive = c.name, c.id != ""
	l, err := s.reg.Register(ctx, r)
	if err != nil {
		return nil, backendError(err)
	}
	s.log.Info("registered", "authority", r.Authority.String(), "address", r.Endpoint.Addr.String(), "ttl", l.TTL, "by", c.name, "lease", l.ID)
	return &pb.RegisterResponse{LeaseId: l.ID, Ttl: durationpb.New(l.TTL)}, nil
}

// KeepAlive implements pb.RegistrationServer.
func (s *Server) KeepAlive(stream pb.Registration_KeepAliveServer) error {
	c, err := s.who(stream.Context())
	if err != nil {
		return err
	}
	owned := map[string]bool{} // leases this stream has shown to be the caller's
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if req.GetLeaseId() == "" {
			return invalid("lease_id is required")
		}
		resp := &pb.KeepAliveResponse{LeaseId: req.GetLeaseId()}
		if c.id != "" && !owned[req.GetLeaseId()] {
			if err := s.own(stream.Context(), c, req.GetLeaseId()); err != nil && !errors.Is(err, register.ErrUnknownLease) {
				return err
			}
			owned[req.GetLeaseId()] = true
		}
		ttl, err := s.reg.KeepAlive(stream.Context(), req.GetLeaseId())
		switch {
		case errors.Is(err, register.ErrUnknownLease):
			resp.Unknown = true
		case err != nil:
			return backendError(err)
		default:
			resp.Ttl = durationpb.New(ttl)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// Deregister implements pb.RegistrationServer.
func (s *Server) Deregister(ctx context.Context, req *pb.DeregisterRequest) (*pb.DeregisterResponse, error) {
	c, err := s.who(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetLeaseId() == "" {
		return nil, invalid("lease_id is required")
	}
	if c.id != "" {
		if err := s.own(ctx, c, req.GetLeaseId()); err != nil {
			if errors.Is(err, register.ErrUnknownLease) {
				return nil, status.Errorf(codes.NotFound, "lease %s: %v", req.GetLeaseId(), err)
			}
			return nil, err
		}
	}
	if err := s.reg.Deregister(ctx, req.GetLeaseId()); err != nil {
		if errors.Is(err, register.ErrUnknownLease) {
			return nil, status.Errorf(codes.NotFound, "lease %s: %v", req.GetLeaseId(), err)
		}
		return nil, backendError(err)
	}
	s.log.Info("deregistered", "lease", req.GetLeaseId(), "by", c.name)
	return &pb.DeregisterResponse{}, nil
}

// own checks that an mTLS caller registered the lease it names: a
// workload renews and ends only its own registrations. It returns
// register.ErrUnknownLease as is, and PermissionDenied for another's lease.
func (s *Server) own(ctx context.Context, c caller, id string) error {
	l, err := s.reg.Lease(ctx, id)
	switch {
	case errors.Is(err, register.ErrUnknownLease):
		return err
	case err != nil:
		return backendError(err)
	case l.By != c.id:
		return status.Errorf(codes.PermissionDenied, "lease %s was registered by %s, not %s", id, l.By, c.id)
	}
	return nil
}

// List implements pb.RegistrationServer.
func (s *Server) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	if _, err := s.who(ctx); err != nil {
		return nil, err
	}
	var only *discovery.Authority
	if req.GetAuthority() != "" {
		a, err := discovery.ParseAuthority(req.GetAuthority(), 0)
		if err != nil {
			return nil, invalid("authority: %v", err)
		}
		only = &a
	}
	ls, err := s.reg.List(ctx)
	if err != nil {
		return nil, backendError(err)
	}
	resp := &pb.ListResponse{}
	for _, l := range ls {
		if only != nil && l.Authority != *only {
			continue
		}
		resp.Leases = append(resp.Leases, toPB(l))
	}
	return resp, nil
}

func toPB(l register.Lease) *pb.Lease {
	e := l.Endpoint
	var proto pb.Protocol
	for k, v := range protocols {
		if v == e.Protocol {
			proto = k
		}
	}
	return &pb.Lease{
		LeaseId: l.ID,
		Endpoint: &pb.Endpoint{
			Authority: l.Authority.String(), Address: e.Addr.Addr().String(), Port: uint32(e.Addr.Port()),
			Zone: e.Zone, Weight: e.Weight, Labels: e.Labels, Identity: e.Identity.Name, ServerName: e.Identity.ServerName,
			Protocol: proto,
		},
		Ttl:          durationpb.New(l.TTL),
		RegisteredBy: l.By,
	}
}
