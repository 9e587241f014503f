package discovery

import (
	"net/netip"
	"time"
)

// CheckState is what an active health check (discovery/health) knows of
// one endpoint: for the admin API, why an endpoint the check evicts is
// critical. Defined here so that the checker and its readers share it.
type CheckState struct {
	// Type is the check's type (tcp, http, grpc).
	Type string
	// Target is the address probed: the endpoint's, or its host with the
	// check's port.
	Target netip.AddrPort
	// Verdict is the check's own verdict (HealthUnknown until the first
	// check ends), before it is combined with the source's health.
	Verdict Health
	// LastCheck is when the last check ended; zero: none yet.
	LastCheck time.Time
	// LastError is the last failed check's error, and LastErrorTime when it
	// ended; they stay after later checks pass ("" and zero: none failed).
	LastError     string
	LastErrorTime time.Time
	// ConsecutiveFailures and ConsecutiveSuccesses count the latest
	// results in a row (one of them is 0).
	ConsecutiveFailures  int
	ConsecutiveSuccesses int
	// HeldDownUntil: a flapping endpoint is kept critical until then
	// (zero: not held down).
	HeldDownUntil time.Time
}
