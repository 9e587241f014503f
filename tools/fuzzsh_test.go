// Package tools holds the repository's scripts; its test checks fuzz.sh.
package tools

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// stubGo stands in for the go command: one package with one fuzz target,
// whose run prints and does what $SCENARIO says.
const stubGo = `#!/usr/bin/env bash
case "$1 $2" in
"test -list") printf 'FuzzX\nok  \texample.test/p\t0.01s\n' ;;
"list -f") echo "$PKGDIR" ;;
"test -run")
	echo "fuzz: elapsed: 3s, execs: 100 (0/sec), new interesting: 0 (total: 5)"
	case "$SCENARIO" in
	pass) echo PASS; exit 0 ;;
	race) printf -- '--- FAIL: FuzzX (3.01s)\n    context deadline exceeded\nFAIL\nexit status 1\n'; exit 1 ;;
	race-with-input)
		mkdir -p "$PKGDIR/testdata/fuzz/FuzzX" && echo x > "$PKGDIR/testdata/fuzz/FuzzX/0123"
		printf -- '--- FAIL: FuzzX (3.01s)\n    context deadline exceeded\nFAIL\nexit status 1\n'; exit 1 ;;
	crash)
		mkdir -p "$PKGDIR/testdata/fuzz/FuzzX" && echo x > "$PKGDIR/testdata/fuzz/FuzzX/4567"
		printf -- '--- FAIL: FuzzX (0.20s)\n    --- FAIL: FuzzX (0.00s)\n        panic: boom\nFAIL\nexit status 1\n'; exit 1 ;;
	deadline-and-more)
		printf -- '--- FAIL: FuzzX (3.01s)\n    fuzz_test.go:9: wrong answer\n    context deadline exceeded\nFAIL\nexit status 1\n'; exit 1 ;;
	esac ;;
esac
`

// TestFuzzShCountsOnlyTheBareDeadlineRace: fuzz.sh passes a target that
// failed only with Go's fuzz-deadline race (golang/go#75804) and wrote no
// failing input, and fails every other failure.
func TestFuzzShCountsOnlyTheBareDeadlineRace(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script, err := filepath.Abs("fuzz.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		scenario string
		pass     bool
	}{
		{"pass", true},
		{"race", true},
		{"race-with-input", false},
		{"crash", false},
		{"deadline-and-more", false},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			dir := t.TempDir()
			goBin := filepath.Join(dir, "go")
			if err := os.WriteFile(goBin, []byte(stubGo), 0o755); err != nil {
				t.Fatal(err)
			}
			pkgDir := filepath.Join(dir, "pkg")
			if err := os.Mkdir(pkgDir, 0o755); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("bash", script, "3s", "example.test/p")
			cmd.Env = append(os.Environ(), "GO="+goBin, "SCENARIO="+tc.scenario, "PKGDIR="+pkgDir)
			out, err := cmd.CombinedOutput()
			if passed := err == nil; passed != tc.pass {
				t.Fatalf("fuzz.sh passed = %v, want %v (err %v):\n%s", passed, tc.pass, err, out)
			}
			if said := strings.Contains(string(out), "golang/go#75804"); said != (tc.scenario == "race") {
				t.Errorf("fuzz.sh named the race = %v:\n%s", said, out)
			}
		})
	}
}
