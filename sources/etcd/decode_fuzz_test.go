package etcd

import (
	"testing"

	"github.com/tributary-mesh/tributary/discovery"
	"github.com/tributary-mesh/tributary/discovery/sinktest"
)

// FuzzDecodeEndpoint: whatever a key holds, decodeEndpoint either refuses
// it or returns an endpoint the registry accepts, with no label Tributary
// sets itself.
func FuzzDecodeEndpoint(f *testing.F) {
	for _, seed := range []string{
		`{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}`,
		`{"Addr":"[2001:db8::1]:80","Metadata":{"zone":"z","weight":5,"labels":{"a":"b"},"identity":"spiffe://td/x","server_name":"x","protocol":"h2"}}`,
		`{"Addr":"[::ffff:10.0.0.1]:80","Metadata":"text"}`,
		`{"Addr":"10.0.0.1:80","Metadata":{"labels":{"source":"x"}}}`,
		`{"Addr":"web:80"}`,
		`[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEndpoint(b)
		if err != nil {
			return
		}
		for _, r := range reservedLabels {
			if _, ok := e.Labels[r]; ok {
				t.Fatalf("label %q passed", r)
			}
		}
		sinktest.CheckGroup(t, discovery.Group{Key: "t", Services: []discovery.Service{{
			Authority: discovery.Authority{Host: "t", Port: 80}, Endpoints: []discovery.Endpoint{e}}}})
	})
}
