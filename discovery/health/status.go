package health

import (
	"net/netip"

	"github.com/tributary-mesh/tributary/discovery"
)

// CheckState is what the checker knows of one endpoint's active check
// (discovery.CheckState, which the admin API reads).
type CheckState = discovery.CheckState

// CheckState returns what the checks of source's endpoint addr, listed
// under authority a, have found; false when no active check covers it (no
// checks for the source or the authority, or no such endpoint). It only
// reads: it changes no verdict and no schedule.
func (c *Checker) CheckState(source string, a discovery.Authority, addr netip.AddrPort) (CheckState, bool) {
	c.mu.Lock()
	var sink *sourceSink
	for _, s := range c.sinks {
		if s.name == source {
			sink = s
			break
		}
	}
	c.mu.Unlock()
	if sink == nil || !addr.IsValid() {
		return CheckState{}, false
	}
	hc := sink.cfg.For(a)
	if hc == nil || hc.Type == CheckNone {
		return CheckState{}, false
	}
	if hc.Port != 0 {
		addr = netip.AddrPortFrom(addr.Addr(), hc.Port)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	t := sink.targets[targetKey{hc, addr}]
	if t == nil {
		return CheckState{}, false
	}
	st := CheckState{
		Type: hc.Type, Target: t.addr, Verdict: t.st.health,
		LastCheck: t.lastCheck, LastError: t.lastErr, LastErrorTime: t.lastErrTime,
		ConsecutiveFailures: t.st.fail, ConsecutiveSuccesses: t.st.ok,
	}
	if t.st.heldDown(c.now()) {
		st.HeldDownUntil = t.st.holdUntil
	}
	return st, true
}
