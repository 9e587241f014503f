package main

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFlagsOverrideOnlyWhatIsSet(t *testing.T) {
	f := newFlags(io.Discard)
	if err := f.fs.Parse([]string{"--rate", "7", "--streams", "0", "--ramp-rates", "10, 20", "--idle-endpoints", "0,50", "--duration", "2s"}); err != nil {
		t.Fatal(err)
	}
	o, err := f.options("hotfanout")
	if err != nil {
		t.Fatal(err)
	}
	if o.Rate != 7 || o.Streams != 0 || o.Duration != 2*time.Second {
		t.Errorf("set flags not applied: rate %v streams %d duration %v", o.Rate, o.Streams, o.Duration)
	}
	if o.Services != 1 || o.Conns != 100 || o.Endpoints != 10 {
		t.Errorf("unset flags changed the hotfanout defaults: %+v", o)
	}
	if !slices.Equal(o.RampRates, []float64{10, 20}) || !slices.Equal(o.IdleEndpoints, []int{0, 50}) {
		t.Errorf("lists: %v %v", o.RampRates, o.IdleEndpoints)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"fast"},
		{"steady", "extra"},
		{"steady", "--ramp-rates", "x"},
		{"steady", "--idle-streams", "-5"},
		{"steady", "--no-such-flag"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (usage)", args, code)
		}
		if stdout.Len() != 0 {
			t.Errorf("run(%q) printed a result: %s", args, stdout.String())
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"-h"}, io.Discard, &stderr); code != 0 || !strings.Contains(stderr.String(), "hotfanout") {
		t.Errorf("-h: %d %s", code, stderr.String())
	}
}
