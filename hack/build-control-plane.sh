#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager, helm, and the node's kubelet, kube-proxy
# and kube-scheduler (hack/real-node.sh), and kubectl, from Go modules
# (hack/control-plane/, hack/control-plane/helm/) into
#   ${INFERENCE_K8S_CACHE:-$HOME/.cache/inference-k8s}/<versions-key>/bin/
# The key holds the k8s, etcd, helm and Go versions, so a bump rebuilds and a warm run
# builds nothing. Each binary is built to a temporary name and renamed, so an
# interrupted build is simply redone on the next run. The last line printed is the bin dir.
#
# Usage: hack/build-control-plane.sh [--print-bin-dir] [--force]
#   --print-bin-dir  print the bin dir and exit (builds nothing; exit 1 if incomplete)
#   --force          rebuild even if the binaries exist
# Env: INFERENCE_K8S_CACHE (cache root), GOFLAGS is forced to -mod=readonly (go.sum is committed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cp_mod="$here/control-plane"
helm_mod="$here/control-plane/helm"

print_only=0 force=0
for a in "$@"; do
  case "$a" in
    --print-bin-dir) print_only=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

# Versions straight from go.mod (no network, no module loading: a warm run stays instant).
modver() { awk -v m="$2" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$1/go.mod"; }
k8s_ver=$(modver "$cp_mod" k8s.io/kubernetes)
etcd_ver=$(modver "$cp_mod" go.etcd.io/etcd/server/v3)
helm_ver=$(modver "$helm_mod" helm.sh/helm/v3)
helm_k8s_ver=$(modver "$helm_mod" k8s.io/client-go)
go_ver=$(go env GOVERSION)
for v in k8s_ver etcd_ver helm_ver helm_k8s_ver; do
  [[ -n "${!v}" ]] || { echo "cannot read $v from go.mod" >&2; exit 1; }
done

key="k8s-${k8s_ver}_etcd-${etcd_ver}_helm-${helm_ver}_${go_ver}"
bin_dir="${INFERENCE_K8S_CACHE:-$HOME/.cache/inference-k8s}/${key}/bin"
bins=(etcd kube-apiserver kube-controller-manager helm kubelet kube-proxy kube-scheduler kubectl)

complete() { local b; for b in "${bins[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done; }

if (( print_only )); then
  echo "$bin_dir"
  complete
  exit
fi

mkdir -p "$bin_dir"
# Leftovers of an interrupted build (.NAME.tmp.PID whose PID is gone).
for f in "$bin_dir"/.*.tmp.*; do
  [[ -e "$f" ]] || continue
  kill -0 "${f##*.}" 2>/dev/null || rm -f "$f"
done
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

k8s_minor=${k8s_ver#v1.}; k8s_minor=${k8s_minor%%.*}
hk_minor=${helm_k8s_ver#v0.}; hk_minor=${hk_minor%%.*}
k8s_ld="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_ver} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${k8s_minor} -X k8s.io/component-base/version.gitTreeState=clean"
helm_ld="-s -w -X helm.sh/helm/v3/internal/version.version=${helm_ver} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=${hk_minor}"
done

build() { # name module-dir package ldflags
  local name=$1 dir=$2 pkg=$3 ld=$4
  if [[ -x "$bin_dir/$name" && $force -eq 0 ]]; then
    echo "== $name: present, skipped"
    return
  fi
  local tmp="$bin_dir/.$name.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  trap 'rm -f "$tmp"; exit 130' INT TERM
  echo "== $name: building $pkg"
  local t0=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags="$ld" -o "$tmp" "$pkg")
  mv -f "$tmp" "$bin_dir/$name"
  trap - EXIT INT TERM
  echo "== $name: built in $((SECONDS - t0))s ($(du -h "$bin_dir/$name" | cut -f1))"
}

if complete && (( ! force )); then
  echo "control-plane binaries up to date ($key)"
else
  echo "building control plane: k8s ${k8s_ver}, etcd ${etcd_ver}, helm ${helm_ver}, ${go_ver}"
  build etcd "$cp_mod" ./cmd/etcd "-s -w"
  build kube-apiserver "$cp_mod" k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ld"
  build kube-controller-manager "$cp_mod" k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ld"
  build helm "$helm_mod" helm.sh/helm/v3/cmd/helm "$helm_ld"
  build kubelet "$cp_mod" k8s.io/kubernetes/cmd/kubelet "$k8s_ld"
  build kube-proxy "$cp_mod" k8s.io/kubernetes/cmd/kube-proxy "$k8s_ld"
  build kube-scheduler "$cp_mod" k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ld"
  build kubectl "$cp_mod" k8s.io/kubernetes/cmd/kubectl "$k8s_ld"
fi
echo "$bin_dir"
