//go:build integration

package operator

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
)

type manifest struct {
	file, kind string
	obj        runtime.Object
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decodeManifests decodes every object of every manifest in dir (but the
// kustomization) strictly: an unknown or misspelt field is an error.
func decodeManifests(t *testing.T, dir string) []manifest {
	t.Helper()
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []manifest
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSep.Split(string(data), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			obj, gvk, err := decoder.Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Errorf("%s, document %d: %v", filepath.Base(f), i+1, err)
				continue
			}
			out = append(out, manifest{file: filepath.Base(f), kind: gvk.Kind, obj: obj})
		}
	}
	return out
}

// checkDeployment: 3 replicas, a disruption budget that keeps two, probes
// on /readyz and /healthz, requests, a non-root read-only container, and a
// ConfigMap that the CLI's check accepts.
func checkDeployment(t *testing.T, objs []manifest) {
	t.Helper()
	for _, o := range objs {
		switch x := o.obj.(type) {
		case *appsv1.Deployment:
			if x.Spec.Replicas == nil || *x.Spec.Replicas != 3 {
				t.Errorf("Deployment replicas %v, want 3", x.Spec.Replicas)
			}
			c := x.Spec.Template.Spec.Containers[0]
			if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
				t.Errorf("readiness probe %+v, want GET /readyz", c.ReadinessProbe)
			}
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("liveness probe %+v, want GET /healthz", c.LivenessProbe)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("resources %+v: want CPU and memory requests and a memory limit", c.Resources)
			}
			sc := x.Spec.Template.Spec.SecurityContext
			if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Errorf("the pod does not require a non-root user")
			}
			if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
				t.Errorf("the container's root file system is not read-only")
			}
			if c.Image != "tributary" {
				t.Errorf("image %q, want tributary (kustomization.yaml's images: sets it)", c.Image)
			}
		case *policyv1.PodDisruptionBudget:
			if x.Spec.MaxUnavailable == nil || x.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("PodDisruptionBudget maxUnavailable %v, want 1", x.Spec.MaxUnavailable)
			}
			if x.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != "tributary" {
				t.Errorf("PodDisruptionBudget selects %v", x.Spec.Selector.MatchLabels)
			}
		case *corev1.ConfigMap:
			cfg := x.Data["tributary.yaml"]
			if !strings.Contains(cfg, "listen: 0.0.0.0:8086") || !strings.Contains(cfg, "admin: 0.0.0.0:9996") {
				t.Errorf("the ConfigMap's config does not listen beyond loopback:\n%s", cfg)
			}
		}
	}
}
