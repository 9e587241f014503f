package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/tributary-mesh/tributary/sources/bench"
)

// Status asks the bench source for the state of its churn.
func (s *Server) Status(ctx context.Context) (bench.Status, error) {
	var st bench.Status
	err := s.control(ctx, http.MethodGet, "/status", &st)
	return st, err
}

// Churn sets the bench source's churn rate (changes per second); 0 stops it.
// The returned Status is taken after the change.
func (s *Server) Churn(ctx context.Context, rate float64) (bench.Status, error) {
	var st bench.Status
	err := s.control(ctx, http.MethodPost, "/churn?rate="+strconv.FormatFloat(rate, 'f', -1, 64), &st)
	return st, err
}

// Truth asks the bench source for the exact current state of every service.
func (s *Server) Truth(ctx context.Context) (bench.Truth, error) {
	var t bench.Truth
	err := s.control(ctx, http.MethodGet, "/truth", &t)
	return t, err
}

func (s *Server) control(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+s.Control+path, nil)
	if err != nil {
		return err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return fmt.Errorf("bench control API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("bench control API %s %s: %s %s", method, path, resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("bench control API %s %s: %w", method, path, err)
	}
	return nil
}
