package destination

import (
	"context"
	"testing"

	"github.com/hashicorp/go-memdb"
)

// TestWaitAny: a profile stream's wait wakes for any channel of its watch
// set, whatever its size (small sets take the shallow select, large ones
// memdb's), and reports the end of its context.
func TestWaitAny(t *testing.T) {
	for _, n := range []int{1, 4, 6, 7, 40} {
		for fire := 0; fire < n; fire += max(1, n/3) {
			ws := memdb.NewWatchSet()
			chs := make([]chan struct{}, n)
			for i := range chs {
				chs[i] = make(chan struct{})
				ws.Add(chs[i])
			}
			close(chs[fire])
			if !waitAny(context.Background(), ws) {
				t.Fatalf("n=%d: closing channel %d did not wake the wait", n, fire)
			}
		}
		ws := memdb.NewWatchSet()
		for range n {
			ws.Add(make(chan struct{}))
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if waitAny(ctx, ws) {
			t.Fatalf("n=%d: an ended context reported a change", n)
		}
	}
}
