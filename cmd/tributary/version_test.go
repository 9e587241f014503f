package main

import (
	"bytes"
	"testing"
)

// TestVersionStamp: what make release stamps in with -X is what
// `tributary version` prints.
func TestVersionStamp(t *testing.T) {
	defer func(v, c, d string) { version, commit, date = v, c, d }(version, commit, date)
	version, commit, date = "v1.2.3", "0123456789abcdef", "2026-12-06T15:00:00Z"
	var out bytes.Buffer
	if code := run([]string{"version"}, &out, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if want := "tributary v1.2.3 commit 0123456789abcdef built 2026-12-06T15:00:00Z\n"; out.String() != want {
		t.Errorf("version printed %q, want %q", out.String(), want)
	}
}
