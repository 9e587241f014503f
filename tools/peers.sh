#!/usr/bin/env bash
# Build (once) and locate the real peers the integration tests run against.
#
#   tools/peers.sh path PEER   print the cached folder holding PEER's binaries,
#                              building them first when missing
#   tools/peers.sh all         build every peer
#
# PEER is one of: consul etcd coredns k8s promtool (promtool is no peer a
# server test talks to, but the rules test runs it, and it builds the same way). Binaries live outside the repo in
# ${TRIBUTARY_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary-peers}/<peer>-<version>-<go.sum hash>/
# so a fresh clone (CI) reuses what an earlier run built on the same machine.
# A flock per folder keeps two builds of one peer from racing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${TRIBUTARY_PEERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tributary-peers}

module_dir() {
	case "$1" in
	consul) echo "$here/consul-v1.16.3" ;;
	etcd) echo "$here/etcd-v3.7.3" ;;
	coredns) echo "$here/coredns-slim-v1.15.0" ;;
	k8s) echo "$here/k8s-v1.37.2" ;;
	promtool) echo "$here/promtool-v0.316.0" ;;
	*) echo "unknown peer $1 (consul etcd coredns k8s promtool)" >&2; exit 2 ;;
	esac
}

dest_dir() {
	local mod; mod=$(module_dir "$1")
	local sum; sum=$(cat "$mod/go.mod" "$mod/go.sum" $(ls "$mod"/*.go 2>/dev/null) | sha256sum | cut -c1-12)
	echo "$cache/$(basename "$mod")-$sum"
}

build() {
	local peer=$1 mod dest
	mod=$(module_dir "$peer")
	dest=$(dest_dir "$peer")
	mkdir -p "$cache"
	exec 9>"$dest.lock"
	flock 9
	if [ -f "$dest/.complete" ]; then return 0; fi
	echo "building peer $peer into $dest (once per version; minutes)" >&2
	rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
	(
		cd "$mod"
		export GOFLAGS=-mod=mod
		case "$peer" in
		consul)
			go build -trimpath -ldflags='-s -w' -o "$dest.tmp/consul" github.com/hashicorp/consul ;;
		etcd)
			go build -trimpath -ldflags='-s -w' -o "$dest.tmp/etcd" go.etcd.io/etcd/server/v3
			go build -trimpath -ldflags='-s -w' -o "$dest.tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3 ;;
		coredns)
			go build -trimpath -ldflags='-s -w' -o "$dest.tmp/coredns" . ;;
		k8s)
			v=v1.37.2
			go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
				-o "$dest.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver ;;
		promtool)
			# Prometheus v3.16.0 (its Go module is tagged v0.316.0).
			go build -trimpath -ldflags='-s -w' -o "$dest.tmp/promtool" github.com/prometheus/prometheus/cmd/promtool ;;
		esac
	)
	touch "$dest.tmp/.complete"
	rm -rf "$dest"; mv "$dest.tmp" "$dest"
}

case "${1:-}" in
path)
	peer=${2:?peer name}
	build "$peer"
	dest_dir "$peer" ;;
all)
	for p in etcd coredns consul k8s promtool; do build "$p"; done ;;
*)
	echo "usage: $0 path PEER | all" >&2; exit 2 ;;
esac
