package health

import (
	"strings"
	"testing"
	"time"

	"github.com/tributary-mesh/tributary/discovery"
)

func check(mod func(*Check)) *Check {
	hc := DefaultCheck()
	hc.HealthyThreshold, hc.UnhealthyThreshold = 2, 3
	hc.HoldDown, hc.MaxHoldDown = 10*time.Second, 40*time.Second
	if mod != nil {
		mod(&hc)
	}
	return &hc
}

// run feeds results ("+" pass, "-" fail, one per second from t0) and
// renders the verdict after each: u(nknown), p(assing), c(ritical), h(eld
// down).
func runResults(s *state, hc *Check, t0 time.Time, results string) string {
	var b strings.Builder
	for i, r := range results {
		now := t0.Add(time.Duration(i) * time.Second)
		s.observe(r == '+', now, hc)
		switch {
		case s.heldDown(now):
			b.WriteByte('h')
		default:
			b.WriteByte(s.health.String()[0])
		}
	}
	return b.String()
}

func TestStateThresholdsAndHysteresis(t *testing.T) {
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name    string
		initial discovery.Health
		results string
		want    string
	}{
		{"unknown: the first pass decides", discovery.HealthUnknown, "+", "p"},
		{"unknown: the first fail decides", discovery.HealthUnknown, "-", "c"},
		{"fall after three failures", discovery.HealthPassing, "+--+---", "pppppp" + "c"},
		{"rise after two successes", discovery.HealthCritical, "-+-++", "cccc" + "p"},
		{"alternating never flips (up)", discovery.HealthPassing, "-+-+-+-+-+-+", "pppppppppppp"},
		{"alternating never flips (down)", discovery.HealthCritical, "+-+-+-+-+-+-", "cccccccccccc"},
		{"two and two never falls with fall 3", discovery.HealthPassing, "--++--++--", "pppppppppp"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hc := check(func(hc *Check) { hc.InitialHealth = tc.initial })
			s := newState(hc)
			if got := runResults(&s, hc, t0, tc.results); got != tc.want {
				t.Fatalf("verdicts %s, want %s", got, tc.want)
			}
		})
	}
}

func TestStateHoldDownGrowsAndIsForgiven(t *testing.T) {
	hc := check(func(hc *Check) {
		hc.InitialHealth = discovery.HealthCritical
		hc.HealthyThreshold, hc.UnhealthyThreshold = 1, 1
	})
	s := newState(hc)
	now := time.Unix(1000, 0)
	step := func(ok bool, d time.Duration) discovery.Health {
		now = now.Add(d)
		s.observe(ok, now, hc)
		return s.health
	}
	if step(true, 0) != discovery.HealthPassing {
		t.Fatal("not admitted")
	}
	// The first fall after the first admission: the admission was not a
	// readmission from a flap history, but it was an admission from
	// critical, so a fall 1s later is a flap: held 10s.
	if step(false, time.Second) != discovery.HealthCritical || s.flaps != 1 {
		t.Fatalf("flaps %d", s.flaps)
	}
	if step(true, 9*time.Second) != discovery.HealthCritical || !s.heldDown(now) {
		t.Fatal("readmitted during the 10s hold-down")
	}
	if step(true, time.Second) != discovery.HealthPassing { // 10s after the fall
		t.Fatal("not readmitted after the hold-down")
	}
	// Second flap: 20s.
	step(false, time.Second)
	if s.flaps != 2 || s.holdUntil.Sub(now) != 20*time.Second {
		t.Fatalf("second flap: flaps %d, hold %v", s.flaps, s.holdUntil.Sub(now))
	}
	step(true, 20*time.Second)
	// Third and fourth: 40s, then capped at max_hold_down (40s).
	step(false, time.Second)
	if s.holdUntil.Sub(now) != 40*time.Second {
		t.Fatalf("third flap hold %v", s.holdUntil.Sub(now))
	}
	step(true, 40*time.Second)
	step(false, time.Second)
	if s.flaps != 4 || s.holdUntil.Sub(now) != 40*time.Second {
		t.Fatalf("fourth flap: flaps %d hold %v", s.flaps, s.holdUntil.Sub(now))
	}
	// Up for longer than max_hold_down: forgiven, the next fall holds nothing.
	step(true, 40*time.Second)
	if step(false, 41*time.Second) != discovery.HealthCritical || s.flaps != 0 || s.heldDown(now) {
		t.Fatalf("not forgiven: flaps %d held %v", s.flaps, s.heldDown(now))
	}
	if step(true, time.Second) != discovery.HealthPassing {
		t.Fatal("a forgiven endpoint waits")
	}

	// hold_down 0: no dampening at all.
	off := check(func(hc *Check) {
		hc.HealthyThreshold, hc.UnhealthyThreshold, hc.HoldDown = 1, 1, 0
		hc.InitialHealth = discovery.HealthPassing
	})
	s2 := newState(off)
	if got := runResults(&s2, off, now, "-+-+-+"); got != "cpcpcp" {
		t.Fatalf("without hold-down: %s", got)
	}
}

func TestCombine(t *testing.T) {
	const (
		U = discovery.HealthUnknown
		P = discovery.HealthPassing
		W = discovery.HealthWarning
		C = discovery.HealthCritical
	)
	for _, tc := range []struct{ source, check, want discovery.Health }{
		{U, U, U}, {U, P, P}, {U, C, C},
		{P, U, P}, {P, P, P}, {P, C, C},
		{W, U, W}, {W, P, W}, {W, C, C},
		{C, U, C}, {C, P, C}, {C, C, C},
	} {
		if got := combine(tc.source, tc.check); got != tc.want {
			t.Errorf("combine(%s, %s) = %s, want %s", tc.source, tc.check, got, tc.want)
		}
	}
}
