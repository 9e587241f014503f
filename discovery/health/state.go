package health

import (
	"time"

	"github.com/tributary-mesh/tributary/discovery"
)

// state is what the checker knows of one checked address: the verdict of
// its checks, with the hysteresis and flap dampening that keep it steady.
// It is a plain value; the caller serialises access.
type state struct {
	// health is HealthUnknown (not checked yet), HealthPassing or
	// HealthCritical.
	health discovery.Health
	// ok and fail count consecutive results.
	ok, fail int
	// flaps counts falls that came soon (less than MaxHoldDown) after a
	// readmission, in a row.
	flaps int
	// upSince is the last readmission (critical to passing), zero if none.
	upSince time.Time
	// holdUntil: a held-down address is not readmitted before this.
	holdUntil time.Time
}

func newState(hc *Check) state {
	return state{health: hc.InitialHealth}
}

// observe takes one check result at now and reports whether the verdict
// changed.
//
//   - Unknown: the first result decides, either way.
//   - Passing: UnhealthyThreshold failures in a row make it critical. A
//     fall less than MaxHoldDown after the last readmission is a flap; the
//     n-th flap in a row holds the address down for HoldDown·2^(n-1), at
//     most MaxHoldDown, counted from the fall.
//   - Critical: HealthyThreshold successes in a row readmit it, once any
//     hold-down is over.
func (s *state) observe(success bool, now time.Time, hc *Check) bool {
	if success {
		s.ok++
		s.fail = 0
	} else {
		s.fail++
		s.ok = 0
	}
	switch s.health {
	case discovery.HealthPassing:
		if success || s.fail < hc.UnhealthyThreshold {
			return false
		}
		s.health = discovery.HealthCritical
		if hc.HoldDown > 0 && !s.upSince.IsZero() && now.Sub(s.upSince) < hc.MaxHoldDown {
			s.flaps++
			s.holdUntil = now.Add(holdFor(s.flaps, hc))
		} else {
			s.flaps = 0
			s.holdUntil = time.Time{}
		}
		return true
	case discovery.HealthCritical:
		if !success || s.ok < hc.HealthyThreshold || now.Before(s.holdUntil) {
			return false
		}
		s.health = discovery.HealthPassing
		s.upSince = now
		return true
	default: // unknown: the first result decides
		if success {
			s.health = discovery.HealthPassing
		} else {
			s.health = discovery.HealthCritical
		}
		return true
	}
}

// heldDown reports whether the address is being kept out for flapping.
func (s *state) heldDown(now time.Time) bool {
	return s.health == discovery.HealthCritical && now.Before(s.holdUntil)
}

// holdFor is the hold-down after the n-th flap in a row.
func holdFor(n int, hc *Check) time.Duration {
	d := hc.HoldDown
	for i := 1; i < n && d < hc.MaxHoldDown; i++ {
		d *= 2
	}
	return min(d, max(hc.MaxHoldDown, hc.HoldDown))
}

// combine is an endpoint's health given its source's word and the
// checker's verdict: a critical either way is critical; a passing check
// makes an unknown or passing endpoint passing (a warning stays a
// warning); no verdict yet leaves the source's word.
func combine(source, check discovery.Health) discovery.Health {
	switch {
	case source == discovery.HealthCritical || check == discovery.HealthCritical:
		return discovery.HealthCritical
	case check == discovery.HealthPassing && source != discovery.HealthWarning:
		return discovery.HealthPassing
	}
	return source
}
