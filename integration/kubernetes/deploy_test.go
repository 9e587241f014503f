//go:build integration

package kubernetes

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/tributary-mesh/tributary/integration/harness"
)

// TestDeployManifests sends every object of deploy/kubernetes/ (but
// rbac.yaml, which newCluster creates for real) to a real kube-apiserver
// as a server-side dry run: the API server's own validation and defaulting
// — probes, the PodDisruptionBudget's selector, resources, security
// context — accept them as they are written. kustomize adds nothing but the
// image name, which integration/operator checks.
func TestDeployManifests(t *testing.T) {
	c, err := newCluster(t, peerBinaries(t), "deploy", 1)
	if err != nil {
		t.Fatal(err)
	}
	cs := c.admin(t)
	ctx := context.Background()
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}
	for _, name := range []string{"deployment.yaml", "pdb.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "kubernetes", name))
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := dec.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			switch o := obj.(type) {
			case *corev1.ConfigMap:
				_, err = cs.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, dry)
			case *corev1.Service:
				_, err = cs.CoreV1().Services(o.Namespace).Create(ctx, o, dry)
			case *appsv1.Deployment:
				_, err = cs.AppsV1().Deployments(o.Namespace).Create(ctx, o, dry)
			case *policyv1.PodDisruptionBudget:
				_, err = cs.PolicyV1().PodDisruptionBudgets(o.Namespace).Create(ctx, o, dry)
			default:
				t.Errorf("%s: no dry run for %s here; add it", name, gvk.Kind)
				continue
			}
			if err != nil {
				t.Errorf("%s: the API server refuses the %s: %v", name, gvk.Kind, err)
			}
		}
	}

	t.Run("GettingStartedWatch", func(t *testing.T) { testGettingStartedWatch(t, c) })
}

// testGettingStartedWatch is docs/getting-started.md's Kubernetes step
// out of the cluster: a Service with a ready pod, tributary reading the
// cluster, and `tributary watch` (the CLI) printing its row — zone, health
// from the admin API, source, Linkerd identity (the pod is meshed), and
// Linkerd's labels.
func testGettingStartedWatch(t *testing.T, c *cluster) {
	f := newFixture(t, c)
	p := f.pod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Labels: map[string]string{"linkerd.io/control-plane-ns": "linkerd"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "web"},
	})
	f.service("web", svcPort("http", 8080, intstr.FromInt32(8080)))
	f.slice("web", "web-1", []discoveryv1.EndpointPort{slicePort("http", 8080)},
		ep("10.42.0.17", zone("zone-a"), podRef(f.ns, p.Name, p.UID)))
	s := start(t, source("local", c.kubeconfig(t, t.TempDir(), tributaryToken), "namespaces: ["+f.ns+"]"))

	ctx, cancel := context.WithTimeout(context.Background(), harness.WaitFor)
	defer cancel()
	var out harness.SyncBuffer
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, harness.Bin, "watch", "--addr", s.API, "--admin", s.Admin, f.host("web")+":8080")
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(out.String(), "# 1 endpoints") && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch: %v (stderr %s)", err, stderr.String())
	}
	want := "ADD     10.42.0.17:8080        zone-a  passing   10000   local   web." + f.ns +
		".serviceaccount.identity.linkerd.cluster.local  protocol=h2 cluster=local control_plane_ns=linkerd namespace=" + f.ns + " pod=web-0"
	if !strings.Contains(out.String(), want) {
		t.Errorf("watch printed:\n%s\nwant a row starting:\n%s", out.String(), want)
	}
}
