//go:build integration

package consul

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// TestGettingStartedWatch is docs/getting-started.md's Consul step: a
// service registered with the agent, a consul source, and `tributary
// watch` (the CLI) printing it under Consul's DNS name with its health; an
// instance whose check turns critical is removed from the stream.
func TestGettingStartedWatch(t *testing.T) {
	a := startAgent(t, agentOptions{})
	a.registerService(t, &api.AgentServiceRegistration{Name: "web", ID: "web-1", Address: "127.0.0.1", Port: 8080})
	a.registerService(t, &api.AgentServiceRegistration{Name: "web", ID: "web-2", Address: "127.0.0.2", Port: 8080, Check: ttlCheck("passing")})
	s := harness.Start(t, t.TempDir(), "sources:\n"+consulSource("consul", a.HTTPAddr()))

	ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
	defer cancel()
	var out harness.SyncBuffer
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, harness.Bin, "watch", "--addr", s.API, "--admin", s.Admin, "web.service.dc1.consul:8080")
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	wait := func(what string) {
		for !strings.Contains(out.String(), what) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("# 2 endpoints")
	a.setTTL(t, "web-2", api.HealthCritical)
	wait("# 1 endpoints")
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch: %v (stderr %s)", err, stderr.String())
	}
	want := "EVENT   ADDRESS                ZONE    HEALTH    WEIGHT  SOURCE  IDENTITY\n" +
		"ADD     127.0.0.1:8080         -       passing   10000   consul  -  consul_dc=dc1 consul_node=dc1-node consul_service=web\n" +
		"ADD     127.0.0.2:8080         -       passing   10000   consul  -  consul_dc=dc1 consul_node=dc1-node consul_service=web\n" +
		"# 2 endpoints\n" +
		"REMOVE  127.0.0.2:8080         -       critical  10000   consul  -  why: evicted: health is critical; its source reports it critical\n" +
		"# 1 endpoints\n"
	if out.String() != want {
		t.Errorf("watch printed:\n%s\nwant:\n%s", out.String(), want)
	}
}
