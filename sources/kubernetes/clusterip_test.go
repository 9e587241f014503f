package kubernetes

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func withClusterIPs(s *corev1.Service, ips ...string) *corev1.Service {
	s.Spec.ClusterIPs = ips
	if len(ips) > 0 {
		s.Spec.ClusterIP = ips[0]
	}
	return s
}

// closed reports whether ch closes within a bound.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-time.After(wait):
		return false
	}
}

// GetProfile by a ClusterIP is answered as Linkerd answers it: every
// cluster IP of a Service (IPv4, IPv6, dual-stack) is its name; a headless
// Service has none; an IP two Services claim is neither's.
func TestLookupVIPClusterIPs(t *testing.T) {
	r := runFake(t, Config{Namespaces: []string{"prod"}, NodeZones: ptr(false)},
		withClusterIPs(svc("prod", "web", sport("http", 80)), "10.96.0.10", "fd00::10"),
		withClusterIPs(svc("prod", "db", sport("pg", 5432)), corev1.ClusterIPNone),
		withClusterIPs(svc("prod", "a", sport("http", 80)), "10.96.0.20"),
		withClusterIPs(svc("prod", "b", sport("http", 80)), "10.96.0.20"),
		withClusterIPs(svc("other", "x", sport("http", 80)), "10.96.0.30"), // not watched
	)
	// Before the caches have synced: no answer, and a channel that closes
	// once they have.
	_, changed, _ := r.src.LookupVIP(netip.MustParseAddr("10.96.0.10"))
	r.expect("replace",
		"prod/a a.prod.svc.cluster.local:80 = ",
		"prod/b b.prod.svc.cluster.local:80 = ",
		"prod/db db.prod.svc.cluster.local:5432[opaque] = ",
		"prod/web web.prod.svc.cluster.local:80 = ")
	if !closed(changed) {
		t.Fatal("the lookup's channel did not close when the caches synced")
	}
	for ip, want := range map[string]string{
		"10.96.0.10":        "web.prod.svc.cluster.local",
		"fd00::10":          "web.prod.svc.cluster.local",
		"::ffff:10.96.0.10": "web.prod.svc.cluster.local",
		"10.96.0.20":        "", // claimed twice
		"10.96.0.30":        "", // a namespace not watched
		"10.96.0.99":        "",
		"10.1.2.3":          "",
	} {
		host, _, ok := r.src.LookupVIP(netip.MustParseAddr(ip))
		if host != want || ok != (want != "") {
			t.Errorf("LookupVIP(%s) = %q, %v; want %q", ip, host, ok, want)
		}
	}

	// A Service's cluster IP changes: the lookup's channel closes.
	_, changed, _ = r.src.LookupVIP(netip.MustParseAddr("10.96.0.20"))
	if err := r.cs.CoreV1().Services("prod").Delete(r.ctx(), "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !closed(changed) {
		t.Fatal("deleting a Service did not close the lookup's channel")
	}
	deadline := time.Now().Add(wait)
	for {
		if host, _, ok := r.src.LookupVIP(netip.MustParseAddr("10.96.0.20")); ok && host == "a.prod.svc.cluster.local" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("10.96.0.20 is not a's once b is gone")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The source stops: no answers, and the channel closes.
	_, changed, _ = r.src.LookupVIP(netip.MustParseAddr("10.96.0.10"))
	r.stop()
	if !closed(changed) {
		t.Fatal("stopping the source did not close the lookup's channel")
	}
	if _, _, ok := r.src.LookupVIP(netip.MustParseAddr("10.96.0.10")); ok {
		t.Error("a stopped source answers")
	}
}
