package main

import (
	"context"
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

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tributary-mesh/tributary/destination"
	adminpkg "github.com/tributary-mesh/tributary/destination/admin"
)

func watchCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8086", "Tributary destination API address")
	asJSON := fs.Bool("json", false, "print each message as one JSON line (protojson)")
	profile := fs.Bool("profile", false, "watch GetProfile instead of Get")
	token := fs.String("token", "", `context token, e.g. {"ns":"demo","zone":"zone-a"}`)
	adminAddr := fs.String("admin", "", "admin address (e.g. 127.0.0.1:9996): add each endpoint's health from /debug/registry")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: tributary watch [flags] AUTHORITY")
		fs.PrintDefaults()
	}
	// Accept flags before and after the authority.
	var positional []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return 2
		}
		args = fs.Args()
		if len(args) > 0 {
			positional = append(positional, args[0])
			args = args[1:]
		}
	}
	if len(positional) != 1 {
		fs.Usage()
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	opts := watchOptions{addr: *addr, admin: *adminAddr, authority: positional[0], token: *token, asJSON: *asJSON, profile: *profile}
	if err := watch(ctx, stdout, stderr, opts); err != nil {
		fmt.Fprintln(stderr, "tributary watch:", err)
		return 1
	}
	return 0
}

type watchOptions struct {
	addr, admin, authority, token string
	asJSON, profile               bool
}

func watch(ctx context.Context, out, warn io.Writer, o watchOptions) error {
	addr, authority, token, asJSON, profile := o.addr, o.authority, o.token, o.asJSON, o.profile
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewDestinationClient(conn)
	req := &pb.GetDestination{Scheme: "k8s", Path: authority, ContextToken: token}
	if profile {
		stream, err := client.GetProfile(ctx, req)
		if err != nil {
			return err
		}
		for {
			p, err := stream.Recv()
			if err != nil {
				return streamEnd(ctx, err)
			}
			fmt.Fprintln(out, protojson.Format(p))
		}
	}
	stream, err := client.Get(ctx, req)
	if err != nil {
		return err
	}
	var set destination.EndpointSet
	for {
		u, err := stream.Recv()
		if err != nil {
			return streamEnd(ctx, err)
		}
		if cerr := set.Apply(u); cerr != nil {
			fmt.Fprintln(warn, "warning:", cerr)
		}
		var health map[string]string
		if o.admin != "" && u.GetAdd() != nil {
			health = registryHealth(ctx, o.admin, authority)
		}
		if asJSON {
			b, _ := protojson.MarshalOptions{}.Marshal(u)
			if health != nil {
				b, _ = json.Marshal(struct {
					Update json.RawMessage   `json:"update"`
					Health map[string]string `json:"health"`
				}{b, health})
			}
			fmt.Fprintln(out, string(b))
			continue
		}
		printUpdate(out, u, len(set.Addrs), health)
	}
}

// registryHealth reads each endpoint's health for the authority's host from
// the admin /debug/registry: "address source" -> health. The wire carries
// no health (unhealthy endpoints are simply removed), so this is how
// `watch` shows it. Errors leave the map empty.
func registryHealth(ctx context.Context, admin, authority string) map[string]string {
	out := map[string]string{}
	host, _, err := net.SplitHostPort(authority)
	if err != nil {
		host = authority
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/debug/registry?authority="+url.QueryEscape(host), nil)
	if err != nil {
		return out
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	var reg adminpkg.RegistryJSON
	if json.NewDecoder(resp.Body).Decode(&reg) != nil {
		return out
	}
	for _, svc := range reg.Services {
		for _, e := range svc.Endpoints {
			out[e.Address+" "+e.Source] = e.Health
		}
	}
	return out
}

func streamEnd(ctx context.Context, err error) error {
	if ctx.Err() != nil || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// printUpdate writes one line per address, like `linkerd diagnostics
// endpoints`; with health (see registryHealth) each address shows its own.
func printUpdate(out io.Writer, u *pb.Update, total int, health map[string]string) {
	switch x := u.GetUpdate().(type) {
	case *pb.Update_Add:
		for _, wa := range x.Add.GetAddrs() {
			ap, _ := destination.AddrPortFromTCP(wa.GetAddr())
			h := ""
			if v, ok := health[ap.String()+" "+wa.GetMetricLabels()["source"]]; ok {
				h = " health=" + v
			}
			fmt.Fprintf(out, "ADD     %-24s weight=%d%s%s%s%s\n", ap, wa.GetWeight(), h, identity(wa), protocol(wa), labels(wa.GetMetricLabels()))
		}
	case *pb.Update_Remove:
		for _, a := range x.Remove.GetAddrs() {
			ap, _ := destination.AddrPortFromTCP(a)
			fmt.Fprintf(out, "REMOVE  %s\n", ap)
		}
	case *pb.Update_NoEndpoints:
		fmt.Fprintf(out, "NO_ENDPOINTS exists=%t\n", x.NoEndpoints.GetExists())
		return
	}
	fmt.Fprintf(out, "# %d endpoints\n", total)
}

func identity(wa *pb.WeightedAddr) string {
	id := wa.GetTlsIdentity()
	switch {
	case id.GetDnsLikeIdentity() != nil:
		return " identity=" + id.GetDnsLikeIdentity().GetName()
	case id.GetUriLikeIdentity() != nil:
		return " identity=" + id.GetUriLikeIdentity().GetUri() + " server_name=" + id.GetServerName().GetName()
	}
	return ""
}

func protocol(wa *pb.WeightedAddr) string {
	switch {
	case wa.GetProtocolHint().GetH2() != nil:
		return " protocol=h2"
	case wa.GetProtocolHint().GetOpaque() != nil:
		return " protocol=opaque"
	}
	return ""
}

func labels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, m[k])
	}
	return b.String()
}
