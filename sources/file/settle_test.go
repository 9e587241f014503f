package file

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Real writers that do not rename atomically (issue 11). Every group the
// source hands over for the file must be exactly some complete version that
// was written, and the last must be the final version.

// versionAddrs is a complete version: endpoints 10.0.0.lo .. 10.0.0.hi.
func versionAddrs(lo, hi int) []string {
	var out []string
	for i := lo; i <= hi; i++ {
		out = append(out, fmt.Sprintf("10.0.0.%d:80", i))
	}
	return out
}

// versions tracks the complete versions written to one file.
type versions struct {
	path string
	all  [][]string // desc() of each
}

func (v *versions) add(addrs []string) string {
	v.all = append(v.all, desc("a.demo", 80, addrs...))
	return svc("a.demo", 80, addrs...)
}

// waitFinal reads Sink calls until the file is handed over as final; it
// fails on any hand-over of the file that is not a complete version.
func (v *versions) waitFinal(t *testing.T, f *fixture, final []string) {
	t.Helper()
	want := desc("a.demo", 80, final...)
	for {
		c := f.next(t)
		if c.Op != "update" {
			continue
		}
		for _, g := range c.Groups {
			if g.Key != v.path {
				continue
			}
			got := describeServices(g.Services)
			if !slices.ContainsFunc(v.all, func(w []string) bool { return slices.Equal(w, got) }) {
				t.Fatalf("handed over %v, which is no complete version of the file; logs:\n%s", got, f.logs)
			}
			if slices.Equal(got, want) {
				return
			}
		}
	}
}

// truncateWrite truncates path, then writes each part after a pause.
func truncateWrite(t *testing.T, path string, pause time.Duration, parts ...string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	for _, p := range parts {
		time.Sleep(pause)
		if _, err := fh.WriteString(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
}

// The settling rule alone (no withdrawal confirmation): a shell redirection
// whose content comes 150 ms after the truncation.
func TestSettleSlowShellRedirection(t *testing.T) {
	dir := t.TempDir()
	v := &versions{path: filepath.Join(dir, "a.yaml")}
	write(t, v.path, v.add(versionAddrs(1, 10)))
	f := startWith(t, dir, DefaultSettle, 0, "*.yaml")
	f.next(t)

	next := versionAddrs(2, 11)
	src := filepath.Join(t.TempDir(), "new.yaml")
	write(t, src, v.add(next))
	script := fmt.Sprintf("sh -c 'sleep 0.15; cat %s' > %s", src, v.path)
	if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v %s", script, err, out)
	}
	v.waitFinal(t, f, next)
}

// The settling rule alone: a prefix of a YAML list is valid YAML, so a file
// caught half written parses and lists only its first endpoints.
func TestSettleHalfWrittenPrefix(t *testing.T) {
	dir := t.TempDir()
	v := &versions{path: filepath.Join(dir, "a.yaml")}
	write(t, v.path, v.add(versionAddrs(1, 10)))
	f := startWith(t, dir, DefaultSettle, 0, "*.yaml")
	f.next(t)

	final := versionAddrs(1, 11)
	content := v.add(final)
	cut := strings.Index(content, "10.0.0.4:80\n") + len("10.0.0.4:80\n")
	if _, err := Parse("prefix", []byte(content[:cut])); err != nil {
		t.Fatalf("the prefix should parse: %v", err)
	}
	truncateWrite(t, v.path, 100*time.Millisecond, content[:cut], content[cut:])
	v.waitFinal(t, f, final)
}

// The confirmation rule: with a settling wait shorter than the writer's
// pause, the empty file settles, and is held until the content comes.
func TestConfirmHoldsAnEmptyFileUntilItsContentComes(t *testing.T) {
	dir := t.TempDir()
	v := &versions{path: filepath.Join(dir, "a.yaml")}
	write(t, v.path, v.add(versionAddrs(1, 10)))
	f := startWith(t, dir, testSettle, 10*time.Second, "*.yaml")
	f.next(t)

	final := versionAddrs(3, 12)
	truncateWrite(t, v.path, 4*testSettle, v.add(final))
	v.waitFinal(t, f, final)
	logs := f.logs.String()
	for _, want := range []string{
		"level=INFO msg=\"services file shrinks sharply; holding its last state until the change is confirmed\" path=" + v.path + " withdrawn=10 endpoints=10 endpoints_after=0",
		"level=INFO msg=\"services file: the held withdrawal was replaced by content that does not shrink sharply; applying it\" path=" + v.path,
		"level=INFO msg=\"services file withdrew endpoints\" path=" + v.path + " withdrawn=2 endpoints_before=10 endpoints_after=10",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("no log %q:\n%s", want, logs)
		}
	}
}

// A file that stays empty, or keeps a small part of its endpoints, is
// applied once it has said so for the confirmation period.
func TestConfirmAppliesAWithdrawalThatPersists(t *testing.T) {
	for _, tt := range []struct {
		name      string
		content   string
		want      []string
		withdrawn int
	}{
		{"empty", "", []string{}, 10},
		{"services: []", "services: []\n", []string{}, 10},
		{"two of ten endpoints", svc("a.demo", 80, versionAddrs(1, 2)...), desc("a.demo", 80, versionAddrs(1, 2)...), 8},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "a.yaml")
			write(t, path, svc("a.demo", 80, versionAddrs(1, 10)...))
			write(t, filepath.Join(dir, "z.yaml"), svc("z.demo", 90, "10.0.0.90:90"))
			f := start(t, dir, "*.yaml")
			f.next(t)

			write(t, path, tt.content)
			expectGroups(t, f.nextChange(t), "update", map[string][]string{path: tt.want})
			logs := f.logs.String()
			withdrawn := tt.withdrawn
			for _, want := range []string{
				fmt.Sprintf("level=INFO msg=\"services file shrinks sharply; holding its last state until the change is confirmed\" path=%s withdrawn=%d", path, withdrawn),
				fmt.Sprintf("level=INFO msg=\"services file: the withdrawal held its ground for the confirmation period; applying it\" path=%s withdrawn=%d", path, withdrawn),
				fmt.Sprintf("level=INFO msg=\"services file withdrew endpoints\" path=%s withdrawn=%d", path, withdrawn),
			} {
				if !strings.Contains(logs, want) {
					t.Errorf("no log %q:\n%s", want, logs)
				}
			}
			f.settle(t, "healthy")
		})
	}
}

// A held withdrawal that the file takes back is never applied.
func TestConfirmHeldWithdrawalUndone(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	content := svc("a.demo", 80, versionAddrs(1, 10)...)
	write(t, path, content)
	f := startWith(t, dir, testSettle, time.Hour, "*.yaml")
	f.next(t)

	write(t, path, "")
	waitLog(t, f, "holding its last state")
	write(t, path, content)
	waitLog(t, f, "the held withdrawal was undone by newer content")
	// Nothing was handed over; a refresh finds nothing new.
	f.settle(t, "healthy")
}

// Deleting or renaming a file away withdraws at once, and says how much.
func TestDeleteWithdrawsAtOnceAndLogs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	write(t, path, svc("a.demo", 80, versionAddrs(1, 10)...))
	f := startWith(t, dir, testSettle, time.Hour, "*.yaml")
	f.next(t)
	if err := os.Rename(path, filepath.Join(dir, "a.yaml.bak")); err != nil {
		t.Fatal(err)
	}
	expectGroups(t, f.nextChange(t), "update", map[string][]string{path: {}})
	if want := "level=INFO msg=\"services file gone; withdrawing its services\" path=" + path + " withdrawn=10 services=1"; !strings.Contains(f.logs.String(), want) {
		t.Errorf("no log %q:\n%s", want, f.logs)
	}
}

// Settling is judged per file: a file rewritten without pause does not
// hold back another file's change.
func TestSettleIsPerFile(t *testing.T) {
	dir := t.TempDir()
	busy := filepath.Join(dir, "busy.yaml")
	quiet := filepath.Join(dir, "quiet.yaml")
	write(t, busy, svc("busy.demo", 80, "10.0.1.1:80"))
	write(t, quiet, svc("quiet.demo", 80, "10.0.2.1:80"))
	f := startWith(t, dir, DefaultSettle, 0, "*.yaml")
	f.next(t)

	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			// A new content every 10 ms never settles.
			_ = os.WriteFile(busy, []byte(svc("busy.demo", 80, fmt.Sprintf("10.0.1.%d:80", 2+i%200))), 0o644)
		}
	}()
	defer func() { close(stop); <-done }()

	writeAtomic(t, quiet, svc("quiet.demo", 80, "10.0.2.2:80"))
	expectGroups(t, f.nextChange(t), "update", map[string][]string{quiet: desc("quiet.demo", 80, "10.0.2.2:80")})
}

// 200 rewrites in 2 s, mixing atomic renames, one-shot in-place writes and
// in-place writes in two halves: only complete versions are handed over,
// and the last is the final file.
func TestSettleManyMixedRewrites(t *testing.T) {
	dir := t.TempDir()
	v := &versions{path: filepath.Join(dir, "a.yaml")}
	write(t, v.path, v.add(versionAddrs(1, 10)))
	f := startWith(t, dir, DefaultSettle, 0, "*.yaml")
	f.next(t)

	var last []string
	start := time.Now()
	for i := range 200 {
		lo := 1 + (i*7)%10
		last = versionAddrs(lo, lo+9)
		content := v.add(last)
		switch i % 3 {
		case 0:
			writeAtomic(t, v.path, content)
		case 1:
			write(t, v.path, content)
		case 2:
			half := len(content) / 2
			truncateWrite(t, v.path, time.Millisecond, content[:half], content[half:])
		}
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * 10 * time.Millisecond)))
	}
	v.waitFinal(t, f, last)
}

func waitLog(t *testing.T, f *fixture, substr string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(f.logs.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("no log %q within %v:\n%s", substr, wait, f.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
