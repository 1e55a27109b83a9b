#!/usr/bin/env bash
# Builds the custom-metrics pipeline's images for the real node (hack/metrics-pipeline.yaml)
# with buildah (FROM scratch: one static binary, user 65532), so that nothing is pulled:
#   metrics-adapter  hack/metrics-adapter (sigs.k8s.io/custom-metrics-apiserver; serves
#                    custom.metrics.k8s.io from Prometheus with prometheus-adapter's rule format)
#                    -> localhost/inference-node/metrics-adapter:<key>
#   Prometheus       github.com/prometheus/prometheus/cmd/prometheus@v0.316.0 (= Prometheus 3.16.0)
#                    -> localhost/inference-node/prometheus:v3.16.0
# The adapter's key is metrics-adapter-<hash of go.mod, go.sum and the non-test *.go>_<Go
# version>: an edit rebuilds, a warm run builds nothing. Binaries are cached under
# ${INFERENCE_K8S_CACHE:-$HOME/.cache/inference-k8s}/<key>/bin; images are rebuilt when missing
# from buildah's storage (CONTAINERS_CONF, default hack/containers/containers.conf).
#
# Why Prometheus is built from its Go module and not taken from Debian's `prometheus` package
# (2.42.0+ds-5+deb12u1, as hack/promtool.sh fetches promtool): Debian builds it without
# Kubernetes service discovery ("Kubernetes support has been completely removed", NEWS.Debian
# 1.5.0+ds-1; its promtool refuses kubernetes_sd_configs), and it is linked against glibc.
# Only Kubernetes SD is compiled in (-tags remove_all_sd,enable_kubernetes_sd), which leaves out
# the cloud SDKs. The web UI's assets are not embedded (no `builtinassets` tag): the HTTP API,
# all the adapter uses, is complete without them.
#
# Prints the two image tags, adapter first, one per line (for hack/real-node.sh import).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mod=$here/metrics-adapter
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers/containers.conf}
PROMETHEUS_MODULE_VERSION=v0.316.0 # Prometheus's Go module versions v0.3XX.Y are releases 3.XX.Y
PROMETHEUS_VERSION=3.16.0

# --- metrics-adapter -------------------------------------------------------------------------
# Hash by content, in a fixed order, with file names, so renames count too. Tests do not change
# the binary and are left out.
hash=$(cd "$mod" && find . -maxdepth 1 -name '*.go' ! -name '*_test.go' -printf '%f\n' | LC_ALL=C sort \
  | xargs sha256sum go.mod go.sum | sha256sum | cut -c1-12)
key="metrics-adapter-${hash}_$(go env GOVERSION)"
bin=${INFERENCE_K8S_CACHE:-$HOME/.cache/inference-k8s}/$key/bin
if [[ ! -x $bin/metrics-adapter ]]; then
  echo "== metrics-adapter: building $key (first time only)" >&2
  mkdir -p "$bin"
  # Static (no cgo), no local paths or VCS stamp in the binary; go.sum is used as committed.
  (cd "$mod" && CGO_ENABLED=0 GOFLAGS='-mod=readonly -buildvcs=false' \
    go build -trimpath -ldflags='-s -w' -o "$bin/.metrics-adapter.tmp.$$" .) >&2
  mv -f "$bin/.metrics-adapter.tmp.$$" "$bin/metrics-adapter"
fi

adapter_tag=localhost/inference-node/metrics-adapter:$key
if ! buildah inspect --type image "$adapter_tag" >/dev/null 2>&1; then
  c=$(buildah from scratch)
  buildah copy --quiet "$c" "$bin/metrics-adapter" /metrics-adapter >/dev/null
  buildah config --entrypoint '["/metrics-adapter"]' --user 65532:65532 \
    --label org.opencontainers.image.source=hack/metrics-adapter \
    --label "org.opencontainers.image.version=$key" "$c"
  buildah commit --quiet "$c" "$adapter_tag" >/dev/null
  buildah rm "$c" >/dev/null
fi
echo "$adapter_tag"

# --- Prometheus ------------------------------------------------------------------------------
pbin=${INFERENCE_K8S_CACHE:-$HOME/.cache/inference-k8s}/prometheus-${PROMETHEUS_MODULE_VERSION}_$(go env GOVERSION)/bin
if [[ ! -x $pbin/prometheus ]]; then
  echo "== prometheus: building $PROMETHEUS_VERSION (go install; first time only)" >&2
  mkdir -p "$pbin"
  tmp=$(mktemp -d)
  # Module mode with Prometheus's own go.mod and go.sum (no replace directives); the version
  # is stamped the way Prometheus's release build does, so `prometheus --version` tells it.
  v=github.com/prometheus/common/version
  (cd "$tmp" && CGO_ENABLED=0 GOBIN=$tmp GOFLAGS=-buildvcs=false go install -trimpath \
    -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags="-s -w -X $v.Version=$PROMETHEUS_VERSION -X $v.Revision=$PROMETHEUS_MODULE_VERSION -X $v.Branch=module" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION") >&2
  mv -f "$tmp/prometheus" "$pbin/prometheus"
  rm -rf "$tmp"
fi

prometheus_tag=localhost/inference-node/prometheus:v$PROMETHEUS_VERSION
if ! buildah inspect --type image "$prometheus_tag" >/dev/null 2>&1; then
  c=$(buildah from scratch)
  buildah copy --quiet "$c" "$pbin/prometheus" /bin/prometheus >/dev/null
  buildah config --entrypoint '["/bin/prometheus"]' --user 65532:65532 \
    --label org.opencontainers.image.source=https://github.com/prometheus/prometheus \
    --label "org.opencontainers.image.version=$PROMETHEUS_VERSION" "$c"
  buildah commit --quiet "$c" "$prometheus_tag" >/dev/null
  buildah rm "$c" >/dev/null
fi
echo "$prometheus_tag"
