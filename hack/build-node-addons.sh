#!/usr/bin/env bash
# Builds the real node's cluster add-ons from their Go modules and makes their images with
# buildah (FROM scratch: one static binary, user 65532), so that nothing is pulled:
#   CoreDNS        github.com/coredns/coredns@v1.14.7        -> localhost/inference-node/coredns:v1.14.7
#   metrics-server sigs.k8s.io/metrics-server@v0.8.0          -> localhost/inference-node/metrics-server:v0.8.0
# Binaries are cached under ${INFERENCE_K8S_CACHE:-$HOME/.cache/inference-k8s}/<versions-key>/bin
# (the key holds both versions and Go's); images are rebuilt when missing from buildah's storage.
# Also a client image for pods that make requests (make demo): busybox-static from Debian's
# package, localhost/inference-node/busybox:<package version>.
# Prints the image tags, one per line (hack/real-node.sh imports them).
set -euo pipefail
COREDNS_VERSION=v1.14.7
METRICS_SERVER_VERSION=v0.8.0
key="addons_coredns-${COREDNS_VERSION}_metrics-server-${METRICS_SERVER_VERSION}_$(go env GOVERSION)"
bin=${INFERENCE_K8S_CACHE:-$HOME/.cache/inference-k8s}/$key/bin
mkdir -p "$bin"

build() { # name package@version [tags]
  local name=$1 pkg=$2 tags=${3:-} tmp
  [[ -x $bin/$name ]] && return
  echo "== $name: building $pkg (go install; first time only)" >&2
  tmp=$(mktemp -d)
  # Module mode with the module's own go.mod and go.sum (neither has replace directives).
  (cd "$tmp" && CGO_ENABLED=0 GOBIN=$tmp GOFLAGS= go install -trimpath ${tags:+-tags "$tags"} -ldflags='-s -w' "$pkg") >&2
  mv -f "$tmp/$name" "$bin/$name"
  rm -rf "$tmp"
}
build coredns "github.com/coredns/coredns@$COREDNS_VERSION" grpcnotrace
build metrics-server "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"

image() { # name version
  local tag=localhost/inference-node/$1:$2 c
  if ! buildah inspect --type image "$tag" >/dev/null 2>&1; then
    c=$(buildah from scratch)
    buildah copy --quiet "$c" "$bin/$1" "/$1" >/dev/null
    buildah config --entrypoint "[\"/$1\"]" --user 65532:65532 \
      --label "org.opencontainers.image.source=$3" --label "org.opencontainers.image.version=$2" "$c"
    buildah commit --quiet "$c" "$tag" >/dev/null
    buildah rm "$c" >/dev/null
  fi
  echo "$tag"
}
image coredns "$COREDNS_VERSION" https://github.com/coredns/coredns
image metrics-server "$METRICS_SERVER_VERSION" https://github.com/kubernetes-sigs/metrics-server

# busybox's wget is the client pod's HTTP client (POST with --post-file).
busybox_image() {
  local tmp ver tag c
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq busybox-static >/dev/null 2>&1) || { rm -rf "$tmp"; echo "apt-get download busybox-static failed" >&2; return 1; }
  ver=$(dpkg-deb -f "$tmp"/busybox-static_*.deb Version | sed 's/^[0-9]*://; s/[^A-Za-z0-9_.-]/-/g')
  tag=localhost/inference-node/busybox:$ver
  if ! buildah inspect --type image "$tag" >/dev/null 2>&1; then
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
    c=$(buildah from scratch)
    buildah copy --quiet "$c" "$tmp/x/bin/busybox" /bin/busybox >/dev/null
    buildah config --entrypoint '["/bin/busybox"]' --user 65532:65532 "$c"
    buildah commit --quiet "$c" "$tag" >/dev/null
    buildah rm "$c" >/dev/null
  fi
  rm -rf "$tmp"
  echo "$tag"
}
busybox_image
