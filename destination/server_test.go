package destination

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-mesh/tributary/cache"
	"github.com/tributary-mesh/tributary/discovery"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor bounds every receive in these tests; it is a hang guard, not a
// latency assertion.
const waitFor = 5 * time.Second

type harness struct {
	t      *testing.T
	addr   string
	store  *cache.Store
	srv    *Server
	client pb.DestinationClient
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	if opts.Store == nil {
		opts.Store = cache.New()
	}
	srv := NewServer(opts)
	g := grpc.NewServer(ServerOptions()...)
	srv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(srv.Listener(ln)) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Drain()
		g.Stop()
		srv.Wait()
	})
	return &harness{t: t, addr: ln.Addr().String(), store: opts.Store, srv: srv, client: pb.NewDestinationClient(conn)}
}

func (h *harness) apply(provider string, groups ...discovery.Group) {
	h.t.Helper()
	if _, err := h.store.Apply(provider, groups); err != nil {
		h.t.Fatal(err)
	}
}

func group(key string, host string, port uint16, addrs ...string) discovery.Group {
	svc := discovery.Service{Authority: discovery.Authority{Host: host, Port: port}}
	for _, a := range addrs {
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{Addr: netip.MustParseAddrPort(a)})
	}
	return discovery.Group{Key: key, Services: []discovery.Service{svc}}
}

type stream struct {
	t       *testing.T
	updates chan *pb.Update
	errc    chan error
	cancel  context.CancelFunc
}

func (h *harness) get(path, token string) *stream {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{t: h.t, updates: make(chan *pb.Update, 100), errc: make(chan error, 1), cancel: cancel}
	st, err := h.client.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: path, ContextToken: token})
	if err != nil {
		h.t.Fatal(err)
	}
	go func() {
		for {
			u, err := st.Recv()
			if err != nil {
				s.errc <- err
				return
			}
			s.updates <- u
		}
	}()
	h.t.Cleanup(func() {
		cancel()
		<-s.errc
	})
	return s
}

func (s *stream) next() string {
	s.t.Helper()
	select {
	case u := <-s.updates:
		return kind(u)
	case err := <-s.errc:
		s.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitFor):
		s.t.Fatal("no update")
	}
	return ""
}

func (s *stream) err() error {
	s.t.Helper()
	select {
	case err := <-s.errc:
		s.errc <- err // for Cleanup
		return err
	case u := <-s.updates:
		s.t.Fatalf("want the stream to end, got %s", kind(u))
	case <-time.After(waitFor):
		s.t.Fatal("stream did not end")
	}
	return nil
}

func TestGetFirstMessagesAndDiffs(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("p1", group("f1", "web.demo", 8080, "10.0.0.1:8080", "10.0.0.2:8080"), group("f2", "empty.demo", 80))

	web := h.get("web.demo:8080", "")
	if got := web.next(); got != "add:10.0.0.1:8080,10.0.0.2:8080" {
		t.Fatalf("web first: %s", got)
	}
	if got := h.get("empty.demo", "").next(); got != "none:true" {
		t.Fatalf("empty.demo (port 80 by default) first: %s", got)
	}
	unknown := h.get("nope.demo:80", "")
	if got := unknown.next(); got != "none:false" {
		t.Fatalf("unknown first: %s", got)
	}
	if got := h.get("web.demo:9999", "").next(); got != "none:false" {
		t.Fatalf("other port first: %s", got)
	}

	h.apply("p1", group("f1", "web.demo", 8080, "10.0.0.2:8080", "10.0.0.3:8080"))
	if got := web.next(); got != "add:10.0.0.3:8080" {
		t.Fatalf("web diff add: %s", got)
	}
	if got := web.next(); got != "remove:10.0.0.1:8080" {
		t.Fatalf("web diff remove: %s", got)
	}

	// The unknown service appears: the open stream gets its add.
	h.apply("p2", group("g", "nope.demo", 0, "10.9.9.9:80"))
	if got := unknown.next(); got != "add:10.9.9.9:80" {
		t.Fatalf("unknown then known: %s", got)
	}
	// Withdrawn: back to unknown.
	h.apply("p2", discovery.Group{Key: "g"})
	if got := unknown.next(); got != "none:false" {
		t.Fatalf("withdrawn: %s", got)
	}
}

func TestGetEvictsCritical(t *testing.T) {
	h := newHarness(t, Options{})
	g := group("f", "web.demo", 80, "10.0.0.1:80", "10.0.0.2:80")
	h.apply("p", g)
	s := h.get("web.demo:80", "")
	if got := s.next(); got != "add:10.0.0.1:80,10.0.0.2:80" {
		t.Fatal(got)
	}
	g = group("f", "web.demo", 80, "10.0.0.1:80", "10.0.0.2:80")
	g.Services[0].Endpoints[0].Health = discovery.HealthCritical
	h.apply("p", g)
	if got := s.next(); got != "remove:10.0.0.1:80" {
		t.Fatal(got)
	}
}

func TestGetInvalidArgument(t *testing.T) {
	h := newHarness(t, Options{})
	for _, tc := range []struct{ path, token string }{
		{"", ""},
		{":80", ""},
		{"web.demo:0", ""},
		{"web.demo:65536", ""},
		{"web.demo:http", ""},
		{"web\x00demo:80", ""},
		{"web demo:80", ""},
		{strings.Repeat("a", 256) + ":80", ""},
		{strings.Repeat("a", 64<<10), ""},
		{"10.0.0.1:80", ""},
		{"[::1]:80", ""},
		{"web.demo:80", strings.Repeat("x", MaxContextTokenLen+1)},
	} {
		st, err := h.client.Get(context.Background(), &pb.GetDestination{Path: tc.path, ContextToken: tc.token})
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("path %.40q token %d bytes: got %v, want InvalidArgument", tc.path, len(tc.token), err)
		}
	}
}

func TestGetZoneLocalityFromContextToken(t *testing.T) {
	h := newHarness(t, Options{})
	g := group("f", "web.demo", 80, "10.0.0.1:80")
	g.Services[0].Endpoints[0].Zone = "zone-a"
	h.apply("p", g)
	s := h.get("web.demo", `{"ns":"demo","zone":"zone-a"}`)
	select {
	case u := <-s.updates:
		if got := u.GetAdd().GetAddrs()[0].GetMetricLabels()["zone_locality"]; got != "local" {
			t.Fatalf("zone_locality %q", got)
		}
	case <-time.After(waitFor):
		t.Fatal("no update")
	}
}

func TestStartupGateWaitsForSync(t *testing.T) {
	synced := make(chan struct{})
	h := newHarness(t, Options{Synced: synced, StartupTimeout: time.Minute})
	s := h.get("web.demo:80", "")
	// While unsynced nothing may be answered; the registry then fills and syncs.
	h.apply("p", group("f", "web.demo", 80, "10.0.0.1:80"))
	close(synced)
	if got := s.next(); got != "add:10.0.0.1:80" {
		t.Fatalf("after sync: %s", got)
	}
}

func TestStartupGateIsBounded(t *testing.T) {
	h := newHarness(t, Options{Synced: make(chan struct{}), StartupTimeout: 10 * time.Millisecond})
	if got := h.get("web.demo:80", "").next(); got != "none:false" {
		t.Fatalf("after the bound: %s", got)
	}
}

func TestDrainEndsStreamsAndRefusesNewOnes(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("p", group("f", "web.demo", 80, "10.0.0.1:80"))
	s := h.get("web.demo:80", "")
	s.next()
	h.srv.Drain()
	if code := status.Code(s.err()); code != codes.Unavailable {
		t.Fatalf("open stream ended with %v, want Unavailable", code)
	}
	st, err := h.client.Get(context.Background(), &pb.GetDestination{Path: "web.demo:80"})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("new stream: %v, want Unavailable", err)
	}
}

func TestGetProfile(t *testing.T) {
	h := newHarness(t, Options{})
	g := group("f", "web.demo", 8080, "10.0.0.1:8080")
	g.Services[0].Opaque = true
	g.Services[0].Endpoints[0].Protocol = discovery.ProtocolOpaque
	h.apply("p", g)

	recv := func(path string) (*pb.DestinationProfile, pb.Destination_GetProfileClient) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		t.Cleanup(cancel)
		st, err := h.client.GetProfile(ctx, &pb.GetDestination{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		p, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return p, st
	}
	p, web := recv("web.demo:8080")
	if p.GetFullyQualifiedName() != "web.demo" || !p.GetOpaqueProtocol() || p.GetRetryBudget() == nil {
		t.Errorf("known service profile: %v", p)
	}
	p, _ = recv("nope.demo:8080")
	if p.GetFullyQualifiedName() != "" || p.GetOpaqueProtocol() || p.GetEndpoint() != nil {
		t.Errorf("unknown service profile: %v", p)
	}
	p, st := recv("10.0.0.1:8080")
	if ap, _ := AddrPortFromTCP(p.GetEndpoint().GetAddr()); ap.String() != "10.0.0.1:8080" || !p.GetOpaqueProtocol() {
		t.Errorf("endpoint profile: %v", p)
	}
	// The endpoint goes away: a new profile without it follows.
	h.apply("p", discovery.Group{Key: "f"})
	p, err := st.Recv()
	if err != nil || p.GetEndpoint() != nil {
		t.Errorf("after withdrawal: %v %v", p, err)
	}
	// So does the service: its profile no longer names it.
	if p, err := web.Recv(); err != nil || p.GetFullyQualifiedName() != "" || p.GetOpaqueProtocol() {
		t.Errorf("service profile after withdrawal: %v %v", p, err)
	}
	bad, err := h.client.GetProfile(context.Background(), &pb.GetDestination{Path: "bad host:80"})
	if err == nil {
		_, err = bad.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad profile path: %v, want InvalidArgument", err)
	}
}

type zones map[string]string

func (z zones) NodeZone(node string) (string, bool) { v, ok := z[node]; return v, ok }

func TestZoneLocalityFromNodeName(t *testing.T) {
	h := newHarness(t, Options{NodeZones: zones{"node-1": "zone-b"}})
	g := group("f", "web.demo", 80, "10.0.0.1:80")
	g.Services[0].Endpoints[0].Zone = "zone-a"
	h.apply("p", g)
	s := h.get("web.demo", `{"ns":"demo","nodeName":"node-1","pod":"web-0"}`)
	select {
	case u := <-s.updates:
		if got := u.GetAdd().GetAddrs()[0].GetMetricLabels()["zone_locality"]; got != "remote" {
			t.Fatalf("zone_locality %q", got)
		}
	case <-time.After(waitFor):
		t.Fatal("no update")
	}
}

func TestMetricsCountUpdatesAndPropagation(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, Options{Metrics: NewMetrics(reg)})
	h.apply("p", group("f", "web.demo", 80, "10.0.0.1:80"))
	s := h.get("web.demo:80", "")
	s.next()
	h.apply("p", group("f", "web.demo", 80, "10.0.0.2:80"))
	s.next()
	s.next()
	for name, want := range map[string]float64{
		`tributary_updates_sent_total{type="add"}`:    2,
		`tributary_updates_sent_total{type="remove"}`: 1,
		`tributary_streams{method="Get"}`:             1,
		`tributary_update_propagation_seconds_count`:  1,
	} {
		if got := gathered(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// gathered reads one sample, named as in the text exposition format.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			id := mf.GetName()
			if len(m.GetLabel()) > 0 {
				id += "{"
				for i, l := range m.GetLabel() {
					if i > 0 {
						id += ","
					}
					id += l.GetName() + `="` + l.GetValue() + `"`
				}
				id += "}"
			}
			switch {
			case m.GetCounter() != nil && id == name:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil && id == name:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil && id+"_count" == name:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

// TestSharedSnapshotsConvergeForEveryStream: streams of one service share
// snapshots and encoded diffs; whatever versions each one skips, every
// client ends holding exactly the final state.
func TestSharedSnapshotsConvergeForEveryStream(t *testing.T) {
	h := newHarness(t, Options{})
	h.apply("p", group("f", "web.demo", 80, "10.0.0.1:80"))
	const n = 20
	streams := make([]*stream, n)
	sets := make([]EndpointSet, n)
	for i := range streams {
		streams[i] = h.get("web.demo:80", "")
	}
	var final []string
	for step := 0; step < 30; step++ {
		final = final[:0]
		for k := 0; k < 8; k++ {
			if (step*7+k*3)%5 < 3 {
				final = append(final, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(k + 1)}), 80).String())
			}
		}
		h.apply("p", group("f", "web.demo", 80, final...))
	}
	want := map[netip.AddrPort]bool{}
	for _, a := range final {
		want[netip.MustParseAddrPort(a)] = true
	}
	for i, s := range streams {
		deadline := time.After(waitFor)
		for {
			if len(sets[i].Addrs) == len(want) && sets[i].Started {
				ok := true
				for ap := range sets[i].Addrs {
					ok = ok && want[ap]
				}
				if ok {
					break
				}
			}
			select {
			case u := <-s.updates:
				if err := sets[i].Apply(u); err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
			case <-deadline:
				t.Fatalf("stream %d holds %v, want %v", i, sets[i].Sorted(), final)
			}
		}
	}
	if got := h.srv.hub.Len(); got != 1 {
		t.Fatalf("%d hub entries for one service, want 1", got)
	}
}

func TestAdmissionLimits(t *testing.T) {
	h := newHarness(t, Options{NewStreamsPerSecond: 0.001, NewStreamsBurst: 2})
	h.apply("p", group("f", "web.demo", 80, "10.0.0.1:80"))
	h.get("web.demo:80", "").next()
	h.get("web.demo:80", "").next()
	st, err := h.client.Get(context.Background(), &pb.GetDestination{Path: "web.demo:80"})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream over the burst: %v, want ResourceExhausted", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Fatalf("no retry delay in %v", status.Convert(err).Details())
	}

	h2 := newHarness(t, Options{MaxStreams: 1})
	h2.apply("p", group("f", "web.demo", 80, "10.0.0.1:80"))
	first := h2.get("web.demo:80", "")
	first.next()
	st, err = h2.client.Get(context.Background(), &pb.GetDestination{Path: "web.demo:80"})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream over MaxStreams: %v, want ResourceExhausted", err)
	}
	first.cancel()
	<-first.errc
	first.errc <- nil // for its cleanup
	deadline := time.Now().Add(waitFor)
	for {
		st, err = h2.client.Get(context.Background(), &pb.GetDestination{Path: "web.demo:80"})
		if err == nil {
			_, err = st.Recv()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a slot never freed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSlowClientIsClosedOthersUnaffected: a client that stops reading is
// closed with Unavailable once its sends block past the send timeout; a
// reading client of the same service keeps getting every update.
func TestSlowClientIsClosedOthersUnaffected(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, Options{SendTimeout: 200 * time.Millisecond, Metrics: NewMetrics(reg)})
	big := func(round int) discovery.Group {
		g := discovery.Group{Key: "f", Services: []discovery.Service{{Authority: discovery.Authority{Host: "web.demo", Port: 80}}}}
		for i := 0; i < 300; i++ {
			g.Services[0].Endpoints = append(g.Services[0].Endpoints, discovery.Endpoint{
				Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(round % 2), byte(i / 256), byte(i)}), 80),
				Labels: map[string]string{"padding": strings.Repeat("x", 100)},
			})
		}
		return g
	}
	h.apply("p", big(0))

	// The slow client: its own connection with fixed small windows, and it
	// never calls Recv after the first message.
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(65535), grpc.WithInitialConnWindowSize(65535))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slow, err := pb.NewDestinationClient(conn).Get(ctx, &pb.GetDestination{Path: "web.demo:80"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slow.Recv(); err != nil {
		t.Fatal(err)
	}
	fast := h.get("web.demo:80", "")
	fast.next()

	closed := func() bool { return gathered(t, reg, "tributary_streams_slow_closed_total") >= 1 }
	deadline := time.Now().Add(waitFor)
	for round := 1; !closed(); round++ {
		if time.Now().After(deadline) {
			t.Fatal("the slow stream was never closed")
		}
		h.apply("p", big(round))
		// The reading client sees every round: an add then a remove.
		if got := fast.next(); !strings.HasPrefix(got, "add:") {
			t.Fatalf("round %d: fast client got %.40s", round, got)
		}
		if got := fast.next(); !strings.HasPrefix(got, "remove:") {
			t.Fatalf("round %d: fast client got %.40s", round, got)
		}
	}
	// The slow client, reading again, drains what was buffered and then
	// sees the stream end with Unavailable.
	for {
		_, err := slow.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("slow stream ended with %v, want Unavailable", err)
			}
			break
		}
	}
}

// rawBytesCodec lets a test send bytes no conforming client would.
type rawBytesCodec struct{}

func (rawBytesCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawBytesCodec) Unmarshal(data []byte, v any) error {
	return proto.Unmarshal(data, v.(proto.Message))
}
func (rawBytesCodec) Name() string { return "proto" }

func TestInvalidUTF8PathIsInvalidArgument(t *testing.T) {
	h := newHarness(t, Options{})
	var b []byte
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("web\xff.demo:80"))
	for _, method := range []string{"/io.linkerd.proxy.destination.Destination/Get", "/io.linkerd.proxy.destination.Destination/GetProfile"} {
		conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawBytesCodec{})))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
		if err == nil {
			err = st.SendMsg(b)
		}
		if err == nil {
			err = st.CloseSend()
		}
		if err == nil {
			err = st.RecvMsg(&pb.Update{})
		}
		cancel()
		conn.Close()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s with an invalid UTF-8 path: %v, want InvalidArgument", method, err)
		}
	}
}
