//go:build integration

package kubernetes

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
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
}
