package hist

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// exact is the reference quantile: the ceil(q·n)-th smallest value.
func exact(sorted []int64, q float64) int64 {
	rank := max(int(math.Ceil(q*float64(len(sorted)))), 1)
	return sorted[rank-1]
}

func TestBucketsCoverEveryValue(t *testing.T) {
	values := []uint64{0, 1, 63, 64, 127, 128, 129, 255, 256, 1000, 1 << 20, 1<<20 + 1, math.MaxInt64, math.MaxUint64}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		values = append(values, r.Uint64()>>r.IntN(64))
	}
	for _, v := range values {
		i := index(v)
		if i < 0 || i >= buckets {
			t.Fatalf("index(%d) = %d, outside [0, %d)", v, i, buckets)
		}
		lo, hi := bounds(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d = [%d, %d]", v, i, lo, hi)
		}
		if width := hi - lo; lo >= 2*sub && float64(width) > float64(lo)*RelativeError {
			t.Fatalf("bucket %d = [%d, %d] is wider than %.3f of its low end", i, lo, hi, RelativeError)
		}
	}
	// Adjacent buckets tile the number line.
	for i := 1; i < buckets; i++ {
		_, prevHi := bounds(i - 1)
		lo, _ := bounds(i)
		if lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, bucket %d ends at %d", i, lo, i-1, prevHi)
		}
	}
	if _, hi := bounds(buckets - 1); hi != math.MaxUint64 {
		t.Fatalf("last bucket ends at %d", hi)
	}
}

func TestEmpty(t *testing.T) {
	var h Histogram
	if h.Count() != 0 || h.Quantile(0.99) != 0 || h.Max() != 0 || h.Min() != 0 || h.Mean() != 0 {
		t.Error("an empty histogram reports non-zero figures")
	}
}

func TestSmallValuesAreExact(t *testing.T) {
	var h Histogram
	for v := int64(1); v <= 100; v++ {
		h.Record(v)
	}
	for _, tt := range []struct {
		q    float64
		want int64
	}{{0, 1}, {0.01, 1}, {0.5, 50}, {0.9, 90}, {0.99, 99}, {1, 100}} {
		if got := h.Quantile(tt.q); got != tt.want {
			t.Errorf("Quantile(%v) = %d, want %d", tt.q, got, tt.want)
		}
	}
	if h.Mean() != 50.5 || h.Min() != 1 || h.Max() != 100 || h.Count() != 100 {
		t.Errorf("mean %v min %d max %d count %d", h.Mean(), h.Min(), h.Max(), h.Count())
	}
}

// TestQuantilesWithinError compares with a sorted copy of the values, on
// distributions shaped like latencies.
func TestQuantilesWithinError(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	dists := map[string]func() int64{
		"log-uniform 1ns..10s": func() int64 { return int64(math.Exp(r.Float64() * math.Log(1e10))) },
		"exponential ~1ms":     func() int64 { return int64(r.ExpFloat64() * 1e6) },
		"bimodal with tail": func() int64 {
			if r.IntN(100) == 0 {
				return 200e6 + r.Int64N(50e6)
			}
			return 300e3 + r.Int64N(100e3)
		},
		"constant": func() int64 { return 1234567 },
	}
	for name, gen := range dists {
		t.Run(name, func(t *testing.T) {
			var h Histogram
			vals := make([]int64, 50000)
			for i := range vals {
				vals[i] = gen()
				h.Record(vals[i])
			}
			slices.Sort(vals)
			for _, q := range []float64{0, 0.001, 0.5, 0.9, 0.99, 0.999, 1} {
				want, got := exact(vals, q), h.Quantile(q)
				if got < want || float64(got) > float64(want)*(1+RelativeError)+1 {
					t.Errorf("Quantile(%v) = %d, exact %d: outside [exact, exact·(1+%.4f)]", q, got, want, RelativeError)
				}
			}
			if h.Max() != vals[len(vals)-1] || h.Min() != vals[0] {
				t.Errorf("max %d min %d, want %d %d", h.Max(), h.Min(), vals[len(vals)-1], vals[0])
			}
		})
	}
}

func TestNegativeCountsAsZero(t *testing.T) {
	var h Histogram
	h.Record(-5)
	h.Record(10)
	if h.Quantile(0.5) != 0 || h.Min() != 0 || h.Max() != 10 {
		t.Errorf("p50 %d min %d max %d", h.Quantile(0.5), h.Min(), h.Max())
	}
}

func TestConcurrentRecord(t *testing.T) {
	var h Histogram
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 10000 {
				h.Record(int64(g*10000 + i + 1))
			}
		})
	}
	wg.Wait()
	if h.Count() != 80000 || h.Max() != 80000 || h.Min() != 1 {
		t.Errorf("count %d max %d min %d", h.Count(), h.Max(), h.Min())
	}
	if p := h.Quantile(0.5); p < 40000 || float64(p) > 40000*(1+RelativeError) {
		t.Errorf("p50 %d", p)
	}
}
