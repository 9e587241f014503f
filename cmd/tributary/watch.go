package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tributary-mesh/tributary/destination"
	adminpkg "github.com/tributary-mesh/tributary/destination/admin"
)

const watchUsage = `usage: tributary watch [flags] AUTHORITY

Prints the Get stream a proxy receives for AUTHORITY (host:port) as a table:
one row per address added, with its zone, health, source and identity, a
REMOVE row per address removed, and a HEALTH row when an address's health
changes. Health is read from the admin API's /api/v1/services/AUTHORITY (the
view the status page and explain read) with each update and every
--health-interval; a REMOVE or HEALTH row of an endpoint not served ends with
the reason (why: evicted: health is critical; ...). --json prints the raw
messages instead, --profile the GetProfile stream.

Exit codes: 0 the stream ended (interrupt, or the server closed it), 1 the
server could not be reached or the stream failed, 2 usage.

flags:`

func watchCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8086", "Tributary destination API address")
	asJSON := fs.Bool("json", false, "print each message as one JSON line (protojson)")
	profile := fs.Bool("profile", false, "watch GetProfile instead of Get")
	token := fs.String("token", "", `context token, e.g. {"ns":"demo","zone":"zone-a"}`)
	adminAddr := fs.String("admin", "", "admin address for each endpoint's health (/api/v1/services/AUTHORITY); default: --addr's host, port 9996; \"off\": none. http:// or https:// may lead it (https uses the TLS flags)")
	healthEvery := fs.Duration("health-interval", 2*time.Second, "how often health is read again from the admin API; 0: only with each ADD")
	var tf tlsFlags
	tf.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), watchUsage)
		fs.PrintDefaults()
	}
	positional, ok := parseInterspersed(fs, args)
	if !ok {
		return 2
	}
	if len(positional) != 1 {
		fs.Usage()
		return 2
	}
	creds, err := tf.credentials()
	if err != nil {
		fmt.Fprintln(stderr, "tributary watch:", err)
		return 2
	}
	admin := *adminAddr
	switch {
	case admin == "off":
		admin = ""
	case admin == "" && *asJSON:
		// --json prints the raw messages unless health is asked for.
	case admin == "":
		admin = defaultAdmin(*addr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	opts := watchOptions{addr: *addr, admin: admin, authority: positional[0], token: *token, asJSON: *asJSON, profile: *profile,
		creds: creds, adminTLS: tf.adminConfig(), healthEvery: *healthEvery}
	if err := watch(ctx, stdout, stderr, opts); err != nil {
		fmt.Fprintln(stderr, "tributary watch:", err)
		return 1
	}
	return 0
}

// parseInterspersed accepts flags before and after the positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, bool) {
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, false
		}
		args = fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	return positional, true
}

// defaultAdmin is the admin address next to a destination API address: the
// same host, the default admin port.
func defaultAdmin(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return net.JoinHostPort(host, "9996")
}

// tlsFlags are the client's TLS settings, for an API with server.tls.
type tlsFlags struct {
	ca, cert, key, serverName string
}

func (f *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.ca, "ca", "", "PEM file of the CAs to verify the server with; turns TLS on")
	fs.StringVar(&f.cert, "cert", "", "PEM file of the client certificate (an X.509-SVID for server.tls); turns TLS on")
	fs.StringVar(&f.key, "key", "", "PEM file of the client certificate's private key")
	fs.StringVar(&f.serverName, "server-name", "", "the name to expect on the server's certificate: a DNS name (default: --addr's host), or a spiffe:// ID to match its URI SAN")
}

func (f *tlsFlags) enabled() bool {
	return f.ca != "" || f.cert != "" || f.key != "" || f.serverName != ""
}

// config is the client TLS config of the flags, nil without TLS.
func (f *tlsFlags) config() (*tls.Config, error) {
	if !f.enabled() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if (f.cert == "") != (f.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if f.cert != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if f.ca != "" {
		pemData, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate in it", f.ca)
		}
		cfg.RootCAs = pool
	}
	if id, ok := strings.CutPrefix(f.serverName, "spiffe://"); ok {
		// A SPIFFE server: chain to the CAs, and match the URI SAN instead
		// of a DNS name (an SVID need not carry one).
		want := "spiffe://" + id
		roots := cfg.RootCAs
		cfg.InsecureSkipVerify = true // verified below, against roots and the ID
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifySPIFFEServer(raw, roots, want)
		}
	} else {
		cfg.ServerName = f.serverName
	}
	return cfg, nil
}

func verifySPIFFEServer(raw [][]byte, roots *x509.CertPool, want string) error {
	if len(raw) == 0 {
		return errors.New("the server presented no certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return err
	}
	for _, u := range certs[0].URIs {
		if u.String() == want {
			return nil
		}
	}
	return fmt.Errorf("the server's certificate does not carry %s", want)
}

// credentials are the gRPC transport credentials of the flags.
func (f *tlsFlags) credentials() (credentials.TransportCredentials, error) {
	cfg, err := f.config()
	if err != nil || cfg == nil {
		return insecure.NewCredentials(), err
	}
	return credentials.NewTLS(cfg), nil
}

// adminConfig is the TLS config for an https:// admin address (server.tls
// with admin: true), nil without TLS flags.
func (f *tlsFlags) adminConfig() *tls.Config {
	cfg, err := f.config()
	if err != nil {
		return nil
	}
	return cfg
}

type watchOptions struct {
	addr, admin, authority, token string
	asJSON, profile               bool
	// creds are the API's transport credentials; nil: plaintext.
	creds credentials.TransportCredentials
	// adminTLS is the TLS config for an https:// admin address.
	adminTLS *tls.Config
	// healthEvery is how often health is re-read while nothing arrives; 0: only with each ADD.
	healthEvery time.Duration
}

func watch(ctx context.Context, out, warn io.Writer, o watchOptions) error {
	creds := o.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewDestinationClient(conn)
	req := &pb.GetDestination{Scheme: "k8s", Path: o.authority, ContextToken: o.token}
	if o.profile {
		stream, err := client.GetProfile(ctx, req)
		if err != nil {
			return err
		}
		for {
			p, err := stream.Recv()
			if err != nil {
				return streamEnd(ctx, err)
			}
			if o.asJSON {
				b, _ := protojson.MarshalOptions{}.Marshal(p)
				fmt.Fprintln(out, string(b))
				continue
			}
			fmt.Fprintln(out, protojson.Format(p))
		}
	}
	stream, err := client.Get(ctx, req)
	if err != nil {
		return err
	}
	var hr *healthReader
	if o.admin != "" {
		hr = &healthReader{admin: o.admin, authority: o.authority, zone: destination.ContextTokenZone(o.token), tls: o.adminTLS, warn: warn}
	}
	updates := make(chan *pb.Update)
	errc := make(chan error, 1)
	go func() {
		for {
			u, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case updates <- u:
			case <-ctx.Done():
				errc <- ctx.Err()
				return
			}
		}
	}()
	var tick <-chan time.Time
	if hr != nil && o.healthEvery > 0 && !o.asJSON {
		t := time.NewTicker(o.healthEvery)
		defer t.Stop()
		tick = t.C
	}
	tw := &table{out: out}
	var set destination.EndpointSet
	shown := map[string]row{} // address → the row last printed for it
	for {
		select {
		case err := <-errc:
			return streamEnd(ctx, err)
		case <-tick:
			health := hr.read(ctx)
			if health == nil {
				continue
			}
			for _, a := range sortedKeys(shown) {
				r := shown[a]
				if h := health.of(r.address, r.source); h != r.health {
					r.health = h
					shown[a] = r
					tw.print("HEALTH", withWhy(r, health.why(r.address, r.source)))
				}
			}
		case u := <-updates:
			if cerr := set.Apply(u); cerr != nil {
				fmt.Fprintln(warn, "warning:", cerr)
			}
			// Health as of this update: an address added, or removed (an
			// eviction shows as critical; an address gone from the
			// registry as -).
			var health registryHealth
			if hr != nil && (u.GetAdd() != nil || (u.GetRemove() != nil && !o.asJSON)) {
				health = hr.read(ctx)
			}
			if o.asJSON {
				b, _ := protojson.MarshalOptions{}.Marshal(u)
				if health != nil {
					b, _ = json.Marshal(struct {
						Update json.RawMessage   `json:"update"`
						Health map[string]string `json:"health"`
						Why    map[string]string `json:"why,omitempty"`
					}{b, health.healths(), health.whys()})
				}
				fmt.Fprintln(out, string(b))
				continue
			}
			printTable(tw, u, len(set.Addrs), health, hr != nil, shown)
		}
	}
}

// registryHealth is each endpoint's health, with the reason when it is
// not served, from the admin API's explain view (/api/v1/services/{authority}):
// "address source" -> health.
type registryHealth map[string]endpointHealth

type endpointHealth struct {
	health string
	// why is the explain view's sentence for an endpoint a client without
	// a zone does not receive (evicted, beaten by a duplicate, ...); "" when
	// it is served.
	why string
}

func (h registryHealth) of(address, source string) string {
	if v, ok := h[address+" "+source]; ok {
		return v.health
	}
	return "-"
}

func (h registryHealth) why(address, source string) string {
	return h[address+" "+source].why
}

// healths is each endpoint's health, as --json prints it.
func (h registryHealth) healths() map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[k] = v.health
	}
	return out
}

// whys is the reason of each endpoint not served, as --json prints it.
func (h registryHealth) whys() map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if v.why != "" {
			out[k] = v.why
		}
	}
	return out
}

// healthReader reads endpoint health from the admin API's explain view,
// the one the status page and `tributary explain` read. The wire carries
// no health (unhealthy endpoints are simply removed), so this is how
// `watch` shows it. The first failure is reported once; then it is quiet.
type healthReader struct {
	admin, authority string
	zone             string // the client's zone, from the token's "zone" (destination.ContextTokenZone); "" for none
	tls              *tls.Config
	warn             io.Writer
	client           *http.Client
	warned           bool
}

func (r *healthReader) read(ctx context.Context) registryHealth {
	var v adminpkg.ServiceAPI
	path := "/api/v1/services/" + url.PathEscape(r.authority)
	if r.zone != "" {
		path += "?zone=" + url.QueryEscape(r.zone)
	}
	if err := r.get(ctx, path, &v); err != nil {
		if !r.warned {
			r.warned = true
			fmt.Fprintf(r.warn, "warning: no health from the admin API (%v); --admin sets its address, --admin off turns this off\n", err)
		}
		return nil
	}
	out := registryHealth{}
	for _, e := range v.Endpoints {
		eh := endpointHealth{health: e.Health}
		if !e.Served {
			eh.why = e.Why
		}
		out[e.Address+" "+e.Source] = eh
	}
	return out
}

// get reads an admin JSON endpoint into v.
func (r *healthReader) get(ctx context.Context, path string, v any) error {
	if r.client == nil {
		r.client = adminClient(r.tls)
	}
	return adminGet(ctx, r.client, r.admin, path, v)
}

// adminClient is an HTTP client for the admin API, with the TLS flags'
// config for an https:// address.
func adminClient(cfg *tls.Config) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// adminGet reads the admin API's JSON at path into v. admin is host:port,
// or a URL prefix (http://, https://).
func adminGet(ctx context.Context, c *http.Client, admin, path string, v any) error {
	base := admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", req.URL.Redacted(), resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s: %w", req.URL.Redacted(), err)
	}
	return nil
}

func streamEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// row is one address as the table shows it.
type row struct {
	address, zone, health, weight, source, identity, extra string
}

// table prints rows in columns whose widths only grow, so that rows printed
// apart in time still line up: a header first, then a row per event.
type table struct {
	out    io.Writer
	header bool
	w      [6]int
}

var tableMin = [6]int{6, 21, 6, 8, 6, 6} // EVENT ADDRESS ZONE HEALTH (critical) WEIGHT SOURCE

func (t *table) print(event string, r row) {
	cols := [6]string{event, r.address, r.zone, r.health, r.weight, r.source}
	if !t.header {
		t.header = true
		t.w = tableMin
		t.line([6]string{"EVENT", "ADDRESS", "ZONE", "HEALTH", "WEIGHT", "SOURCE"}, "IDENTITY", "")
	}
	t.line(cols, r.identity, r.extra)
}

func (t *table) line(cols [6]string, identity, extra string) {
	var b strings.Builder
	for i, c := range cols {
		t.w[i] = max(t.w[i], len(c))
		fmt.Fprintf(&b, "%-*s  ", t.w[i], c)
	}
	b.WriteString(identity)
	if extra != "" {
		b.WriteString("  " + extra)
	}
	fmt.Fprintln(t.out, strings.TrimRight(b.String(), " "))
}

// printTable writes an update: a row per address added (with its health
// when the admin API was read) or removed, and the count.
func printTable(t *table, u *pb.Update, total int, health registryHealth, withHealth bool, shown map[string]row) {
	switch x := u.GetUpdate().(type) {
	case *pb.Update_Add:
		for _, wa := range x.Add.GetAddrs() {
			ap, _ := destination.AddrPortFromTCP(wa.GetAddr())
			labels := wa.GetMetricLabels()
			r := row{address: ap.String(), zone: orDash(labels["zone"]), weight: fmt.Sprint(wa.GetWeight()),
				source: orDash(labels["source"]), identity: orDash(identity(wa)), health: "-"}
			if withHealth {
				r.health = health.of(r.address, labels["source"])
			}
			var extra []string
			if p := protocol(wa); p != "" {
				extra = append(extra, "protocol="+p)
			}
			for _, k := range sortedKeys(labels) {
				if k != "zone" && k != "source" {
					extra = append(extra, k+"="+labels[k])
				}
			}
			r.extra = strings.Join(extra, " ")
			shown[r.address] = r
			t.print("ADD", r)
		}
	case *pb.Update_Remove:
		for _, a := range x.Remove.GetAddrs() {
			ap, _ := destination.AddrPortFromTCP(a)
			r, ok := shown[ap.String()]
			if !ok {
				r = row{address: ap.String(), zone: "-", health: "-", weight: "-", source: "-", identity: "-"}
			}
			r.extra = ""
			if withHealth && health != nil {
				r.health = health.of(r.address, r.source)
				r = withWhy(r, health.why(r.address, r.source))
			}
			delete(shown, ap.String())
			t.print("REMOVE", r)
		}
	case *pb.Update_NoEndpoints:
		clear(shown)
		fmt.Fprintf(t.out, "# no endpoints (the service %s)\n", map[bool]string{true: "exists", false: "is unknown"}[x.NoEndpoints.GetExists()])
		return
	}
	fmt.Fprintf(t.out, "# %d endpoints\n", total)
}

// withWhy is r with the explain view's reason for not serving it (an
// eviction, a duplicate, ...) at the end of the line.
func withWhy(r row, why string) row {
	if why == "" {
		return r
	}
	if r.extra != "" {
		r.extra += " "
	}
	r.extra += "why: " + printable(why)
	return r
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// identity is the TLS identity the proxy will expect, with the SNI for a
// SPIFFE one.
func identity(wa *pb.WeightedAddr) string {
	id := wa.GetTlsIdentity()
	switch {
	case id.GetDnsLikeIdentity() != nil:
		return id.GetDnsLikeIdentity().GetName()
	case id.GetUriLikeIdentity() != nil:
		return id.GetUriLikeIdentity().GetUri() + " (sni " + id.GetServerName().GetName() + ")"
	}
	return ""
}

func protocol(wa *pb.WeightedAddr) string {
	switch {
	case wa.GetProtocolHint().GetH2() != nil:
		return "h2"
	case wa.GetProtocolHint().GetOpaque() != nil:
		return "opaque"
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
