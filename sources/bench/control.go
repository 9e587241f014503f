package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"
)

// The control API, served on Config.Control (loopback only, no
// authentication: it is a benchmark tool):
//
//	GET  /status                          Status as JSON
//	POST /churn?rate=R[&duration=D]       start churn at R changes/s (stopping after
//	                                      the Go duration D), re-rate it, or stop it
//	                                      with R=0; answers the Status after the change
//	GET  /truth                           Truth as JSON: the exact current state
//
// Every call is served by the source's own goroutine between two ticks, so
// the Status or Truth it returns is consistent with everything handed over:
// all changes up to Seq have reached the sink, none after.

// Status is the state of the churn.
type Status struct {
	Services  int     `json:"services"`
	Endpoints int     `json:"endpoints"`
	Host      string  `json:"host"`
	Rate      float64 `json:"rate"`    // current rate; 0 when stopped
	Running   bool    `json:"running"` // churn is on (perhaps waiting for start_after)
	Tick      string  `json:"tick,omitempty"`
	// Seq is the sequence number of the latest change handed over (the
	// number of changes generated since the start).
	Seq uint64 `json:"seq"`
	// Changes counts the changes generated since churn last started.
	Changes uint64 `json:"changes"`
	// Skipped counts changes not generated because the source was more
	// than one second behind its rate (a stalled or overloaded process).
	Skipped uint64 `json:"skipped"`
	// StartedNs is when the running churn started (Unix nanoseconds).
	StartedNs int64 `json:"started_ns,omitempty"`
}

// Truth is the exact state of every service after Seq changes, services in
// index order (service i is fmt.Sprintf(host, i)).
type Truth struct {
	Seq      uint64         `json:"seq"`
	Services []TruthService `json:"services"`
}

// TruthService is one service of a Truth.
type TruthService struct {
	Authority string          `json:"authority"`
	Endpoints []TruthEndpoint `json:"endpoints"`
}

// TruthEndpoint is one endpoint: its address, the weight a client receives
// and the bench_seq label it carries.
type TruthEndpoint struct {
	Addr   string `json:"addr"`
	Weight uint32 `json:"weight"`
	Seq    uint64 `json:"seq"`
}

// serveControl listens on cfg.Control and serves the control API until
// stop is called; requests go to the Run goroutine through reqs.
func (s *Source) serveControl(ctx context.Context, reqs chan<- request) (stop func(), err error) {
	ln, err := net.Listen("tcp", s.cfg.Control)
	if err != nil {
		return nil, err
	}
	s.log.Info("bench control API listening", "addr", ln.Addr().String())
	if s.onListen != nil {
		s.onListen(ln.Addr())
	}
	call := func(r *http.Request, req request) (response, error) {
		req.reply = make(chan response, 1)
		select {
		case reqs <- req:
		case <-ctx.Done():
			return response{}, errStopped
		case <-r.Context().Done():
			return response{}, r.Context().Err()
		}
		select {
		case resp := <-req.reply:
			return resp, nil
		case <-ctx.Done():
			return response{}, errStopped
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		resp, err := call(r, request{op: "status"})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, resp.status)
	})
	mux.HandleFunc("POST /churn", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		rate, err := strconv.ParseFloat(q.Get("rate"), 64)
		if err != nil || math.IsNaN(rate) || rate < 0 || rate > MaxRate {
			http.Error(w, fmt.Sprintf("rate=%q: want a number of changes per second from 0 to %d", q.Get("rate"), MaxRate), http.StatusBadRequest)
			return
		}
		if rate > 0 && s.cfg.Services*s.cfg.Endpoints == 0 {
			http.Error(w, "churn needs at least one endpoint", http.StatusBadRequest)
			return
		}
		var d time.Duration
		if v := q.Get("duration"); v != "" {
			if d, err = time.ParseDuration(v); err != nil || d < 0 {
				http.Error(w, fmt.Sprintf("duration=%q: want a Go duration such as 30s", v), http.StatusBadRequest)
				return
			}
		}
		resp, err := call(r, request{op: "churn", rate: rate, d: d})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, resp.status)
	})
	mux.HandleFunc("GET /truth", func(w http.ResponseWriter, r *http.Request) {
		resp, err := call(r, request{op: "truth"})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, resp.snap.truth())
	})

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			s.log.Error("bench control API stopped", "err", err)
		}
	}()
	return func() {
		// Handlers give up once ctx is done, so this is quick; the bound
		// is for a client that never finishes reading a Truth.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
		<-done
	}, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
