//go:build integration

// Package browser drives the admin port's status page in a real headless
// Chromium (Debian's, /usr/bin/chromium; `make test-integration` installs
// it) with chromedp, against the real tributary binary: search, open a
// service, watch it follow the registry, and check that what a source sends
// is shown as text and never run.
package browser

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// pageWait bounds each wait for the page: it polls the API every 2 s, and
// health checks take a few hundred milliseconds to decide.
const pageWait = 30 * time.Second

// chromium is the browser binary: $CHROMIUM, else Debian's.
func chromium(t *testing.T) string {
	t.Helper()
	path := os.Getenv("CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(path); err != nil {
		t.Fatalf("no Chromium at %s (make chromium installs Debian's; CHROMIUM names another): %v", path, err)
	}
	return path
}

// browser starts a headless Chromium with a fresh profile and returns a
// tab's context; everything ends with the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	// Start the browser now, without a deadline (one would stop the
	// browser), so that its start does not count against a wait.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", chromium(t), err)
	}
	return ctx
}

// run runs steps in order, with a deadline.
func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, pageWait)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// read runs one action that returns a value, with a deadline.
func read[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, pageWait)
	defer cancel()
	v, err := chromedp.Run(c, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

type css = chromedp.CSS

const hostile = `<script>window.pwned=1</script><img src=x onerror="window.pwned=2">`

func servicesFile(a, b, c string, withC bool) string {
	s := fmt.Sprintf(`services:
  - name: web.demo
    port: 8080
    endpoints:
      - address: %s
        zone: zone-a
      - address: %s
        zone: zone-b
        labels: {note: '%s'}
`, a, b, hostile)
	if withC {
		s += fmt.Sprintf("      - address: %s\n        zone: zone-b\n", c)
	}
	return s + `  - name: api.demo
    port: 9000
    endpoints:
      - address: ` + b + `
`
}

// TestStatusPageFollowsTheRegistry: search, open a service, see an
// endpoint go when its file entry is removed and turn critical when its
// health check fails, and a hostile label shown as text.
func TestStatusPageFollowsTheRegistry(t *testing.T) {
	a, b, c := harness.Acceptor(t, "127.0.0.1:0"), harness.Acceptor(t, "127.0.0.1:0"), harness.Acceptor(t, "127.0.0.1:0")
	dir := t.TempDir()
	path := filepath.Join(dir, "svc.yaml")
	harness.WriteAtomic(t, path, servicesFile(a.Addr().String(), b.Addr().String(), c.Addr().String(), true))
	s := harness.Start(t, dir, "sources:\n  - {name: local, kind: file, paths: [svc.yaml], health_check: "+harness.QuickTCPCheck+"}\n")
	ctx := browser(t)
	row := func(addr, extra string) css { return css(`#endpoints tbody tr[data-address="` + addr + `"]` + extra) }

	run(t, ctx, "load the page",
		chromedp.Navigate("http://"+s.Admin+"/"),
		chromedp.WaitVisible(css(`#sources tbody tr[data-source="local"]`)),
		chromedp.WaitVisible(css(`#services tbody tr[data-authority="api.demo:9000"]`)),
	)
	run(t, ctx, "search",
		chromedp.SendKeys(css(`#q`), "web"),
		chromedp.WaitNotPresent(css(`#services tbody tr[data-authority="api.demo:9000"]`)),
	)
	if rows := read(t, ctx, "count rows", chromedp.Evaluate[int](`document.querySelectorAll("#services tbody tr").length`)); rows != 1 {
		t.Fatalf("search for web: %d rows", rows)
	}
	run(t, ctx, "open web.demo:8080",
		chromedp.Click(css(`#services tbody tr[data-authority="web.demo:8080"] button`)),
		chromedp.WaitVisible(row(a.Addr().String(), `[data-reason="served"]`)),
		chromedp.WaitVisible(row(c.Addr().String(), `[data-reason="served"]`)),
	)

	// The hostile label is text in the labels cell, and nothing ran.
	label := read(t, ctx, "read the label", chromedp.TextContent(row(b.Addr().String(), ` td.labels`)))
	pwned := read(t, ctx, "window.pwned", chromedp.Evaluate[bool](`window.pwned !== undefined`))
	elements := read(t, ctx, "markup", chromedp.Evaluate[int](`document.querySelectorAll("#endpoints script, #endpoints img").length`))
	if label != "note="+hostile {
		t.Errorf("label shown as %q, want the text %q", label, "note="+hostile)
	}
	if pwned || elements != 0 {
		t.Errorf("a source's label became markup: pwned %v, elements %d", pwned, elements)
	}

	// The file entry of c is removed: its row goes.
	harness.WriteAtomic(t, path, servicesFile(a.Addr().String(), b.Addr().String(), c.Addr().String(), false))
	run(t, ctx, "c removed", chromedp.WaitNotPresent(row(c.Addr().String(), "")))

	// a's listener closes: its check fails, it turns critical and, one
	// of two addresses still serving, it is evicted.
	a.Close()
	run(t, ctx, "a critical", chromedp.WaitVisible(row(a.Addr().String(), `[data-health="critical"][data-reason="critical"]`)))
	// The why names the check's own error, and the health cell shows the
	// last failure, as text.
	if why := read(t, ctx, "why", chromedp.TextContent(row(a.Addr().String(), ` td:nth-child(5)`))); !strings.Contains(why, "evicted") ||
		!strings.Contains(why, "its active tcp health check of "+a.Addr().String()+" fails: dial tcp "+a.Addr().String()) || !strings.Contains(why, "connection refused") {
		t.Errorf("why: %q", why)
	}
	if fail := read(t, ctx, "last failure", chromedp.TextContent(row(a.Addr().String(), ` td:nth-child(3) .check-error`))); !strings.HasPrefix(fail, "last failure: dial tcp "+a.Addr().String()) ||
		!strings.Contains(fail, "connection refused") || !strings.Contains(fail, " in a row)") {
		t.Errorf("last failure: %q", fail)
	}
	// The client-zone selector: a client in zone-b is explained too.
	// (Value and event in one script: the page re-renders the selector as
	// it polls.)
	read(t, ctx, "choose zone-b", chromedp.Evaluate[bool](`(() => { const z = document.getElementById("zone"); z.value = "zone-b"; return z.dispatchEvent(new Event("change")); })()`))
	run(t, ctx, "zone-b chosen",
		chromedp.WaitReady(css(`#zone option[value="zone-b"]:checked`)),
		chromedp.WaitVisible(row(b.Addr().String(), `[data-reason="served"]`)),
	)
	if h := read(t, ctx, "hash", chromedp.Evaluate[string](`location.hash`)); !strings.Contains(h, "zone=zone-b") {
		t.Errorf("hash %q", h)
	}
	s.WaitLog(`msg="endpoint critical: evicted" authority=web.demo:8080 address=` + a.Addr().String())

	// b's listener closes too: none of two serving is below the panic
	// threshold (50%), so both are served again, the page says so, and the
	// server logs and counts the transition: for web.demo:8080 and for
	// api.demo:9000, whose one endpoint is b.
	b.Close()
	run(t, ctx, "panic",
		chromedp.WaitVisible(row(a.Addr().String(), `[data-reason="served_in_panic"]`)),
		chromedp.WaitVisible(row(b.Addr().String(), `[data-reason="served_in_panic"]`)),
		chromedp.WaitVisible(css(`#panicking-list li button`)),
	)
	s.WaitLog(`msg="panic threshold: serving every endpoint, critical ones too" authority=web.demo:8080 serving=0 addresses=2 threshold=0.5`)
	// The two authorities' transitions are made in one pass, in no set order.
	for _, want := range []string{"tributary_panic_active 2", `tributary_panic_transitions_total{direction="enter"} 2`, `tributary_health_evictions_total{source="local"} 1`} {
		deadline := time.Now().Add(harness.WaitFor)
		for {
			_, metrics := s.HTTPGet("/metrics")
			if strings.Contains(metrics, want+"\n") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("/metrics lacks %q", want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestStatusPageScreenshot1000 renders the page with 1,000 services, pages
// through them, opens one, and writes a screenshot to
// $TRIBUTARY_ARTIFACTS (else the temporary folder).
func TestStatusPageScreenshot1000(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range 1000 {
		fmt.Fprintf(&b, "  - name: svc-%04d.demo\n    port: 8080\n    endpoints:\n", i)
		for j := range 1 + i%3 {
			health := "passing"
			if (i+j)%7 == 0 {
				health = "critical"
			}
			fmt.Fprintf(&b, "      - address: 10.%d.%d.%d:8080\n        zone: zone-%c\n        health: %s\n        labels: {app: svc-%04d}\n",
				i/250, i%250, j+1, 'a'+rune(j), health, i)
		}
	}
	harness.WriteAtomic(t, filepath.Join(dir, "svc.yaml"), b.String())
	s := harness.Start(t, dir, "sources:\n  - name: local\n    kind: file\n    paths: [\"svc.yaml\"]\n")
	ctx := browser(t)

	run(t, ctx, "load",
		chromedp.Navigate("http://"+s.Admin+"/"),
		chromedp.WaitVisible(css(`#services tbody tr[data-authority="svc-0000.demo:8080"]`)),
	)
	total := read(t, ctx, "total", chromedp.TextContent(css(`#services-total`)))
	run(t, ctx, "next page",
		chromedp.Click(css(`#next`)),
		chromedp.WaitVisible(css(`#services tbody tr[data-authority="svc-0050.demo:8080"]`)),
	)
	page := read(t, ctx, "page", chromedp.TextContent(css(`#page`)))
	if total != "(1000)" || page != "51–100 of 1000" {
		t.Errorf("total %q, page %q", total, page)
	}
	run(t, ctx, "open a service",
		chromedp.Click(css(`#services tbody tr[data-authority="svc-0055.demo:8080"] button`)),
		chromedp.WaitVisible(css(`#endpoints tbody tr[data-address="10.0.55.1:8080"]`)),
	)
	png := read(t, ctx, "screenshot", chromedp.FullScreenshot(100))
	out := os.Getenv("TRIBUTARY_ARTIFACTS")
	if out == "" {
		out = os.TempDir()
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(out, "tributary-status-1000.png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		t.Fatal(err)
	}
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Fatalf("the screenshot is not a PNG (%d bytes)", len(png))
	}
	t.Logf("screenshot of the status page with 1,000 services: %s (%d bytes)", file, len(png))
}
