#!/usr/bin/env bash
# Prints the path of promtool, fetched once from Debian's `prometheus` package (apt-get download
# + dpkg-deb -x: nothing installed, no Prometheus server started) into
# ~/.cache/inference-k8s/promtool-<version>/. Used by the chart's alert tests.
set -euo pipefail
version=2.42.0+ds-5+deb12u1
dir=${INFERENCE_CACHE:-$HOME/.cache/inference-k8s}/promtool-$version
if [[ ! -x "$dir/promtool" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -q "prometheus=$version" >/dev/null 2>&1) \
    || (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) \
    || { echo "hack/promtool.sh: apt-get download prometheus failed (Debian's mirror must be reachable)" >&2; exit 1; }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p "$dir"
  install -m 0755 "$tmp/x/usr/bin/promtool" "$dir/promtool"
fi
echo "$dir/promtool"
