package load

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/linkerd/linkerd2-proxy-api/go/destination"
)

// profile measures what an open GetProfile stream costs the server: W
// streams (stream i asks for the profile of service i mod S, over
// connection i mod C), each read up to its first profile, which must name
// its service; then the server's memory with them open, as for Get streams
// in idle. Proxies hold a profile stream per destination next to its Get
// stream, so this is the other half of a proxy's cost.
func (r *runner) profile(ctx context.Context) error {
	o := r.o
	r.setShape()
	if err := r.startServer(ctx, o.Services, o.Endpoints); err != nil {
		return err
	}
	truth, err := r.srv.Truth(ctx)
	if err != nil {
		return err
	}
	if len(truth.Services) == 0 {
		return fmt.Errorf("the bench source has no services")
	}
	base, err := r.srv.Settle(ctx)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conns, err := dial(r.srv.API, o.Conns)
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var (
		wg          sync.WaitGroup
		synced, bad atomic.Int64
		failMu      sync.Mutex
		fail        error
	)
	start := time.Now()
	// One opener per connection, as the Get workloads open theirs.
	for c := range conns {
		wg.Go(func() {
			client := pb.NewDestinationClient(conns[c])
			for i := c; i < o.Streams; i += len(conns) {
				authority := truth.Services[i%len(truth.Services)].Authority
				st, err := client.GetProfile(ctx, &pb.GetDestination{Path: authority})
				var p *pb.DestinationProfile
				if err == nil {
					p, err = st.Recv()
				}
				if err != nil {
					failMu.Lock()
					if fail == nil {
						fail = fmt.Errorf("profile stream %d (%s): %w", i, authority, err)
					}
					failMu.Unlock()
					return
				}
				// The bench source's services exist: the profile names its host.
				if host, _, _ := strings.Cut(authority, ":"); p.GetFullyQualifiedName() != host {
					bad.Add(1)
				}
				synced.Add(1)
			}
		})
	}
	wg.Wait()
	r.res.Set("sync_s", time.Since(start).Seconds())
	r.res.Set("streams_synced", synced.Load())
	r.res.Set("wrong_profiles", bad.Load())
	if fail != nil {
		return fail
	}
	if bad.Load() > 0 {
		r.res.Fail("%d profiles did not name their service", bad.Load())
	}
	now, err := r.srv.Settle(ctx)
	if err != nil {
		return err
	}
	r.res.Set("rss_mib", mib(now.RSS))
	r.memPerStream(base, now, int(synced.Load()), "")
	r.logf("%d profile streams: RSS %.1f MiB", synced.Load(), mib(now.RSS))
	return nil
}
