package etcd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/tributary-mesh/tributary/discovery/retry"
)

// Handler receives what a Follower reads of a prefix.
type Handler interface {
	// Listed hands over every key under the prefix at one revision: the
	// handler's state is exactly this from now on.
	Listed(kvs []*mvccpb.KeyValue)
	// Changed hands over the events of one watch response, in revision
	// order, each newer than the last listing.
	Changed(events []*clientv3.Event)
	// Failed says etcd could not be read; the handler keeps its state.
	Failed(err error)
}

// Backoff bounds of a Follower between failed attempts.
const (
	minBackoff = 200 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Follower keeps a Handler in step with every key under a prefix: a listing
// at revision R, then a watch from R+1, so that no change is lost or seen
// twice. A watch that etcd cancels because R+1 was compacted away is never
// resumed: the prefix is listed again and the handler gets the whole state.
//
// A watch does not say when etcd is gone (the client reconnects it
// quietly), so while watching the Follower also probes etcd every
// CheckInterval with a one-key linearizable read. A failed probe calls
// Handler.Failed; the first probe that succeeds after one lists again, so a
// restarted or re-elected etcd is reconciled with a whole listing.
type Follower struct {
	Client *clientv3.Client
	Prefix string
	// Timeout bounds one listing or probe. CheckInterval is the probe's
	// period. Both required.
	Timeout       time.Duration
	CheckInterval time.Duration
	Log           *slog.Logger

	// beforeWatch, when set, runs between a listing at rev and the watch
	// from rev+1 (tests hold the watch back there to compact under it).
	beforeWatch func(rev int64)
}

// errCompacted says the watch's start revision was compacted away.
type errCompacted struct{ rev int64 }

func (e errCompacted) Error() string {
	return fmt.Sprintf("watch start revision compacted (etcd keeps revisions from %d)", e.rev)
}

// errRecovered says etcd answers again after failed probes.
var errRecovered = errors.New("etcd answers again")

// Run lists and watches until ctx ends.
func (f *Follower) Run(ctx context.Context, h Handler) {
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bo := retry.Backoff{Min: minBackoff, Max: maxBackoff}
	failures := 0
	for ctx.Err() == nil {
		rev, err := f.list(ctx, h)
		if err == nil {
			failures = 0
			bo.Reset()
			if f.beforeWatch != nil {
				f.beforeWatch(rev)
			}
			err = f.watch(ctx, h, rev)
		}
		if ctx.Err() != nil {
			return
		}
		var compacted errCompacted
		switch {
		case errors.As(err, &compacted):
			log.Info("etcd compacted the watch's history; listing the prefix again", "prefix", f.Prefix, "err", err)
			continue
		case errors.Is(err, errRecovered):
			log.Info("etcd answers again; listing the prefix again", "prefix", f.Prefix)
			continue
		}
		failures++
		h.Failed(err)
		wait := bo.Next()
		level := slog.LevelWarn
		if failures > 1 {
			level = slog.LevelDebug
		}
		log.Log(ctx, level, "etcd could not be read; keeping the last state", "prefix", f.Prefix, "err", err, "failures", failures, "retry_in", wait)
		if retry.Wait(ctx, wait) != nil {
			return
		}
	}
}

// list hands the prefix's whole state to h and returns its revision.
func (f *Follower) list(ctx context.Context, h Handler) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	resp, err := f.Client.Get(lctx, f.Prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("listing %q: %w", f.Prefix, err)
	}
	h.Listed(resp.Kvs)
	return resp.Header.Revision, nil
}

// watch follows the prefix from rev+1 and returns why it stopped.
func (f *Follower) watch(ctx context.Context, h Handler, rev int64) error {
	// WithRequireLeader: a member cut off from its cluster cancels the
	// watch rather than serve a history that has stopped.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	// Client.Watch does not return before etcd has opened the watch
	// stream, which it waits for as long as etcd is unreachable: opened
	// aside, so that probes go on meanwhile.
	var opening sync.WaitGroup
	defer opening.Wait()
	defer cancel()
	opened := make(chan clientv3.WatchChan, 1)
	opening.Go(func() {
		opened <- f.Client.Watch(wctx, f.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	})
	var wch clientv3.WatchChan // nil, so never ready, until opened
	tick := time.NewTicker(f.CheckInterval)
	defer tick.Stop()
	down := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wch = <-opened:
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch closed")
			}
			if resp.CompactRevision != 0 {
				return errCompacted{resp.CompactRevision}
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					return errCompacted{}
				}
				return fmt.Errorf("watching %q: %w", f.Prefix, err)
			}
			if resp.Canceled {
				return fmt.Errorf("watching %q: cancelled by etcd", f.Prefix)
			}
			if len(resp.Events) > 0 {
				h.Changed(resp.Events)
			}
		case <-tick.C:
			err := f.probe(ctx)
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case err != nil:
				down = true
				h.Failed(err)
			case down:
				return errRecovered
			}
		}
	}
}

// probe is a linearizable read of one key: it fails when this member
// cannot reach a quorum, not only when it is gone.
func (f *Follower) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	if _, err := f.Client.Get(pctx, f.Prefix, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("probing etcd: %w", err)
	}
	return nil
}

// NewClient returns an etcd client for c. It does not wait for a
// connection: the first request does. Close it when done.
func (c Conn) NewClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		Username:             c.Username,
		Password:             c.Password,
		TLS:                  c.TLS,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: c.Timeout,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to 2 minutes: an etcd
		// back after an outage would be seen that late. Cap it at 5s.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: c.Timeout,
		})},
	})
}
