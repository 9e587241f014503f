//go:build integration

package etcd

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"

	"github.com/tributary-mesh/tributary/integration/harness"
	"github.com/tributary-mesh/tributary/sources/etcd/etcdtest"
)

func TestMain(m *testing.M) { harness.Main(m) }

// source is an etcd source "reg" on the given etcd address, with fast
// probes.
func source(addr string) string {
	return fmt.Sprintf(`sources:
  - name: reg
    kind: etcd
    endpoints: [%q]
    prefix: services/
    timeout: 500ms
    check_interval: 200ms
    naming: {domain: etcd.test}
`, addr)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestNamingFormat: instances register as gRPC services do (leased keys
// written by endpoints.Manager); the stream follows puts, deletes and an
// expired lease.
func TestNamingFormat(t *testing.T) {
	m := StartMember(t)
	cli := m.NewClient()
	defer cli.Close()
	ctx := context.Background()
	em, err := endpoints.NewManager(cli, "services/web")
	must(t, err)
	must(t, em.AddEndpoint(ctx, "services/web/127.0.0.1:8080", endpoints.Endpoint{Addr: "127.0.0.1:8080"}))

	s := harness.Start(t, t.TempDir(), source(m.Client))
	st := s.Get("web.etcd.test:8080")
	if got := st.Next(); got != "add:127.0.0.1:8080" {
		t.Fatal(got)
	}

	lease, err := cli.Grant(ctx, 60)
	must(t, err)
	must(t, em.AddEndpoint(ctx, "services/web/127.0.0.2:8080", endpoints.Endpoint{Addr: "127.0.0.2:8080"}, clientv3.WithLease(lease.ID)))
	if got := st.Next(); got != "add:127.0.0.2:8080" {
		t.Fatal(got)
	}
	must(t, em.DeleteEndpoint(ctx, "services/web/127.0.0.1:8080"))
	if got := st.Next(); got != "remove:127.0.0.1:8080" {
		t.Fatal(got)
	}
	// The instance dies: its lease ends, etcd deletes its key, and with
	// the target's last key the authority is gone.
	_, err = cli.Revoke(ctx, lease.ID)
	must(t, err)
	if got := st.Next(); got != "none:false" {
		t.Fatal(got)
	}
}

// TestCompactionWhileCutOff: tributary is cut off etcd while keys change
// and etcd compacts its history. The watch cannot resume from where it
// was; the source lists again, and the stream ends up with exactly etcd's
// state — stale, and unchanged, while cut off.
func TestCompactionWhileCutOff(t *testing.T) {
	m := StartMember(t)
	cli := m.NewClient()
	defer cli.Close()
	ctx := context.Background()
	em, err := endpoints.NewManager(cli, "services/web")
	must(t, err)
	must(t, em.AddEndpoint(ctx, "services/web/127.0.0.1:8080", endpoints.Endpoint{Addr: "127.0.0.1:8080"}))
	must(t, em.AddEndpoint(ctx, "services/web/127.0.0.2:8080", endpoints.Endpoint{Addr: "127.0.0.2:8080"}))

	p := etcdtest.NewCutProxy(t, m.Client)
	s := harness.Start(t, t.TempDir(), source(p.Addr))
	st := s.Get("web.etcd.test:8080")
	if got := st.Next(); got != "add:127.0.0.1:8080,127.0.0.2:8080" {
		t.Fatal(got)
	}

	p.Cut()
	WaitStale(t, s, true)
	must(t, em.DeleteEndpoint(ctx, "services/web/127.0.0.1:8080"))
	must(t, em.AddEndpoint(ctx, "services/web/127.0.0.3:8080", endpoints.Endpoint{Addr: "127.0.0.3:8080"}))
	resp, err := cli.Get(ctx, "x")
	must(t, err)
	_, err = cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical())
	must(t, err)

	p.Restore()
	WaitStale(t, s, false)
	s.WaitLog("listing the prefix again")
	if got := st.Next(); got != "add:127.0.0.3:8080" {
		t.Fatal(got)
	}
	if got := st.Next(); got != "remove:127.0.0.1:8080" {
		t.Fatal(got)
	}
}

// TestEtcdRestart: etcd killed → the source is stale and the stream keeps
// its endpoints; etcd back → the source reconciles and follows again.
func TestEtcdRestart(t *testing.T) {
	m := StartMember(t)
	cli := m.NewClient()
	defer cli.Close()
	ctx := context.Background()
	em, err := endpoints.NewManager(cli, "services/web")
	must(t, err)
	must(t, em.AddEndpoint(ctx, "services/web/127.0.0.1:8080", endpoints.Endpoint{Addr: "127.0.0.1:8080"}))

	s := harness.Start(t, t.TempDir(), source(m.Client))
	st := s.Get("web.etcd.test:8080")
	if got := st.Next(); got != "add:127.0.0.1:8080" {
		t.Fatal(got)
	}
	m.Stop(syscall.SIGKILL)
	WaitStale(t, s, true)
	m.Start()
	WaitStale(t, s, false)
	must(t, em.AddEndpoint(ctx, "services/web/127.0.0.2:8080", endpoints.Endpoint{Addr: "127.0.0.2:8080"}))
	// Nothing was removed while etcd was away: the next update is the add.
	if got := st.Next(); got != "add:127.0.0.2:8080" {
		t.Fatal(got)
	}
}
