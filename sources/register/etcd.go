package register

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/sources/etcd"
)

// etcdBackend keeps each registration as a key bound to an etcd lease.
type etcdBackend struct {
	conn   etcd.Conn
	prefix string
	log    *slog.Logger

	mu  sync.Mutex
	cli *clientv3.Client // while run runs
}

func newEtcdBackend(conn etcd.Conn, prefix string, log *slog.Logger) *etcdBackend {
	return &etcdBackend{conn: conn, prefix: prefix, log: log}
}

// record is a registration as stored in etcd (JSON).
type record struct {
	Authority  string            `json:"authority"`
	Address    string            `json:"address"`
	Zone       string            `json:"zone,omitempty"`
	Weight     uint32            `json:"weight,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Identity   string            `json:"identity,omitempty"`
	ServerName string            `json:"server_name,omitempty"`
	Protocol   string            `json:"protocol,omitempty"`
	TTL        string            `json:"ttl"`
	By         string            `json:"by,omitempty"`
}

func toRecord(r Registration) record {
	return record{
		Authority: r.Authority.String(), Address: r.Endpoint.Addr.String(), Zone: r.Endpoint.Zone,
		Weight: r.Endpoint.Weight, Labels: r.Endpoint.Labels, Identity: r.Endpoint.Identity.Name,
		ServerName: r.Endpoint.Identity.ServerName, Protocol: r.Endpoint.Protocol.String(),
		TTL: r.TTL.String(), By: r.By,
	}
}

func (rec record) registration() (Registration, error) {
	var r Registration
	var err error
	if r.Authority, err = discovery.ParseAuthority(rec.Authority, 0); err != nil {
		return r, err
	}
	if r.Endpoint.Addr, err = netip.ParseAddrPort(rec.Address); err != nil {
		return r, err
	}
	if r.Endpoint.Identity, err = discovery.ParseIdentity(rec.Identity, rec.ServerName); err != nil {
		return r, err
	}
	if r.Endpoint.Protocol, err = discovery.ParseProtocol(rec.Protocol); err != nil {
		return r, err
	}
	r.Endpoint.Zone, r.Endpoint.Weight, r.Endpoint.Labels = rec.Zone, rec.Weight, rec.Labels
	r.TTL, _ = time.ParseDuration(rec.TTL)
	r.By = rec.By
	return r, nil
}

func (b *etcdBackend) client() (*clientv3.Client, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cli == nil {
		return nil, ErrNotRunning
	}
	return b.cli, nil
}

func leaseID(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }

func parseLeaseID(s string) (clientv3.LeaseID, error) {
	v, err := strconv.ParseInt(s, 16, 64)
	if err != nil || v <= 0 {
		return 0, ErrUnknownLease
	}
	return clientv3.LeaseID(v), nil
}

// unavailable wraps an etcd error that is no fault of the caller's.
type unavailable struct{ err error }

func (u unavailable) Error() string { return "etcd: " + u.err.Error() }
func (u unavailable) Unwrap() error { return u.err }

// ErrBackend is matched (errors.Is) by errors of the backend itself (etcd
// unreachable): the API answers them with Unavailable.
var ErrBackend = errors.New("backend unavailable")

func (u unavailable) Is(target error) bool { return target == ErrBackend }

func (b *etcdBackend) register(ctx context.Context, r Registration) (Lease, error) {
	cli, err := b.client()
	if err != nil {
		return Lease{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.conn.Timeout)
	defer cancel()
	secs := int64((r.TTL + time.Second - 1) / time.Second)
	g, err := cli.Grant(ctx, secs)
	if err != nil {
		return Lease{}, unavailable{err}
	}
	prev, err := b.put(ctx, cli, r, g.ID)
	if err != nil {
		_, _ = cli.Revoke(context.WithoutCancel(ctx), g.ID)
		return Lease{}, err
	}
	// The key moved to the new lease; the old one has nothing left to keep.
	if prev != nil && prev.Lease != 0 && clientv3.LeaseID(prev.Lease) != g.ID {
		_, _ = cli.Revoke(ctx, clientv3.LeaseID(prev.Lease))
	}
	r.TTL = time.Duration(g.TTL) * time.Second
	return Lease{ID: leaseID(g.ID), Registration: r}, nil
}

// put writes r's key on lease and returns what the key held before. An
// Exclusive registration writes only if the key is absent or its record
// has r's By: a transaction on the key's revision as read, retried if the
// key changed in between.
func (b *etcdBackend) put(ctx context.Context, cli *clientv3.Client, r Registration, lease clientv3.LeaseID) (*mvccpb.KeyValue, error) {
	key := b.prefix + r.Key()
	val, _ := json.Marshal(toRecord(r))
	if !r.Exclusive {
		resp, err := cli.Put(ctx, key, string(val), clientv3.WithLease(lease), clientv3.WithPrevKV())
		if err != nil {
			return nil, unavailable{err}
		}
		return resp.PrevKv, nil
	}
	for {
		cur, err := cli.Get(ctx, key)
		if err != nil {
			return nil, unavailable{err}
		}
		var prev *mvccpb.KeyValue
		rev := int64(0)
		if len(cur.Kvs) > 0 {
			prev, rev = cur.Kvs[0], cur.Kvs[0].ModRevision
			if old, err := b.decode(prev); err == nil && old.By != r.By {
				return nil, fmt.Errorf("%w (%s)", ErrTaken, old.By)
			}
		}
		txn, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(val), clientv3.WithLease(lease))).Commit()
		if err != nil {
			return nil, unavailable{err}
		}
		if txn.Succeeded {
			return prev, nil
		}
	}
}

func (b *etcdBackend) keepAlive(ctx context.Context, id string) (time.Duration, error) {
	lid, err := parseLeaseID(id)
	if err != nil {
		return 0, err
	}
	cli, err := b.client()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.conn.Timeout)
	defer cancel()
	resp, err := cli.KeepAliveOnce(ctx, lid)
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return 0, ErrUnknownLease
	case err != nil:
		return 0, unavailable{err}
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

func (b *etcdBackend) deregister(ctx context.Context, id string) error {
	lid, err := parseLeaseID(id)
	if err != nil {
		return err
	}
	cli, err := b.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, b.conn.Timeout)
	defer cancel()
	_, err = cli.Revoke(ctx, lid)
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return ErrUnknownLease
	case err != nil:
		return unavailable{err}
	}
	return nil
}

// lease finds the key a lease holds (a registration's lease holds one).
func (b *etcdBackend) lease(ctx context.Context, id string) (Lease, error) {
	lid, err := parseLeaseID(id)
	if err != nil {
		return Lease{}, err
	}
	cli, err := b.client()
	if err != nil {
		return Lease{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.conn.Timeout)
	defer cancel()
	ttl, err := cli.TimeToLive(ctx, lid, clientv3.WithAttachedKeys())
	if err != nil {
		return Lease{}, unavailable{err}
	}
	if ttl.TTL <= 0 || len(ttl.Keys) == 0 {
		return Lease{}, ErrUnknownLease
	}
	resp, err := cli.Get(ctx, string(ttl.Keys[0]))
	if err != nil {
		return Lease{}, unavailable{err}
	}
	if len(resp.Kvs) == 0 || clientv3.LeaseID(resp.Kvs[0].Lease) != lid {
		return Lease{}, ErrUnknownLease
	}
	r, err := b.decode(resp.Kvs[0])
	if err != nil {
		return Lease{}, ErrUnknownLease
	}
	return Lease{ID: id, Registration: r}, nil
}

func (b *etcdBackend) list(ctx context.Context) ([]Lease, error) {
	cli, err := b.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.conn.Timeout)
	defer cancel()
	resp, err := cli.Get(ctx, b.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable{err}
	}
	out := make([]Lease, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if r, err := b.decode(kv); err == nil {
			out = append(out, Lease{ID: leaseID(clientv3.LeaseID(kv.Lease)), Registration: r})
		}
	}
	return out, nil
}

// decode reads one key; a key whose value is not a record is an error.
func (b *etcdBackend) decode(kv *mvccpb.KeyValue) (Registration, error) {
	var rec record
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return Registration{}, err
	}
	r, err := rec.registration()
	if err != nil {
		return r, err
	}
	if b.prefix+r.Key() != string(kv.Key) {
		return r, fmt.Errorf("key does not match its registration %s", r.Key())
	}
	return r, nil
}

func (b *etcdBackend) run(ctx context.Context, sink discovery.Sink) {
	cli, err := b.conn.NewClient()
	if err != nil {
		sink.Failed(fmt.Errorf("etcd client: %w", err))
		<-ctx.Done()
		return
	}
	b.mu.Lock()
	b.cli = cli
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.cli = nil
		b.mu.Unlock()
		cli.Close()
	}()
	f := &etcd.Follower{Client: cli, Prefix: b.prefix, Timeout: b.conn.Timeout, CheckInterval: b.conn.CheckInterval, Log: b.log}
	f.Run(ctx, &follower{b: b, sink: sink})
}

// follower turns the prefix's keys into groups, one per key.
type follower struct {
	b    *etcdBackend
	sink discovery.Sink
}

func (f *follower) group(kv *mvccpb.KeyValue) (discovery.Group, bool) {
	r, err := f.b.decode(kv)
	if err != nil {
		f.b.log.Warn("registration key skipped", "key", string(kv.Key), "err", err)
		return discovery.Group{}, false
	}
	return group(r), true
}

func (f *follower) Listed(kvs []*mvccpb.KeyValue) {
	gs := make([]discovery.Group, 0, len(kvs))
	for _, kv := range kvs {
		if g, ok := f.group(kv); ok {
			gs = append(gs, g)
		}
	}
	slices.SortFunc(gs, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	f.sink.Replace(gs)
}

func (f *follower) Changed(events []*clientv3.Event) {
	// The newest event per key wins.
	byKey := map[string]discovery.Group{}
	for _, ev := range events {
		k := strings.TrimPrefix(string(ev.Kv.Key), f.b.prefix)
		if ev.Type == clientv3.EventTypePut {
			if g, ok := f.group(ev.Kv); ok {
				byKey[k] = g
				continue
			}
		}
		byKey[k] = discovery.Group{Key: k}
	}
	gs := make([]discovery.Group, 0, len(byKey))
	for _, g := range byKey {
		gs = append(gs, g)
	}
	slices.SortFunc(gs, func(a, b discovery.Group) int { return strings.Compare(a.Key, b.Key) })
	f.sink.Update(gs...)
}

func (f *follower) Failed(err error) { f.sink.Failed(err) }
