package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	adminpkg "github.com/tributary-mesh/tributary/destination/admin"
	"github.com/tributary-mesh/tributary/discovery"
)

const statusUsage = `usage: tributary status [flags]

Prints the server's sources (kind, state, endpoints, last success, last
error) and its largest services (endpoints by health and by source), read
from the admin JSON API (/debug/sources, /debug/registry).

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
	if fs.NArg() != 0 || *top < 0 {
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
	var reg adminpkg.RegistryJSON
	if err := adminGet(ctx, adminClient(cfg), *admin, "/debug/registry", &reg); err != nil {
		fmt.Fprintln(stderr, "tributary status:", err)
		return 1
	}
	if printStatus(stdout, reg, *top, time.Now()) {
		return 0
	}
	return exitDegraded
}

// printStatus writes the sources and the top largest services; it reports
// whether every source is synced and up.
func printStatus(out io.Writer, reg adminpkg.RegistryJSON, top int, now time.Time) bool {
	endpoints := map[string]int{}
	services := map[string]int{}
	for _, s := range reg.Services {
		endpoints[s.Source] += len(s.Endpoints)
		services[s.Source]++
	}
	healthy := true
	t := &columns{}
	t.add("SOURCE", "KIND", "STATE", "SERVICES", "ENDPOINTS", "LAST SUCCESS", "LAST ERROR")
	srcs := append([]discovery.SourceStatus(nil), reg.Sources...)
	sort.Slice(srcs, func(i, j int) bool { return srcs[i].Name < srcs[j].Name })
	for _, s := range srcs {
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
		t.add(s.Name, s.Kind, state, fmt.Sprint(services[s.Name]), fmt.Sprint(endpoints[s.Name]), last, lastErr)
	}
	t.write(out)
	if top == 0 {
		return healthy
	}

	// The largest services: a service is an authority, across sources.
	type svc struct {
		authority string
		total     int
		health    map[string]int
		sources   map[string]int
	}
	byAuth := map[string]*svc{}
	for _, s := range reg.Services {
		v := byAuth[s.Authority]
		if v == nil {
			v = &svc{authority: s.Authority, health: map[string]int{}, sources: map[string]int{}}
			byAuth[s.Authority] = v
		}
		for _, e := range s.Endpoints {
			v.total++
			v.health[e.Health]++
			v.sources[e.Source]++
		}
	}
	all := make([]*svc, 0, len(byAuth))
	for _, v := range byAuth {
		all = append(all, v)
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].total != all[j].total {
			return all[i].total > all[j].total
		}
		return all[i].authority < all[j].authority
	})
	if len(all) == 1 {
		fmt.Fprint(out, "\n1 service")
	} else {
		fmt.Fprintf(out, "\n%d services", len(all))
	}
	if len(all) > top {
		fmt.Fprintf(out, "; the %d largest", top)
		all = all[:top]
	}
	fmt.Fprintln(out, ":")
	t = &columns{}
	t.add("AUTHORITY", "ENDPOINTS", "BY HEALTH", "BY SOURCE")
	for _, v := range all {
		t.add(v.authority, fmt.Sprint(v.total), counts(v.health), counts(v.sources))
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
