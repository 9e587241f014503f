// Package all links in every source kind.
//
// Import it for its side effect, as cmd/tributary does:
//
//	import _ "github.com/tributary-mesh/tributary/sources/all"
package all

import (
	_ "github.com/tributary-mesh/tributary/sources/bench"      // kind: bench (benchmark tool, not for production)
	_ "github.com/tributary-mesh/tributary/sources/consul"     // kind: consul
	_ "github.com/tributary-mesh/tributary/sources/dnssrv"     // kind: dnssrv
	_ "github.com/tributary-mesh/tributary/sources/etcd"       // kind: etcd
	_ "github.com/tributary-mesh/tributary/sources/file"       // kind: file
	_ "github.com/tributary-mesh/tributary/sources/kubernetes" // kind: kubernetes
	_ "github.com/tributary-mesh/tributary/sources/register"   // kind: register (the registration API's store)
)
