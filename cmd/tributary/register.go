package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tributary-mesh/tributary/destination/registration"
	"github.com/tributary-mesh/tributary/discovery"
	rpb "github.com/tributary-mesh/tributary/proto/tributary/registration/v1"
	"github.com/tributary-mesh/tributary/sources/register"
)

// attachRegistration serves the registration API when a register source is
// configured; the API writes to that one source.
func attachRegistration(g *grpc.Server, instances []discovery.Instance, logger *slog.Logger) error {
	var src *register.Source
	for _, in := range instances {
		s, ok := in.Source.(*register.Source)
		if !ok {
			continue
		}
		if src != nil {
			return fmt.Errorf("sources %s and %s are both kind: register; the registration API writes to one", src.Name(), s.Name())
		}
		src = s
	}
	if src != nil {
		registration.New(src, logger.With("api", "registration")).Attach(g)
		logger.Info("registration API on", "source", src.Name())
	}
	return nil
}

// clientFlags are the flags of the commands that call the registration API.
type clientFlags struct {
	addr, cert, key, ca, serverName *string
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		addr:       fs.String("addr", "127.0.0.1:8086", "Tributary API address"),
		cert:       fs.String("cert", "", "client certificate (PEM, an X.509-SVID) for mTLS; with --key and --ca"),
		key:        fs.String("key", "", "client key (PEM)"),
		ca:         fs.String("ca", "", "CA bundle (PEM) that signs Tributary's certificate"),
		serverName: fs.String("tls-server-name", "", "name to check Tributary's certificate against (default: the host of --addr)"),
	}
}

func (f clientFlags) dial() (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if *f.cert != "" || *f.key != "" || *f.ca != "" {
		if *f.cert == "" || *f.key == "" || *f.ca == "" {
			return nil, errors.New("--cert, --key and --ca go together")
		}
		pair, err := tls.LoadX509KeyPair(*f.cert, *f.key)
		if err != nil {
			return nil, err
		}
		pem, err := os.ReadFile(*f.ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", *f.ca)
		}
		creds = credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: *f.serverName, MinVersion: tls.VersionTLS12})
	}
	return grpc.NewClient(*f.addr, grpc.WithTransportCredentials(creds))
}

// labelFlags collect repeated --label k=v.
type labelFlags map[string]string

func (l labelFlags) String() string { return fmt.Sprint(map[string]string(l)) }
func (l labelFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want key=value", s)
	}
	l[k] = v
	return nil
}

var protocolFlag = map[string]rpb.Protocol{"": rpb.Protocol_PROTOCOL_UNSPECIFIED, "h2": rpb.Protocol_PROTOCOL_H2, "opaque": rpb.Protocol_PROTOCOL_OPAQUE}

func registerCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addClientFlags(fs)
	authority := fs.String("authority", "", "authority to register under, host:port (required)")
	address := fs.String("address", "", "the endpoint, IP:port (required)")
	ttl := fs.Duration("ttl", 10*time.Second, "lease TTL; renewed every third of it")
	zone := fs.String("zone", "", "zone of the endpoint")
	weight := fs.Uint("weight", 0, "weight (default 10000)")
	identity := fs.String("identity", "", "TLS identity: a SPIFFE ID (with mTLS, the caller's own) or a DNS-like name")
	serverName := fs.String("server-name", "", "server name the proxy sends, with a SPIFFE identity")
	protocol := fs.String("protocol", "", "protocol hint: h2 or opaque")
	check := fs.String("check", "", "local check: http(s)://… (2xx/3xx passes) or tcp://host:port; registered only while it passes")
	checkInterval := fs.Duration("check-interval", 2*time.Second, "how often the check runs")
	labels := labelFlags{}
	fs.Var(labels, "label", "label key=value (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: tributary register --authority HOST:PORT --address IP:PORT [flags]\n\nRegisters the endpoint, keeps its lease alive (while --check passes), and\nderegisters on SIGTERM or interrupt.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ap, err := netipAddrPort(*address)
	if *authority == "" || err != nil || fs.NArg() > 0 {
		if err != nil && *address != "" {
			fmt.Fprintln(stderr, "tributary register: --address:", err)
		}
		fs.Usage()
		return 2
	}
	proto, ok := protocolFlag[*protocol]
	if !ok {
		fmt.Fprintf(stderr, "tributary register: --protocol %q: want h2 or opaque\n", *protocol)
		return 2
	}
	host, port, _ := net.SplitHostPort(ap)
	var portN uint32
	fmt.Sscan(port, &portN)
	req := &rpb.RegisterRequest{
		Endpoint: &rpb.Endpoint{Authority: *authority, Address: host, Port: portN, Zone: *zone, Weight: uint32(*weight),
			Labels: labels, Identity: *identity, ServerName: *serverName, Protocol: proto},
		Ttl: durationpb.New(*ttl),
	}
	conn, err := cf.dial()
	if err != nil {
		fmt.Fprintln(stderr, "tributary register:", err)
		return 1
	}
	defer conn.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	r := &registrar{client: rpb.NewRegistrationClient(conn), req: req, out: stdout, check: *check, interval: *checkInterval}
	if err := r.run(ctx); err != nil {
		fmt.Fprintln(stderr, "tributary register:", err)
		return 1
	}
	return 0
}

func netipAddrPort(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", err
	}
	if net.ParseIP(host) == nil {
		return "", fmt.Errorf("%q is not an IP address", host)
	}
	return net.JoinHostPort(host, port), nil
}

// registrar keeps one registration alive while its check passes.
type registrar struct {
	client   rpb.RegistrationClient
	req      *rpb.RegisterRequest
	out      io.Writer
	check    string
	interval time.Duration

	lease     string
	renewed   time.Time
	keepalive rpb.Registration_KeepAliveClient
	cancelKA  context.CancelFunc
}

func (r *registrar) say(format string, args ...any) {
	fmt.Fprintf(r.out, "%s %s\n", time.Now().Format(time.RFC3339), fmt.Sprintf(format, args...))
}

func (r *registrar) run(ctx context.Context) error {
	ttl := r.req.GetTtl().AsDuration()
	step := ttl / 3
	if r.check != "" {
		step = min(step, r.interval)
	}
	tick := time.NewTicker(step)
	defer tick.Stop()
	defer r.closeKeepAlive()
	for {
		passing := true
		if r.check != "" {
			if err := probe(ctx, r.check, min(r.interval, 2*time.Second)); err != nil {
				passing = false
				if r.lease != "" {
					r.say("check failing (%v): deregistering", err)
				}
			}
		}
		switch {
		case ctx.Err() != nil:
		case passing && r.lease == "":
			r.register(ctx)
		case passing && time.Since(r.renewed) >= ttl/3-step/2:
			r.renew(ctx)
		case !passing && r.lease != "":
			r.deregister(ctx)
		}
		select {
		case <-ctx.Done():
			if r.lease != "" {
				dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				r.deregister(dctx)
				cancel()
			}
			return nil
		case <-tick.C:
		}
	}
}

func (r *registrar) register(ctx context.Context) {
	resp, err := r.client.Register(ctx, r.req)
	if err != nil {
		r.say("register failed: %v", err)
		return
	}
	r.lease, r.renewed = resp.GetLeaseId(), time.Now()
	e := r.req.GetEndpoint()
	r.say("registered %s %s lease=%s ttl=%s", e.GetAuthority(), net.JoinHostPort(e.GetAddress(), fmt.Sprint(e.GetPort())), r.lease, resp.GetTtl().AsDuration())
}

func (r *registrar) closeKeepAlive() {
	if r.cancelKA != nil {
		r.cancelKA()
		r.cancelKA, r.keepalive = nil, nil
	}
}

func (r *registrar) renew(ctx context.Context) {
	if r.keepalive == nil {
		kctx, cancel := context.WithCancel(ctx)
		ka, err := r.client.KeepAlive(kctx)
		if err != nil {
			cancel()
			r.say("keepalive failed: %v", err)
			return
		}
		r.keepalive, r.cancelKA = ka, cancel
	}
	err := r.keepalive.Send(&rpb.KeepAliveRequest{LeaseId: r.lease})
	var resp *rpb.KeepAliveResponse
	if err == nil {
		resp, err = r.keepalive.Recv()
	}
	if err != nil {
		r.closeKeepAlive()
		r.say("keepalive failed: %v", err)
		return
	}
	if resp.GetUnknown() {
		r.say("lease %s unknown to the server (expired, or the server restarted): registering again", r.lease)
		r.lease = ""
		r.register(ctx)
		return
	}
	r.renewed = time.Now()
}

func (r *registrar) deregister(ctx context.Context) {
	if _, err := r.client.Deregister(ctx, &rpb.DeregisterRequest{LeaseId: r.lease}); err != nil {
		r.say("deregister failed: %v", err)
	} else {
		r.say("deregistered lease=%s", r.lease)
	}
	r.lease = ""
	r.closeKeepAlive()
}

// probe runs the local check once.
func probe(ctx context.Context, check string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u, err := url.Parse(check)
	if err != nil {
		return err
	}
	switch u.Scheme {
	case "tcp":
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return err
		}
		return c.Close()
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, check, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	default:
		return fmt.Errorf("check %q: want http://, https:// or tcp://", check)
	}
}

func registrationsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("registrations", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addClientFlags(fs)
	authority := fs.String("authority", "", "only this authority (host:port)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: tributary registrations [flags]\n\nLists the live registrations.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return 2
	}
	conn, err := cf.dial()
	if err != nil {
		fmt.Fprintln(stderr, "tributary registrations:", err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := rpb.NewRegistrationClient(conn).List(ctx, &rpb.ListRequest{Authority: *authority})
	if err != nil {
		fmt.Fprintln(stderr, "tributary registrations:", err)
		return 1
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "AUTHORITY\tADDRESS\tTTL\tIDENTITY\tLABELS\tBY\tLEASE")
	for _, l := range resp.GetLeases() {
		e := l.GetEndpoint()
		var labels []string
		for k, v := range e.GetLabels() {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.GetAuthority(), net.JoinHostPort(e.GetAddress(), fmt.Sprint(e.GetPort())),
			l.GetTtl().AsDuration(), dash(e.GetIdentity()), dash(strings.Join(labels, ",")), l.GetRegisteredBy(), l.GetLeaseId())
	}
	w.Flush()
	fmt.Fprintf(stdout, "# %d registrations\n", len(resp.GetLeases()))
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
