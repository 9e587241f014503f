//go:build integration

// Package kubernetes runs the real tributary binary against real
// kube-apiservers (and etcd): it creates Services, EndpointSlices, Pods and
// Nodes with client-go and checks what Get streams receive.
//
// No controller-manager runs, so the tests write EndpointSlices themselves,
// as the EndpointSlice controller would (kubernetes.io/service-name label,
// conditions, zones, hints, target references).
package kubernetes

import (
	"sync"
	"testing"

	"github.com/tributary-mesh/tributary/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// env is the package's control planes, shared by the subtests of
// TestKubernetes; each subtest works in namespaces of its own.
type env struct {
	// east has one API server.
	east *cluster
	// west has two API servers on one etcd: tributary talks to
	// servers[0], the tests write through servers[1], so the outage test
	// can stop the first and still change the cluster.
	west *cluster
}

// TestKubernetes starts the control planes once and runs every behaviour
// as a subtest, so that they are stopped before harness.Main's leak check
// (a TestMain cannot run code between the tests and that check).
func TestKubernetes(t *testing.T) {
	bins := peerBinaries(t)
	var e env
	var wg sync.WaitGroup
	var errEast, errWest error
	wg.Go(func() { e.east, errEast = newCluster(t, bins, "east", 1) })
	wg.Go(func() { e.west, errWest = newCluster(t, bins, "west", 2) })
	wg.Wait()
	if errEast != nil || errWest != nil {
		t.Fatalf("starting control planes: east: %v; west: %v", errEast, errWest)
	}

	for _, tc := range []struct {
		name string
		run  func(*testing.T, *env)
	}{
		{"ServicesAndScaling", testServicesAndScaling},
		{"ReadinessAndTermination", testReadinessAndTermination},
		{"NamedTargetPorts", testNamedTargetPorts},
		{"HeadlessPodNames", testHeadlessPodNames},
		{"ZonesHintsAndLocality", testZonesHintsAndLocality},
		{"TopologyHintsFiltering", testTopologyHintsFiltering},
		{"IdentityAndLabels", testIdentityAndLabels},
		{"TwoClustersFederate", testTwoClustersFederate},
		{"SpecialServices", testSpecialServices},
		{"NotReadyUntilSynced", testNotReadyUntilSynced},
		{"DeployManifests", testDeployManifests},
		{"MeshExpansion", testMeshExpansion},
		{"ProfileByClusterIP", testProfileByClusterIP},
		{"ServiceProfiles", testServiceProfiles},
		{"WithoutWorkloadCRD", testWithoutWorkloadCRD},
		{"Outage", testOutage},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, &e) })
	}
}
