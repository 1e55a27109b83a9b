#!/usr/bin/env bash
# Point this module at another k8s.io/kubernetes release: require it and pin every
# staging module (k8s.io/X => ./staging/src/k8s.io/X in its go.mod) to v0.<minor>.<patch>.
# Usage: hack/control-plane/bump-k8s.sh v1.34.4
set -euo pipefail
ver=${1:?usage: $0 v1.MINOR.PATCH}
cd "$(dirname "$0")"
gomod=$(go mod download -json "k8s.io/kubernetes@${ver}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
staging_ver="v0.${ver#v1.}"
args=(-require="k8s.io/kubernetes@${ver}")
for m in $(grep -oE '^[[:space:]]*k8s\.io/[A-Za-z0-9._-]+ => \./staging/' "$gomod" | awk '{print $1}'); do
  args+=(-replace="${m}=${m}@${staging_ver}")
done
go mod edit "${args[@]}"
GOFLAGS=-mod=mod go mod tidy
echo "k8s.io/kubernetes ${ver}, staging modules ${staging_ver}; now check the etcd server version in go.mod"
