package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	adminpkg "github.com/tributary-mesh/tributary/destination/admin"
	"github.com/tributary-mesh/tributary/discovery"
)

const explainUsage = `usage: tributary explain AUTHORITY [flags]

Explains what the server serves for AUTHORITY (host:port) to a client in
--zone: every endpoint the registry holds for it and its federation
aliases, whether it is served, and why (health, panic threshold, failover
tier, priority level, a higher-priority source's copy of the address,
topology hints), read from the admin JSON API
(/api/v1/services/AUTHORITY; docs/status-page.md). The reasons come from
the code that decides what Get streams and DNS answers serve.

Exit codes: 0 the client receives at least one endpoint, 3 it receives
none (no endpoints, all evicted, or the authority is unknown), 1 the admin
API could not be read, 2 usage (an invalid authority included).

flags:`

// exitNothingServed is explain's exit code when the client would receive
// no endpoint.
const exitNothingServed = 3

func explainCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9996", "admin address; http:// or https:// may lead it (https uses the TLS flags)")
	zone := fs.String("zone", "", "the client's zone, for topology hints (none: hints do not apply)")
	asJSON := fs.Bool("json", false, "print the API's JSON as is")
	var tf tlsFlags
	tf.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), explainUsage)
		fs.PrintDefaults()
	}
	// The authority may come before the flags, as in watch.
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
	a, err := discovery.ParseAuthority(positional[0], 0)
	if err != nil {
		fmt.Fprintln(stderr, "tributary explain:", err)
		return 2
	}
	cfg, err := tf.config()
	if err != nil {
		fmt.Fprintln(stderr, "tributary explain:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var v adminpkg.ServiceAPI
	path := "/api/v1/services/" + url.PathEscape(a.String()) + "?zone=" + url.QueryEscape(*zone)
	if err := adminGet(ctx, adminClient(cfg), *admin, path, &v); err != nil {
		fmt.Fprintln(stderr, "tributary explain:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	} else {
		printExplain(stdout, v)
	}
	if v.Served == 0 {
		return exitNothingServed
	}
	return 0
}

// printExplain writes the explain view as a summary and a table.
func printExplain(out io.Writer, v adminpkg.ServiceAPI) {
	client := "a client without a zone"
	if v.Zone != "" {
		client = "a client in zone " + v.Zone
	}
	fmt.Fprintf(out, "%s for %s: %d of %d endpoints served\n", v.Authority, client, v.Served, len(v.Endpoints))
	if !v.Exists {
		fmt.Fprintln(out, "no source declares this authority")
	}
	if len(v.Members) > 1 {
		fmt.Fprintf(out, "aliases: %s\n", strings.Join(v.Members[1:], ", "))
	}
	if len(v.Tiers) > 0 {
		used := "none"
		switch {
		case v.Tier >= 0 && v.Tier < len(v.Tiers):
			used = fmt.Sprintf("tier %d (%s)", v.Tier, strings.Join(v.Tiers[v.Tier].Sources, ", "))
		case v.Tier == len(v.Tiers):
			used = "the sources no tier names"
		}
		fmt.Fprintf(out, "failover: %d tiers; in use: %s\n", len(v.Tiers), used)
	}
	mode := "not in panic mode"
	if v.Panic {
		mode = "PANIC MODE: critical endpoints are served too"
	}
	if v.PanicThreshold == 0 {
		mode = "panic threshold off"
	}
	fmt.Fprintf(out, "panic threshold %g%%: %d of %d addresses serving; %s\n", v.PanicThreshold*100, v.ServingAddresses, v.Addresses, mode)
	if v.ZoneHints {
		fmt.Fprintf(out, "topology hints applied for zone %s\n", v.Zone)
	}
	if len(v.Endpoints) == 0 {
		return
	}
	fmt.Fprintln(out)
	t := &columns{}
	t.add("ADDRESS", "ZONE", "HEALTH", "SERVED", "SOURCE", "REASON", "WHY", "KEY")
	for _, e := range v.Endpoints {
		served := "no"
		if e.Served {
			served = "yes"
		}
		health := e.Health
		if e.Stale {
			health += " (stale)"
		}
		t.add(e.Address, dash(printable(e.Zone)), health, served, printable(e.Source), e.Reason, printable(e.Why), printable(e.Key))
	}
	t.write(out)
	// The active checks' last failures, for the endpoints that had one.
	var fails []string
	for _, e := range v.Endpoints {
		if c := e.Check; c != nil && c.LastError != "" {
			fails = append(fails, fmt.Sprintf("%s (%s, %s check of %s, now %s): last failure at %s, %d in a row: %s",
				e.Address, printable(e.Source), c.Type, c.Target, c.Verdict, c.LastErrorTime.Format(time.RFC3339), c.ConsecutiveFailures, printable(c.LastError)))
		}
	}
	if len(fails) > 0 {
		fmt.Fprintln(out, "\nactive health checks:")
		for _, f := range fails {
			fmt.Fprintln(out, "  "+f)
		}
	}
}

// printable replaces control characters, which a source may have sent, so
// they cannot move the terminal's cursor or change its state.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
