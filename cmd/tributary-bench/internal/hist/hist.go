// Package hist is a small log-linear histogram of non-negative integers
// (nanoseconds here), in the manner of HdrHistogram: every power of two is
// split into 64 equal sub-buckets, so any recorded value is known within
// 1/64 (1.6 %) of itself, over the whole int64 range, in a fixed 30 KB.
// Record is lock-free and safe for concurrent use.
package hist

import (
	"math"
	"math/bits"
	"sync/atomic"
)

const (
	subBits = 6
	sub     = 1 << subBits // sub-buckets per power of two
	// buckets covers every uint64: exponent shifts 0..57, each with the
	// upper half [sub, 2*sub) of its sub-bucket range.
	buckets = (64-subBits)*sub + sub
)

// RelativeError bounds |reported - actual| / actual for any quantile.
const RelativeError = 1.0 / sub

// Histogram counts values in log-linear buckets. The zero value is ready.
type Histogram struct {
	counts [buckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Int64
	min    atomic.Int64 // stored as ^v so that the zero value means "none"
}

// index is the bucket of v: values below 2*sub have their own bucket;
// above, v>>shift keeps the top subBits+1 bits, in [sub, 2*sub).
func index(v uint64) int {
	if v < 2*sub {
		return int(v)
	}
	shift := bits.Len64(v) - (subBits + 1)
	return shift*sub + int(v>>shift)
}

// bounds is the range [lo, hi] of the values bucket i holds.
func bounds(i int) (lo, hi uint64) {
	if i < 2*sub {
		return uint64(i), uint64(i)
	}
	shift := i/sub - 1
	m := uint64(i - shift*sub)
	lo = m << shift
	return lo, lo + (1 << shift) - 1
}

// Record adds v; a negative v counts as 0 (a clock that stepped back).
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.counts[index(uint64(v))].Add(1)
	h.n.Add(1)
	h.sum.Add(uint64(v))
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
	for {
		m := h.min.Load()
		if (m != 0 && v >= ^m) || h.min.CompareAndSwap(m, ^v) {
			break
		}
	}
}

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n.Load() }

// Max is the largest value recorded, exactly; 0 when empty.
func (h *Histogram) Max() int64 { return h.max.Load() }

// Min is the smallest value recorded, exactly; 0 when empty.
func (h *Histogram) Min() int64 {
	if m := h.min.Load(); m != 0 {
		return ^m
	}
	return 0
}

// Mean is the exact mean; 0 when empty.
func (h *Histogram) Mean() float64 {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return float64(h.sum.Load()) / float64(n)
}

// Quantile returns the value at quantile q (0 ≤ q ≤ 1): the largest value
// the bucket holding the ceil(q·n)-th smallest value can hold, clamped to
// [Min, Max]. It is never below the true quantile and at most
// RelativeError above it. 0 when empty.
func (h *Histogram) Quantile(q float64) int64 {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	q = math.Max(0, math.Min(1, q))
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			_, hi := bounds(i)
			v := int64(min(hi, math.MaxInt64))
			return max(min(v, h.Max()), h.Min())
		}
	}
	return h.Max() // counts raced ahead of n while recording: the top
}
