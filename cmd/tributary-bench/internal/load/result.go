package load

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Result is one workload's figures, in the order they were added. It
// prints as one line of key=value pairs and marshals as a JSON object with
// the same keys and order.
type Result struct {
	keys   []string
	values map[string]any
	// OK is false when a correctness check failed (lost final states,
	// contract violations, streams that never synced) or the run failed.
	OK bool
}

func newResult(workload string) *Result {
	r := &Result{values: map[string]any{}, OK: true}
	r.Set("workload", workload)
	return r
}

// Set adds or replaces a figure. Floats are kept with 3 decimals (more
// when small), durations should be converted by the caller (ms, s).
func (r *Result) Set(key string, v any) {
	if _, ok := r.values[key]; !ok {
		r.keys = append(r.keys, key)
	}
	if f, ok := v.(float64); ok {
		v = round(f)
	}
	r.values[key] = v
}

// Get returns a figure.
func (r *Result) Get(key string) (any, bool) {
	v, ok := r.values[key]
	return v, ok
}

// Fail marks the result failed with a reason (appended to "errors").
func (r *Result) Fail(format string, args ...any) {
	r.OK = false
	msg := fmt.Sprintf(format, args...)
	if prev, ok := r.values["errors"].(string); ok && prev != "" {
		msg = prev + "; " + msg
	}
	r.Set("errors", msg)
}

// Warn records a caveat (appended to "warnings") without failing.
func (r *Result) Warn(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if prev, ok := r.values["warnings"].(string); ok && prev != "" {
		msg = prev + "; " + msg
	}
	r.Set("warnings", msg)
}

func round(f float64) float64 {
	if f == 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return f
	}
	digits := 3
	if a := math.Abs(f); a < 0.1 {
		digits = max(3, 2-int(math.Floor(math.Log10(a))))
	}
	p := math.Pow(10, float64(digits))
	return math.Round(f*p) / p
}

func format(v any) string {
	switch x := v.(type) {
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case string:
		if x == "" || strings.ContainsAny(x, " \t\"=") {
			return strconv.Quote(x)
		}
		return x
	case time.Duration:
		return x.String()
	default:
		return fmt.Sprint(x)
	}
}

// Line is the result as one line: key=value pairs separated by spaces,
// strings quoted when they hold spaces, quotes or '='.
func (r *Result) Line() string {
	var b strings.Builder
	for i, k := range r.keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(format(r.values[k]))
	}
	b.WriteString(" ok=")
	b.WriteString(strconv.FormatBool(r.OK))
	return b.String()
}

// MarshalJSON writes the figures as an object in their order, with "ok".
func (r *Result) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for _, k := range r.keys {
		kj, _ := json.Marshal(k)
		v := r.values[k]
		if d, ok := v.(time.Duration); ok {
			v = d.String()
		}
		vj, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		b.Write(kj)
		b.WriteByte(':')
		b.Write(vj)
		b.WriteByte(',')
	}
	b.WriteString(`"ok":`)
	b.WriteString(strconv.FormatBool(r.OK))
	b.WriteByte('}')
	return b.Bytes(), nil
}
