package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	adminpkg "github.com/tributary-mesh/tributary/destination/admin"
)

const statusUsage = `usage: tributary status [flags]

Prints the server's sources (kind, state, endpoints, last success, last
error), the authorities in panic mode, and its largest services (endpoints
by health and by source), read from the admin JSON API (/api/v1/sources,
/api/v1/services?sort=endpoints; docs/status-page.md).

Exit codes: 0 every source is synced and up, 3 the server answered but a
source is not synced, stale or withdrawn (stale_after), 1 the admin API
could not be read, 2 usage.

flags:`

// exitDegraded is status's exit code for a server that answers with a
// source that is not synced, stale or expired.
const exitDegraded = 3

func statusCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9996", "admin address; http:// or https:// may lead it (https uses the TLS flags)")
	top := fs.Int("top", 10, "how many of the largest services to list; 0: none")
	var tf tlsFlags
	tf.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), statusUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 || *top < 0 || *top > 1000 {
		fs.Usage()
		return 2
	}
	cfg, err := tf.config()
	if err != nil {
		fmt.Fprintln(stderr, "tributary status:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	client := adminClient(cfg)
	var sources adminpkg.SourcesAPI
	if err := adminGet(ctx, client, *admin, "/api/v1/sources", &sources); err != nil {
		fmt.Fprintln(stderr, "tributary status:", err)
		return 1
	}
	var services *adminpkg.ServicesAPI
	if *top > 0 {
		services = &adminpkg.ServicesAPI{}
		if err := adminGet(ctx, client, *admin, "/api/v1/services?sort=endpoints&limit="+strconv.Itoa(*top), services); err != nil {
			fmt.Fprintln(stderr, "tributary status:", err)
			return 1
		}
	}
	if printStatus(stdout, sources, services, time.Now()) {
		return 0
	}
	return exitDegraded
}

// printStatus writes the sources, the authorities in panic mode and the
// largest services (when services is not nil); it reports whether every
// source is synced and up.
func printStatus(out io.Writer, sources adminpkg.SourcesAPI, services *adminpkg.ServicesAPI, now time.Time) bool {
	healthy := true
	t := &columns{}
	t.add("SOURCE", "KIND", "STATE", "SERVICES", "ENDPOINTS", "LAST SUCCESS", "LAST ERROR")
	for _, s := range sources.Sources {
		state := "up"
		switch {
		case s.Expired:
			state = "expired"
		case s.Stale:
			state = "stale"
		case !s.Synced:
			state = "not synced"
		case s.HeldWithdrawal:
			state = "holding a withdrawal"
		}
		if s.Expired || s.Stale || !s.Synced {
			healthy = false
		}
		lastErr := "-"
		if s.LastError != "" {
			lastErr = s.LastError
			if !s.LastErrorTime.IsZero() {
				lastErr = ago(now, s.LastErrorTime) + ": " + lastErr
			}
		}
		last := "-"
		if !s.LastSuccess.IsZero() {
			last = ago(now, s.LastSuccess)
		}
		t.add(s.Name, s.Kind, state, fmt.Sprint(s.Services), fmt.Sprint(s.Endpoints), last, lastErr)
	}
	t.write(out)
	if len(sources.Panicking) > 0 {
		n := max(sources.PanickingTotal, len(sources.Panicking))
		if n > len(sources.Panicking) {
			fmt.Fprintf(out, "\n%d in panic mode (critical endpoints served too); the first %d:\n", n, len(sources.Panicking))
		} else {
			fmt.Fprintf(out, "\n%d in panic mode (critical endpoints served too):\n", n)
		}
		t = &columns{}
		t.add("AUTHORITY", "SERVING", "SINCE")
		for _, p := range sources.Panicking {
			t.add(p.Authority, fmt.Sprintf("%d of %d", p.Serving, p.Addresses), ago(now, p.Since))
		}
		t.write(out)
	}
	if services == nil {
		return healthy
	}

	// The largest services: a service is an authority, across sources.
	if services.Total == 1 {
		fmt.Fprint(out, "\n1 service")
	} else {
		fmt.Fprintf(out, "\n%d services", services.Total)
	}
	if services.Total > len(services.Services) {
		fmt.Fprintf(out, "; the %d largest", len(services.Services))
	}
	fmt.Fprintln(out, ":")
	t = &columns{}
	t.add("AUTHORITY", "ENDPOINTS", "BY HEALTH", "BY SOURCE")
	for _, v := range services.Services {
		t.add(v.Authority, fmt.Sprint(v.Endpoints), counts(v.ByHealth), counts(v.BySource))
	}
	t.write(out)
	return healthy
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func ago(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String() + " ago"
}

// columns is a small table, aligned when written.
type columns struct{ rows [][]string }

func (c *columns) add(cells ...string) { c.rows = append(c.rows, cells) }

func (c *columns) write(out io.Writer) {
	var w []int
	for _, r := range c.rows {
		for i, cell := range r {
			if i >= len(w) {
				w = append(w, 0)
			}
			w[i] = max(w[i], len(cell))
		}
	}
	for _, r := range c.rows {
		var b strings.Builder
		for i, cell := range r {
			if i == len(r)-1 {
				b.WriteString(cell)
				break
			}
			fmt.Fprintf(&b, "%-*s  ", w[i], cell)
		}
		fmt.Fprintln(out, strings.TrimRight(b.String(), " "))
	}
}
